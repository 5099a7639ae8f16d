"""The benchmark sweep: every backend x precision x size x batch, stage by stage, plus JPEG.

    report = run_bench(BenchConfig(model="models/photos-r4", batches=(1, 8), sizes=((256, 256),)))
A setting that cannot run (no GPU, missing provider, bad size, out of memory) is recorded
with one line saying why, and the sweep goes on with the rest.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from aekit.bench.backends import (ALL_BACKENDS, BackendError, BackendOptions, Runner, default_threads, is_oom,
                            make_runner, one_line)
from aekit.bench.inputs import Cycle, fit, image_folder, load_images, parse_size, tile  # noqa: F401 (API)
from aekit.bench.timing import Timing, TimingConfig, time_call
from aekit.export.manifest import load_manifest
from aekit.export.runtime import dequantise, quantise

REPORT_FORMAT, REPORT_VERSION = "aekit-bench", 1
GROUPS = {"ort": ("ort-cpu", "ort-cuda", "ort-trt"), "torch": ("torch-eager", "torch-compile")}
MODEL_STAGES = ("encode", "decode")  # device-resident network stages
STAGES = ("encode", "entropy-encode", "entropy-decode", "decode", "compress", "decompress",
          "jpeg-encode", "jpeg-decode")


@dataclass
class BenchConfig:
    model: str  # model folder (manifest.json + ONNX)
    device: str = "auto"  # auto | cuda | cpu
    backends: tuple[str, ...] = ("ort",)  # names of ALL_BACKENDS, or groups ort | torch | all
    batches: tuple[int, ...] = (1, 8, 64, 256)  # images per call
    sizes: tuple[tuple[int, int], ...] = ()  # (H, W); empty: the images' own size if uniform, else 256x256
    precisions: tuple[str, ...] = ("fp32",)  # fp32 | fp16 | bf16
    seconds: float = 1.0  # timed work per stage and setting (after warm-up)
    warmup: int = 2  # untimed calls before each timed stage
    images: str | None = None  # image folder (default: the model's training/validation data)
    max_images: int = 32  # distinct images loaded; batches repeat them
    jpeg: bool = True  # time the JPEG baselines on the same images
    entropy: bool = True  # time the entropy coder stages and the in-memory compress/decompress
    folders: tuple[str, ...] = ()  # folders to compress/decompress file to file (aekit compress/decompress)
    folder_limits: tuple[int, ...] = ()  # first N files of each folder (empty: all of it)
    threads: int = 0  # CPU threads (0: all cores)
    checkpoint: str | None = None  # PyTorch weights (default: the manifest's training.checkpoint)
    trt_cache: str | None = None  # TensorRT engine cache folder
    compile_mode: str | None = None  # torch.compile mode
    cuda_graph: bool = False  # onnxruntime CUDA graphs (ort-cuda)
    nhwc: bool = False  # onnxruntime CUDA prefer_nhwc (ort-cuda)
    host_memory_fraction: float = 0.8  # refuse a CPU batch whose estimated memory exceeds this share of free RAM


@dataclass
class StageResult:
    backend: str  # ort-cpu | ort-cuda | ... | entropy | jpeg-pillow | jpeg-nvjpeg
    precision: str
    size: str  # "HxW"
    batch: int
    stage: str  # one of STAGES
    status: str = "ok"  # ok | error | oom | skipped
    message: str = ""
    images_per_s: float | None = None
    megapixels_per_s: float | None = None
    latency_p50_ms: float | None = None  # per batch
    latency_p99_ms: float | None = None
    timing: dict[str, Any] | None = None
    gflop_per_image: float | None = None
    achieved_tflops: float | None = None
    peak_fraction: float | None = None  # achieved / device peak for this precision
    peak_host_bytes: int | None = None  # process peak RSS during this setting
    peak_device_bytes: int | None = None
    bytes_per_image: float | None = None  # coded size (entropy, compress, JPEG stages)


@dataclass
class BenchReport:
    config: dict[str, Any]
    environment: dict[str, Any]
    model: dict[str, Any]
    peak: dict[str, Any]
    results: list[StageResult] = field(default_factory=list)
    quality: list[dict[str, Any]] = field(default_factory=list)
    folders: list[dict[str, Any]] = field(default_factory=list)
    ratios: list[dict[str, Any]] = field(default_factory=list)
    speed_quality: list[dict[str, Any]] = field(default_factory=list)  # decode MP/s next to the PSNR it buys
    messages: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    created: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        """Some setting failed for a reason other than running out of memory."""
        return any(r.status == "error" for r in self.results) or any(f.get("status") == "error" for f in self.folders)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"format": REPORT_FORMAT, "format_version": REPORT_VERSION, **d}


def expand_backends(names: tuple[str, ...] | list[str], device: str) -> list[str]:
    """Groups to backend names for the device: ort -> ort-cuda (+ ort-trt if offered) or ort-cpu."""
    import onnxruntime as ort

    out: list[str] = []
    for n in names:
        if n == "all":
            members = [*GROUPS["ort"], *GROUPS["torch"]]
        elif n in GROUPS:
            members = list(GROUPS[n])
        elif n in ALL_BACKENDS:
            members = [n]
        else:
            raise ValueError(f"unknown backend {n!r} (have: ort, torch, all, {', '.join(ALL_BACKENDS)})")
        if len(members) > 1:  # a group: only what suits the device
            if device == "cuda":
                members = [m for m in members if m != "ort-cpu"]
                if "TensorrtExecutionProvider" not in ort.get_available_providers():
                    members = [m for m in members if m != "ort-trt"]
            else:
                members = [m for m in members if m not in ("ort-cuda", "ort-trt")]
        out += [m for m in members if m not in out]
    return out


def resolve_device(device: str) -> str:
    from aekit.bench.backends import cuda_status

    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"--device {device!r}: expected auto, cuda or cpu")
    if device == "auto":
        return "cuda" if cuda_status() is None else "cpu"
    return device


# ---------------------------------------------------------------- timing


def timed(fn: Callable[[], Any], sync: Callable[[], None], cfg: BenchConfig) -> Timing:
    """Warm-up and repeats scaled to the call: a call slower than --seconds/4 (after its first,
    which pays for allocation, algorithm search and compilation) gets no more warm-up and 3 repeats."""
    probes = []
    for _ in range(max(1, min(2, cfg.warmup))):
        t0 = time.perf_counter()
        fn()
        sync()
        probes.append(time.perf_counter() - t0)
    slow = probes[-1] > cfg.seconds / 4
    tc = TimingConfig(warmup=0 if slow else max(0, cfg.warmup - len(probes)), min_repeats=3 if slow else 5,
                      seconds=cfg.seconds)
    t = time_call(fn, tc, sync=sync)
    t.warmup += len(probes)
    return t


def fill(r: StageResult, t: Timing, batch: int, h: int, w: int) -> StageResult:
    med = t.median
    r.timing = t.summary()
    r.images_per_s = batch / med
    r.megapixels_per_s = batch * h * w / med / 1e6
    r.latency_p50_ms, r.latency_p99_ms = med * 1e3, t.p99 * 1e3
    return r


# ---------------------------------------------------------------- the sweep


class Sweep:
    """State of one bench run: model, images, runners, results; methods add results."""

    def __init__(self, cfg: BenchConfig, log: Callable[[str], None]):
        from aekit.bench.sysinfo import HostPeakMemory, environment

        self.cfg, self.log = cfg, log
        self.t0 = time.perf_counter()
        self.manifest = load_manifest(cfg.model)
        self.device = resolve_device(cfg.device)
        self.backends = expand_backends(cfg.backends, self.device)
        self.opts = BackendOptions(threads=cfg.threads, checkpoint=cfg.checkpoint, trt_cache=cfg.trt_cache,
                                   compile_mode=cfg.compile_mode, cuda_graph=cfg.cuda_graph, nhwc=cfg.nhwc)
        self.threads = cfg.threads or default_threads()
        self.mem = HostPeakMemory()
        env = environment(self.device)
        self.report = BenchReport(config=asdict(cfg), environment=env, model=self._model_info(), peak={},
                                  command=list(sys.argv), created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self.report.config.update(resolved_device=self.device, resolved_backends=self.backends, threads_used=self.threads)
        self.runners: dict[Any, Any] = {}  # (backend, precision) -> Runner, or the line saying why not
        self.oom_at: dict[tuple[str, str, str], int] = {}  # smallest batch that ran out of memory
        self.distinct: tuple[np.ndarray, np.ndarray, list[tuple[int, bytes]]] = (np.zeros(0), np.zeros(0), [])
        self.entropy = self._entropy_model()
        self.peak = self._peak()

    def _model_info(self) -> dict[str, Any]:
        m = self.manifest
        return {k: m.get(k) for k in ("model_id", "_dir", "arch", "channels", "ratio", "factor", "latent_channels",
                                       "model_config", "files")} | {"flops": {}}

    def note(self, msg: str) -> None:
        self.report.messages.append(msg)
        self.log(msg)

    def _entropy_model(self) -> Any:
        if not self.cfg.entropy:
            return None
        try:
            from aekit.export.entropy import EntropyModel
        except ImportError as e:
            self.note(f"entropy stages skipped: aekit.export.entropy is not available ({e})")
            return None
        return EntropyModel.from_manifest(self.manifest)

    def _peak(self) -> dict[str, Any]:
        """Device peak TFLOP/s per precision: the GPU's datasheet, or a measured CPU matmul."""
        from aekit.bench.flops import gpu_peak_tflops, measured_matmul_tflops

        env = self.report.environment
        if self.device == "cuda":
            name = env.get("device_name") or ""
            peak = {p: gpu_peak_tflops(name, "tf32" if p == "fp32" else p) for p in ("fp32", "fp16", "bf16")}
            src = f"datasheet dense peak for {name!r} (fp32 compared with TF32: cuDNN convs use it by default)"
            if all(v is None for v in peak.values()):
                src = f"{name!r} not in aekit.bench.flops.GPU_PEAK_TFLOPS: no peak fraction"
        else:  # no datasheet for a CPU in a VM: the best of two large fp32 matmuls, measured now
            from aekit.bench.flops import measured_ort_matmul_tflops

            v = measured_matmul_tflops(seconds=1.0)
            try:
                v = max(v, measured_ort_matmul_tflops(seconds=1.0, threads=self.cfg.threads))
            except ImportError:  # no onnx package: numpy's figure alone
                pass
            peak = {p: v for p in ("fp32", "fp16", "bf16")}
            src = (f"measured: best of numpy and onnxruntime fp32 2048^3 matmuls over 1 s each, {self.threads} threads "
                   f"(a busy machine lowers it: fractions are then optimistic)")
        self.report.peak = {"tflops": peak, "source": src}
        return peak

    # -- one size ------------------------------------------------------------

    def run(self) -> BenchReport:
        cfg, m = self.cfg, self.manifest
        folder = image_folder(cfg, m)
        distinct = load_images(folder, m["channels"], cfg.max_images)
        self.report.config["images_resolved"] = str(folder)
        sizes = list(cfg.sizes) or [self._default_size(distinct)]
        for h, w in sizes:
            if h % m["factor"] or w % m["factor"]:
                f = m["factor"]
                msg = (f"size {h}x{w}: not a multiple of the model's down-sampling factor {f}; skipped "
                       f"(try {h - h % f or f}x{w - w % f or f} or {h + (-h) % f}x{w + (-w) % f})")
                self.note(msg)
                self.report.results.append(StageResult("*", "*", f"{h}x{w}", 0, "*", "error", msg))
                continue
            self.run_size(np.stack([fit(im, h, w) for im in distinct]), h, w)
        for f in cfg.folders:
            from aekit.bench.folder import folder_stage

            for lim in cfg.folder_limits or (0,):
                self.report.folders.append(folder_stage(m["_dir"], f, lim, self.log, self.device))
        for r in self.runners.values():
            if isinstance(r, Runner):
                r.close()
        self.report.ratios = compute_ratios(self.report.results)
        self.report.speed_quality = speed_vs_quality(self.report)
        self.report.seconds = round(time.perf_counter() - self.t0, 1)
        return self.report

    def _default_size(self, images: list[np.ndarray]) -> tuple[int, int]:
        shapes = {im.shape[:2] for im in images}
        if len(shapes) == 1:
            h, w = shapes.pop()
            if h % self.manifest["factor"] == 0 and w % self.manifest["factor"] == 0:
                return h, w
        return 256, 256

    def run_size(self, images: np.ndarray, h: int, w: int) -> None:
        """images: the distinct images at this size (N, H, W, C)."""
        from aekit.bench.flops import count_macs
        from aekit.export.runtime import Runtime

        m, size = self.manifest, f"{h}x{w}"
        self.log(f"== {size}: {len(images)} distinct images, batches {', '.join(map(str, self.cfg.batches))}")
        rt = Runtime(m["_dir"], device="cpu", threads=self.cfg.threads)
        y = np.concatenate([rt.encode(images[i:i + 4]) for i in range(0, len(images), 4)])  # (N, c_y, h/f, w/f)
        q = rt.quantise(y)
        c_y, lh, lw = q.shape[1:]
        try:
            flops = {"encoder": 2 * count_macs(Path(m["_dir"]) / m["files"]["encoder"], {"x": (1, m["channels"], h, w)})["macs"],
                     "decoder": 2 * count_macs(Path(m["_dir"]) / m["files"]["decoder"], {"y_hat": (1, c_y, lh, lw)})["macs"]}
        except ImportError as e:  # the onnx package: `pip install onnx` (it is in aekit[train])
            self.note(f"FLOPs not counted: {e} (pip install onnx)")
            flops = {"encoder": 0, "decoder": 0}
        self.report.model["flops"][size] = flops
        payloads = self._quality(images, q, rt, size)
        del rt  # its sessions' memory must not count against the settings below
        self.distinct = (images, y, [self.entropy.encode(s) for s in q] if self.entropy is not None else [])
        for b in self.cfg.batches:
            imgs, y_hat = tile(images, b), self._dequantise(tile(q, b))
            if self.entropy is not None:
                self.run_entropy(size, b, h, w)
            for name in self.backends:
                for prec in self.cfg.precisions:
                    self.run_model(name, prec, imgs, y_hat, size, b, h, w, flops)
            if self.cfg.jpeg and payloads:
                self.run_jpeg(imgs, size, b, h, w, payloads["jpeg_quality"])

    def _quality(self, images: np.ndarray, q: np.ndarray, rt: Any, size: str) -> dict[str, Any]:
        """Whole .ael files as `aekit compress` writes them (aekit.codec.core, header included) and
        their PSNR, vs whole JPEG files at the quality giving the closest mean size (aekit.codec.baseline)."""
        from aekit.bench.jpeg import match_quality
        from aekit.metrics import mean_psnr

        from aekit.codec.core import Codec, CodecConfig, Decoder
        from aekit.export.entropy import CODER_NAMES

        ccfg = CodecConfig(device="cpu", threads=self.threads)
        try:
            codec, decoder = Codec(self.manifest["_dir"], ccfg), Decoder([self.manifest["_dir"]], ccfg)
            files = [codec.compress(im) for im in images]
            decoded = [decoder.decompress(f) for f in files]  # (image, header) each
        except ImportError as e:  # a runtime dependency missing (the entropy coder): timing stages still run
            self.note(f"{size}: file sizes and quality not measured: the codec cannot run ({e})")
            return {}
        ours_psnr = mean_psnr((a, b.reshape(a.shape)) for a, (b, _) in zip(images, decoded))
        coders: dict[str, int] = {}
        for _, header in decoded:
            name = CODER_NAMES.get(header.coder, str(header.coder))
            coders[name] = coders.get(name, 0) + 1
        sizes, what = [len(f) for f in files], "whole .ael files (header + entropy-coded payload)"
        mean = float(np.mean(sizes))
        j = match_quality(list(images), mean)
        row = {"size": size, "images": len(images), "ours_bytes": mean, "ours_bytes_are": what,
               "ours_psnr_db": ours_psnr, "raw_bytes": int(np.prod(images.shape[1:])), "coders": coders,
               "symbols_per_image": int(np.prod(q.shape[1:])),
               "jpeg_quality": j["quality"], "jpeg_bytes": j["mean_bytes"], "jpeg_psnr_db": j["psnr_db"]}
        if "note" in j:
            row["note"] = j["note"]
            self.note(f"{size}: {j['note']}")
        self.report.quality.append(row)
        self.log(f"   ours {mean:.0f} B/image at {ours_psnr:.2f} dB; JPEG q{j['quality']} {j['mean_bytes']:.0f} B "
                 f"at {j['psnr_db']:.2f} dB")
        return row

    # -- stages ----------------------------------------------------------------

    def _quantise(self, y: np.ndarray) -> np.ndarray:
        return quantise(y, self.manifest["latent"]["levels"])

    def _dequantise(self, q: np.ndarray) -> np.ndarray:
        return dequantise(q, self.manifest["latent"]["levels"])

    def run_entropy(self, size: str, b: int, h: int, w: int) -> None:
        """Quantise + entropy code, and entropy decode + dequantise, b images per call (CPU),
        cycling through the distinct images' latents."""
        em, res = self.entropy, self.report.results
        _, y, coded = self.distinct  # y: float32 (N, c_y, h, w); coded: N (coder_id, payload)
        shape = y.shape[1:]
        nbytes = float(np.mean([len(p) for _, p in coded]))
        enc_cycle, dec_cycle = Cycle(len(y), b), Cycle(len(y), b)

        def encode() -> None:
            for i in enc_cycle.next():
                em.encode(self._quantise(y[i]))

        def decode() -> None:
            self._dequantise(np.stack([em.decode(*coded[i], shape) for i in dec_cycle.next()]))

        for stage, fn in (("entropy-encode", encode), ("entropy-decode", decode)):
            self.mem.reset()
            r = fill(StageResult("entropy", "-", size, b, stage), timed(fn, lambda: None, self.cfg), b, h, w)
            r.bytes_per_image, r.peak_host_bytes = nbytes, self.mem.peak_bytes()
            res.append(r)
        self.log(f"   b={b:<4} entropy        enc {res[-2].images_per_s:10.1f} img/s  dec {res[-1].images_per_s:10.1f} img/s"
                 f"  ({nbytes:.0f} B/image)")

    def _runner(self, name: str, prec: str) -> Runner | str:
        key = (name, prec)
        if key not in self.runners:
            try:
                self.runners[key] = make_runner(name, prec, self.manifest, self.opts, self.device)
            except BackendError as e:
                self.runners[key] = str(e)
            except Exception as e:  # a library failing to start: one line, the sweep goes on
                self.runners[key] = f"{name} {prec}: {one_line(e)}"
            if isinstance(self.runners[key], str):
                self.note(f"{self.runners[key]} -- skipped")
        return self.runners[key]

    def _host_guard(self, name: str, prec: str, imgs: np.ndarray, flops_size: tuple[int, int]) -> str | None:
        """A CPU batch that would not fit in free RAM is refused before it can bring the machine down."""
        from aekit.bench.flops import peak_activation_bytes

        m = self.manifest
        try:
            avail = int(next(ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemAvailable"))) * 1024
        except (OSError, StopIteration):
            return None
        key = "encoder_fp16" if prec == "fp16" and "encoder_fp16" in m["files"] else "encoder"
        h, w = flops_size
        c_y, lh, lw = m["latent_channels"], h // m["factor"], w // m["factor"]
        per = max(peak_activation_bytes(Path(m["_dir"]) / m["files"][key], {"x": (1, m["channels"], h, w)}),
                  peak_activation_bytes(Path(m["_dir"]) / m["files"][key.replace("encoder", "decoder")],
                                        {"y_hat": (1, c_y, lh, lw)}))
        need = 2 * per * len(imgs) + 3 * imgs.nbytes
        if need > self.cfg.host_memory_fraction * avail:
            return (f"needs ~{need / 2**30:.1f} GiB (estimated from the graph), {avail / 2**30:.1f} GiB free: "
                    f"refused as out of memory")
        return None

    def run_model(self, name: str, prec: str, imgs: np.ndarray, y_hat: np.ndarray, size: str, b: int,
                  h: int, w: int, flops: dict[str, int]) -> None:
        res = self.report.results
        r = self._runner(name, prec)
        if isinstance(r, str):
            res.append(StageResult(name, prec, size, b, "*", "error", r))
            return
        oom_key = (name, prec, size)
        if b > self.oom_at.get(oom_key, 1 << 62):
            msg = f"{name} {prec} {size}: batch {b} skipped (batch {self.oom_at[oom_key]} ran out of memory)"
            res.append(StageResult(name, prec, size, b, "*", "skipped", msg))
            self.log(f"   {msg}")
            return
        try:
            if r.device == "cpu" and (why := self._host_guard(name, prec, imgs, (h, w))):
                raise MemoryError(why)
            self._time_model(r, name, prec, imgs, y_hat, size, b, h, w, flops)
        except Exception as e:
            if not is_oom(e):
                msg = f"{name} {prec} {size} batch {b}: {one_line(e)}"
                res.append(StageResult(name, prec, size, b, "*", "error", msg))
                self.note(msg)
                return
            self.oom_at[oom_key] = min(b, self.oom_at.get(oom_key, b))
            msg = f"{name} {prec} {size}: out of memory at batch {b} ({one_line(e)}); larger batches skipped"
            res.append(StageResult(name, prec, size, b, "*", "oom", msg))
            self.note(msg)
            r.close()
            self.runners.pop((name, prec), None)  # a fresh runner for the next size

    def _time_model(self, r: Runner, name: str, prec: str, imgs: np.ndarray, y_hat: np.ndarray, size: str,
                    b: int, h: int, w: int, flops: dict[str, int]) -> None:
        res, cfg = self.report.results, self.cfg
        if getattr(r, "shape", None) not in (None, imgs.shape):
            r.close()  # free the previous shape's sessions before measuring this one's memory
        self.mem.reset()
        r.load(imgs, y_hat)
        r.reset_peak_memory()
        rows = []
        for stage, fn, fl in (("encode", r.encode, flops["encoder"]), ("decode", r.decode, flops["decoder"])):
            row = fill(StageResult(name, prec, size, b, stage), timed(fn, r.sync, cfg), b, h, w)
            if fl:
                row.gflop_per_image = fl / 1e9
                row.achieved_tflops = fl * row.images_per_s / 1e12
                peak = self.peak.get(prec)
                row.peak_fraction = row.achieved_tflops / peak if peak else None
            rows.append(row)
        dev_peak = r.peak_memory()
        if self.entropy is not None:
            rows += self._end_to_end(r, name, prec, imgs, y_hat, size, b, h, w)
        host_peak = self.mem.peak_bytes()
        for row in rows:
            row.peak_host_bytes, row.peak_device_bytes = host_peak, dev_peak
        res += rows
        e, d = rows[0], rows[1]
        self.log(f"   b={b:<4} {name:<13} {prec} enc {e.images_per_s:10.1f} img/s  dec {d.images_per_s:10.1f} img/s"
                 + (f"  compress {rows[2].images_per_s:9.1f}  decompress {rows[3].images_per_s:9.1f}" if len(rows) > 2 else ""))

    def _end_to_end(self, r: Runner, name: str, prec: str, imgs: np.ndarray, y_hat: np.ndarray, size: str,
                    b: int, h: int, w: int) -> list[StageResult]:
        """In-memory pixels -> bytes and bytes -> pixels, host to host, entropy coder included;
        each call takes the next b distinct images (the gather is part of the work timed)."""
        em = self.entropy
        images, y, coded = self.distinct
        shape = y.shape[1:]
        enc_cycle, dec_cycle = Cycle(len(images), b), Cycle(len(images), b)

        def compress() -> None:
            for s in self._quantise(r.compress(images[enc_cycle.next()])):
                em.encode(s)

        def decompress() -> None:
            r.decompress(self._dequantise(np.stack([em.decode(*coded[i], shape) for i in dec_cycle.next()])))

        out = []
        nbytes = float(np.mean([len(p) for _, p in coded]))
        for stage, fn in (("compress", compress), ("decompress", decompress)):
            row = fill(StageResult(name, prec, size, b, stage), timed(fn, r.sync, self.cfg), b, h, w)
            row.bytes_per_image = nbytes
            out.append(row)
        return out

    def run_jpeg(self, imgs: np.ndarray, size: str, b: int, h: int, w: int, quality: int) -> None:
        from aekit.bench.jpeg import PillowJpeg

        res, ch = self.report.results, imgs.shape[3]
        images = self.distinct[0]
        pil = PillowJpeg(quality, threads=self.threads)
        blobs = pil.encode(list(images))
        nbytes = float(np.mean([len(x) for x in blobs]))
        enc_cycle, dec_cycle = Cycle(len(images), b), Cycle(len(images), b)
        rows = []
        for stage, fn in (("jpeg-encode", lambda: pil.encode([images[i] for i in enc_cycle.next()])),
                          ("jpeg-decode", lambda: pil.decode([blobs[i] for i in dec_cycle.next()], ch))):
            self.mem.reset()
            row = fill(StageResult("jpeg-pillow", f"q{quality}", size, b, stage), timed(fn, pil.sync, self.cfg), b, h, w)
            row.bytes_per_image, row.peak_host_bytes = nbytes, self.mem.peak_bytes()
            rows.append(row)
        pil.close()
        if self.device == "cuda":
            rows += self._nvjpeg(imgs, size, b, h, w, quality)
        res += rows
        self.log(f"   b={b:<4} jpeg-pillow   q{quality} enc {rows[0].images_per_s:10.1f} img/s  "
                 f"dec {rows[1].images_per_s:10.1f} img/s  ({nbytes:.0f} B/image)")

    def _nvjpeg(self, imgs: np.ndarray, size: str, b: int, h: int, w: int, quality: int) -> list[StageResult]:
        from aekit.bench.jpeg import NvJpeg

        if "nvjpeg" not in self.runners:
            try:
                self.runners["nvjpeg"] = NvJpeg(quality)  # type: ignore[assignment]
            except BackendError as e:
                self.runners["nvjpeg"] = str(e)
                self.note(f"{e} -- skipped")
        nv = self.runners["nvjpeg"]
        if isinstance(nv, str):
            return [StageResult("jpeg-nvjpeg", f"q{quality}", size, b, "*", "error", nv)]
        if imgs.shape[3] != 3:  # torchvision's GPU encoder refuses 1-channel images
            msg = "jpeg-nvjpeg: the GPU JPEG encoder takes RGB images only; gray images are compared with jpeg-pillow"
            if msg not in self.report.messages:
                self.note(msg)
            return [StageResult("jpeg-nvjpeg", f"q{quality}", size, b, "*", "skipped", msg)]
        try:
            nv.load(imgs)
            nbytes = float(np.mean(nv.encoded_sizes()))
            rows = []
            for stage, fn in (("jpeg-encode", nv.encode_staged), ("jpeg-decode", nv.decode_staged)):
                row = fill(StageResult("jpeg-nvjpeg", f"q{quality}", size, b, stage), timed(fn, nv.sync, self.cfg), b, h, w)
                row.bytes_per_image = nbytes
                rows.append(row)
            return rows
        except Exception as e:
            status = "oom" if is_oom(e) else "error"
            msg = f"jpeg-nvjpeg {size} batch {b}: {one_line(e)}"
            self.note(msg)
            return [StageResult("jpeg-nvjpeg", f"q{quality}", size, b, "*", status, msg)]


def compute_ratios(results: list[StageResult]) -> list[dict[str, Any]]:
    """Best images/s (over batches) of each of our stages / the JPEG stage on the same device."""
    best: dict[tuple[str, str, str, str], StageResult] = {}
    for r in results:
        if r.status == "ok" and r.images_per_s:
            k = (r.backend, r.precision, r.size, r.stage)
            if k not in best or r.images_per_s > best[k].images_per_s:
                best[k] = r
    pairs = {"encode": "jpeg-encode", "compress": "jpeg-encode", "decode": "jpeg-decode",
             "decompress": "jpeg-decode"}
    out = []
    for (backend, prec, size, stage), r in sorted(best.items()):
        if stage not in pairs or backend.startswith("jpeg"):
            continue
        gpu = backend in ("ort-cuda", "ort-trt") or (backend.startswith("torch") and r.peak_device_bytes is not None)
        for jname in (("jpeg-nvjpeg", "jpeg-pillow") if gpu else ("jpeg-pillow",)):
            j = next((v for (b2, _, s2, st2), v in best.items() if b2 == jname and s2 == size and st2 == pairs[stage]), None)
            if j is not None:
                out.append({"size": size, "ours": f"{backend} {prec} {stage}", "ours_batch": r.batch,
                            "ours_images_per_s": r.images_per_s, "jpeg": f"{jname} {j.precision} {j.stage}",
                            "jpeg_batch": j.batch, "jpeg_images_per_s": j.images_per_s,
                            "ratio": r.images_per_s / j.images_per_s})
    return out


def speed_vs_quality(report: BenchReport) -> list[dict[str, Any]]:
    """Per image size: the best decode and decompress MP/s of any model backend, next to the mean PSNR
    and bits per pixel of whole .ael files at the model's default quality (the `_quality` row)."""
    out = []
    for q in report.quality:
        def best(stage: str) -> tuple[float | None, str]:
            rows = [r for r in report.results if r.status == "ok" and r.size == q["size"] and r.stage == stage
                    and r.megapixels_per_s and not r.backend.startswith(("jpeg", "entropy"))]
            top = max(rows, key=lambda r: r.megapixels_per_s, default=None)
            return (top.megapixels_per_s, f"{top.backend} {top.precision} batch {top.batch}") if top else (None, "")
        (dec, dec_at), (dez, _) = best("decode"), best("decompress")
        h, w = map(int, q["size"].split("x"))
        out.append({"size": q["size"], "decode_mp_per_s": dec, "decode_setting": dec_at, "decompress_mp_per_s": dez,
                    "psnr_db": q["ours_psnr_db"], "bpp": 8 * q["ours_bytes"] / (h * w),
                    "jpeg_psnr_db": q.get("jpeg_psnr_db")})
    return out


def speed_quality_lines(report: BenchReport) -> list[str]:
    """One line per size: decode MP/s and the quality it buys (`aekit bench` prints them after the table)."""
    def num(v: float | None, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    return [f"{r['size']}: decode {num(r['decode_mp_per_s'], '.2f')} MP/s ({r['decode_setting'] or 'not timed'}), "
            f"decompress {num(r['decompress_mp_per_s'], '.2f')} MP/s, for {r['psnr_db']:.2f} dB PSNR at "
            f"{r['bpp']:.3f} bpp (default quality; JPEG at equal bytes {num(r['jpeg_psnr_db'], '.2f')} dB)"
            for r in report.speed_quality]


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> BenchReport:
    return Sweep(cfg, log).run()
