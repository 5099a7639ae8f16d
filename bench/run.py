"""The benchmark sweep: every backend x precision x size x batch, stage by stage, plus JPEG.

    report = run_bench(BenchConfig(model="models/photos-r4", batches=(1, 8), sizes=((256, 256),)))
A setting that cannot run (no GPU, missing provider, bad size, out of memory) is recorded
with one line saying why, and the sweep goes on with the rest. This module decides what runs
and in which order; the work lives below it: stages.py (timing), quality.py (sizes and PSNR),
devices.py, failures.py, summary.py (ratios), schema.py (the record).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from aekit.bench.backends import BackendError, BackendOptions, Runner, make_runner
from aekit.bench.devices import default_threads, device_peak, expand_backends, resolve_device
from aekit.bench.failures import host_memory_refusal, is_oom, one_line
from aekit.bench.inputs import fit, image_folder, load_images, tile
from aekit.bench.schema import BenchConfig, BenchReport, StageResult
from aekit.bench.stages import Stages
from aekit.bench.summary import compute_ratios, speed_vs_quality
from aekit.export.manifest import load_manifest


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
        env = environment(self.device)
        self.report = BenchReport(config=asdict(cfg), environment=env, model=self._model_info(), peak={},
                                  command=list(sys.argv), created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self.report.config.update(resolved_device=self.device, resolved_backends=self.backends, threads_used=self.threads)
        self.runners: dict[Any, Any] = {}  # (backend, precision) -> Runner, or the line saying why not
        self.oom_at: dict[tuple[str, str, str], int] = {}  # smallest batch that ran out of memory
        peak, source = device_peak(self.device, env, cfg.threads)
        self.report.peak = {"tflops": peak, "source": source}
        self.codec, self.decoder = self._open_codec()
        self.stages = Stages(cfg, HostPeakMemory(), self.codec if cfg.entropy else None, self.decoder, peak)

    def _model_info(self) -> dict[str, Any]:
        m = self.manifest
        return {k: m.get(k) for k in ("model_id", "_dir", "arch", "channels", "ratio", "factor", "latent_channels",
                                       "model_config", "files")} | {"flops": {}}

    def note(self, msg: str) -> None:
        self.report.messages.append(msg)
        self.log(msg)

    def _open_codec(self) -> tuple[Any, Any]:
        """The model's Codec and Decoder (aekit.bench.quality.open_codec), or (None, None) with a note."""
        from aekit.bench.quality import open_codec

        try:
            return open_codec(self.manifest["_dir"], self.threads)
        except ImportError as e:
            self.note(f"entropy stages, file sizes and quality skipped: the codec cannot run ({e})")
            return None, None

    # -- sizes -----------------------------------------------------------------

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
        """The images' own size when they share one, else 256 x 256; either rounded down to a multiple of the
        model's factor (28 x 28 images through a 1/9 model of factor 6 run at 24 x 24; 256 at factor 12: 252)."""
        f = self.manifest["factor"]
        shapes = {im.shape[:2] for im in images}
        h, w = shapes.pop() if len(shapes) == 1 else (256, 256)
        return max(f, h - h % f), max(f, w - w % f)

    def run_size(self, images: np.ndarray, h: int, w: int) -> None:
        """images: the distinct images at this size (N, H, W, C)."""
        from aekit.export.runtime import Runtime

        size, st = f"{h}x{w}", self.stages
        self.log(f"== {size}: {len(images)} distinct images, batches {', '.join(map(str, self.cfg.batches))}")
        rt = Runtime(self.manifest["_dir"], device="cpu", threads=self.cfg.threads)
        y = np.concatenate([rt.encode(images[i:i + 4]) for i in range(0, len(images), 4)])  # (N, c_y, h/f, w/f)
        quantiser = rt.quantiser  # the model's default, which the codec codes with
        q = quantiser.quantise(y)
        flops = self._flops(size, h, w, q.shape[1:])
        quality = self._quality(images, size)
        del rt  # its sessions' memory must not count against the settings below
        st.set_images(images, y)
        for b in self.cfg.batches:
            imgs, y_hat = tile(images, b), quantiser.dequantise(tile(q, b))
            if st.codec is not None:
                self.run_entropy(size, b, h, w)
            for name in self.backends:
                for prec in self.cfg.precisions:
                    self.run_model(name, prec, imgs, y_hat, size, b, h, w, flops)
            if self.cfg.jpeg and quality:
                self.run_jpeg(imgs, size, b, h, w, quality["jpeg_quality"])

    def _flops(self, size: str, h: int, w: int, latent: tuple[int, ...]) -> dict[str, int]:
        """2 x the multiply-adds of encoder and decoder per image at this size (0 without onnx)."""
        from aekit.bench.flops import count_macs

        m, (c_y, lh, lw) = self.manifest, latent
        try:
            flops = {"encoder": 2 * count_macs(Path(m["_dir"]) / m["files"]["encoder"], {"x": (1, m["channels"], h, w)})["macs"],
                     "decoder": 2 * count_macs(Path(m["_dir"]) / m["files"]["decoder"], {"y_hat": (1, c_y, lh, lw)})["macs"]}
        except ImportError as e:  # the onnx package: `pip install onnx` (it is in aekit[train])
            self.note(f"FLOPs not counted: {e} (pip install onnx)")
            flops = {"encoder": 0, "decoder": 0}
        self.report.model["flops"][size] = flops
        return flops

    def _quality(self, images: np.ndarray, size: str) -> dict[str, Any]:
        """The size's row of whole .ael files vs whole JPEG files (aekit.bench.quality); {} when the codec cannot run."""
        from aekit.bench.quality import quality_row

        if self.codec is None:
            return {}
        try:
            row = quality_row(self.codec, self.decoder, images, size)
        except ImportError as e:  # a runtime dependency missing (the entropy coder): network stages still run
            self.note(f"{size}: file sizes and quality not measured, entropy stages skipped: the codec cannot run ({e})")
            self.codec = self.stages.codec = None
            return {}
        if "note" in row:
            self.note(f"{size}: {row['note']}")
        self.report.quality.append(row)
        self.log(f"   ours {row['ours_bytes']:.0f} B/image at {row['ours_psnr_db']:.2f} dB; JPEG q{row['jpeg_quality']} "
                 f"{row['jpeg_bytes']:.0f} B at {row['jpeg_psnr_db']:.2f} dB")
        return row

    # -- settings --------------------------------------------------------------

    def run_entropy(self, size: str, b: int, h: int, w: int) -> None:
        rows = self.stages.entropy(size, b, h, w)
        self.report.results += rows
        self.log(f"   b={b:<4} entropy        enc {rows[0].images_per_s:10.1f} img/s  dec {rows[1].images_per_s:10.1f} img/s"
                 f"  ({rows[0].bytes_per_image:.0f} B/image)")

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
            if r.device == "cpu" and (why := host_memory_refusal(self.manifest, prec, imgs, (h, w),
                                                                 self.cfg.host_memory_fraction)):
                raise MemoryError(why)
            rows = self.stages.model(r, name, prec, imgs, y_hat, size, b, h, w, flops)
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
            return
        res += rows
        e, d = rows[0], rows[1]
        self.log(f"   b={b:<4} {name:<13} {prec} enc {e.images_per_s:10.1f} img/s  dec {d.images_per_s:10.1f} img/s"
                 + (f"  compress {rows[2].images_per_s:9.1f}  decompress {rows[3].images_per_s:9.1f}" if len(rows) > 2 else ""))

    def run_jpeg(self, imgs: np.ndarray, size: str, b: int, h: int, w: int, quality: int) -> None:
        rows = self.stages.jpeg_pillow(size, b, h, w, quality, self.threads)
        if self.device == "cuda":
            rows += self._nvjpeg(imgs, size, b, h, w, quality)
        self.report.results += rows
        self.log(f"   b={b:<4} jpeg-pillow   q{quality} enc {rows[0].images_per_s:10.1f} img/s  "
                 f"dec {rows[1].images_per_s:10.1f} img/s  ({rows[0].bytes_per_image:.0f} B/image)")

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
            return self.stages.jpeg_nvjpeg(nv, imgs, size, b, h, w, quality)
        except Exception as e:
            status = "oom" if is_oom(e) else "error"
            msg = f"jpeg-nvjpeg {size} batch {b}: {one_line(e)}"
            self.note(msg)
            return [StageResult("jpeg-nvjpeg", f"q{quality}", size, b, "*", status, msg)]


def run_bench(cfg: BenchConfig, log: Callable[[str], None] | None = None) -> BenchReport:
    """Run the sweep; log(msg) gets the progress lines (default: this module's logger at INFO)."""
    import logging

    return Sweep(cfg, log or logging.getLogger(__name__).info).run()
