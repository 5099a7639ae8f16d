"""CPU performance of the codec runtime (issue 17): MP/s per core against Pillow JPEG, 1 vs 2 cores,
start-up, peak RSS by image size and folder size, and training on 1 vs 2 processes.

    flock /work/runs/bench.lock python -m aekit.bench.cpu_scaling --parts speed,folder,startup,train \
        --out bench/results/cpu_scaling.json        # timed: run on a quiet machine
    python -m aekit.bench.cpu_scaling --parts memory --out bench/results/cpu_memory.json   # RSS only
    python -m aekit.bench.cpu_scaling --parts stages,zstd --models photos-r9:int8 \
        --out bench/results/cpu_compress_stages.json   # where a compress spends its time; the zstd gate
Writes the JSON and a markdown table next to it (.md), with the command and the machine (bench/sysinfo.py).
Photos: data/photos (`aekit data photos data/photos`), or the folder named by AEKIT_PHOTOS.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from aekit.bench.sysinfo import environment
from aekit.images import atomic_write_bytes

PHOTOS = Path(os.environ.get("AEKIT_PHOTOS", "data/photos"))  # `aekit data photos data/photos`: train/ and test/
MODELS = ("photos-r9", "photos-r4")


@dataclass
class Result:
    command: str
    machine: dict[str, Any]
    speed: list[dict[str, Any]] = field(default_factory=list)  # per model: MP/s per core, ours vs JPEG
    folder: list[dict[str, Any]] = field(default_factory=list)  # 1 vs 2 workers (taskset 1 vs 2 cores)
    startup: list[dict[str, Any]] = field(default_factory=list)
    memory: list[dict[str, Any]] = field(default_factory=list)  # peak RSS of whole aekit processes
    train: list[dict[str, Any]] = field(default_factory=list)  # epoch time, nproc x threads
    contention: list[dict[str, Any]] = field(default_factory=list)  # threads vs processes on 2 cores
    overheads: list[dict[str, Any]] = field(default_factory=list)  # per-call costs: API caches, PNG levels
    tiles: list[dict[str, Any]] = field(default_factory=list)  # large-image tiles: fixed 6-unit vs receptive-field context
    zstd: list[dict[str, Any]] = field(default_factory=list)  # the gated zstd trial against the ungated one
    stages: list[dict[str, Any]] = field(default_factory=list)  # where a compress spends its time


def crops(folders: list[Path], side: int, n: int) -> list[np.ndarray]:
    """Centre crops side x side (RGB uint8) of the first n photos at least that large, sorted by name."""
    out = []
    for folder in folders:
        for p in sorted(folder.iterdir()):
            im = Image.open(p).convert("RGB")
            w, h = im.size
            if min(w, h) >= side:
                l, t = (w - side) // 2, (h - side) // 2
                out.append(np.asarray(im.crop((l, t, l + side, t + side))))
            if len(out) == n:
                return out
    return out


def photo_set(n: int) -> list[np.ndarray]:
    """n 512² photos: centre crops of the test and train photos, then mirrored copies of them."""
    images = crops([PHOTOS / "test", PHOTOS / "train"], 512, 16)
    images += [np.ascontiguousarray(im[::-1]) for im in images]
    images += [np.ascontiguousarray(im[:, ::-1]) for im in images]
    return images[:n]


def model_codec(model: str) -> tuple[Path, Any]:
    """A speed benchmark's model argument -> (folder, Codec on one thread and worker); NAME:int8 uses the
    model's int8 variants; NAME[:int8]:coder4 is only for `speed` (the coder before coder 5, see there);
    NAME…:rdoq0 rounds y plainly (no RDOQ, as before it existed); NAME…:coder5 compresses without the model's
    channel context (no coder 6, as before it existed; decoding is the same code either way); NAME…:coder6 without
    the spatial prediction (no coder 7/8, as before format version 7; with :coder5, coder 5 alone); NAME…:nofilter
    without the post-filter (as before format version 8)."""
    from aekit.codec.core import Codec, CodecConfig
    from aekit.export.manifest import resolve_model

    name, *flags = model.split(":")
    if set(flags) - {"int8", "coder4", "coder5", "coder6", "rdoq0", "nofilter"}:
        raise ValueError(f"{model}: unknown model suffix (NAME, NAME:int8, NAME:coder4, NAME:coder5, NAME:coder6, "
                         "NAME:rdoq0, NAME:nofilter, combined)")
    folder = resolve_model(name)
    extra = {"rdoq": 0.0} if "rdoq0" in flags else {}
    if "nofilter" in flags:
        extra["post_filter"] = False
    if flags and set(flags) - {"int8", "rdoq0", "nofilter"}:
        extra["spatial_context"] = False  # the older coders: no coder 7/8
    codec = Codec(folder, CodecConfig(device="cpu", threads=1, workers=1, int8="int8" in flags, **extra))
    if "coder5" in flags or "coder4" in flags:
        codec.em.context = None  # no channel context: coder 5 (or, with coder4, coder 3/4) as before coder 6
    return folder, codec


@contextlib.contextmanager
def coder_choice(model: str) -> Iterator[None]:
    """NAME…:coder4: compress without the checkerboard context (coder 5) while inside, as before it existed,
    so that one run compares the two coders' speed; other models unchanged."""
    import aekit.export.hyperprior as hyperprior

    limit = hyperprior.CONTEXT_MAX_SYMBOLS
    if "coder4" in model.split(":")[1:]:
        hyperprior.CONTEXT_MAX_SYMBOLS = 0
    try:
        yield
    finally:
        hyperprior.CONTEXT_MAX_SYMBOLS = limit


def jpeg_quality_for(image: np.ndarray, nbytes: int) -> int:
    """The baseline JPEG quality whose file is closest in size to nbytes."""
    from aekit.codec.baseline import encode

    sizes = {q: len(encode(image, "JPEG", q)) for q in range(5, 101, 5)}
    return min(sizes, key=lambda q: abs(sizes[q] - nbytes))


def speed(model: str, images: list[np.ndarray], rounds: int) -> dict[str, Any]:
    """Compress and decompress in memory, one thread, interleaved with JPEG at matched bytes (NAME:coder4:
    without coder 5, `coder_choice`)."""
    with coder_choice(model):
        return _speed(model, images, rounds)


def _speed(model: str, images: list[np.ndarray], rounds: int) -> dict[str, Any]:
    from aekit.codec.baseline import decode as jdecode, encode as jencode
    from aekit.codec.core import Decoder

    folder, codec = model_codec(model)  # NAME:int8: code with the model's int8 variants
    dec = Decoder([folder], codec.cfg)
    files = [codec.compress(im) for im in images]  # warm-up too
    quals = [jpeg_quality_for(im, len(f)) for im, f in zip(images, files)]
    jpegs = [jencode(im, "JPEG", q) for im, q in zip(images, quals)]
    for f in files:
        dec.decompress(f)
    t = {k: [[] for _ in images] for k in ("c", "d", "jc", "jd")}
    for _ in range(rounds):
        for i, (im, f, q, j) in enumerate(zip(images, files, quals, jpegs)):
            for key, fn in (("c", lambda: codec.compress(im)), ("jc", lambda: jencode(im, "JPEG", q)),
                            ("d", lambda: dec.decompress(f)), ("jd", lambda: jdecode(j, 3))):
                t0 = time.perf_counter()
                fn()
                t[key][i].append(time.perf_counter() - t0)
    med = {k: sum(statistics.median(x) for x in v) for k, v in t.items()}  # seconds for the whole set
    mp = sum(im.shape[0] * im.shape[1] for im in images) / 1e6
    from aekit.metrics import psnr

    ours = [dec.decompress(f)[0] for f in files]
    return {"model": model, "images": len(images), "side": images[0].shape[0], "rounds": rounds,
            "megapixels": mp, "ael_bytes_mean": float(np.mean([len(f) for f in files])),
            "jpeg_bytes_mean": float(np.mean([len(j) for j in jpegs])), "jpeg_qualities": quals,
            "psnr_ours": float(np.mean([psnr(a, b) for a, b in zip(images, ours)])),
            "psnr_jpeg": float(np.mean([psnr(a, jdecode(j, 3)) for a, j in zip(images, jpegs)])),
            "compress_mp_s_per_core": mp / med["c"], "decompress_mp_s_per_core": mp / med["d"],
            "jpeg_encode_mp_s": mp / med["jc"], "jpeg_decode_mp_s": mp / med["jd"],
            "compress_over_jpeg": med["jc"] / med["c"], "decompress_over_jpeg": med["jd"] / med["d"]}


def timed(cmd: list[str], cores: str | None = None) -> dict[str, Any]:
    """Run an aekit command (optionally pinned with taskset) under GNU time: wall s, CPU s, peak RSS."""
    full = (["taskset", "-c", cores] if cores else []) + ["/usr/bin/time", "-v", *cmd]
    t0 = time.perf_counter()
    r = subprocess.run(full, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    err = r.stderr
    grab = lambda pat: float(m.group(1)) if (m := re.search(pat, err)) else None  # noqa: E731
    summary = next((ln for ln in err.splitlines() if ln.startswith(("compressed", "decompressed"))), "")
    return {"command": shlex.join(full), "rc": r.returncode, "wall_s": wall,
            "cpu_s": (grab(r"User time \(seconds\): ([\d.]+)") or 0) + (grab(r"System time \(seconds\): ([\d.]+)") or 0),
            "peak_rss_mb": (grab(r"Maximum resident set size \(kbytes\): (\d+)") or 0) / 1024, "summary": summary,
            "stderr_tail": err.strip().splitlines()[-3:] if r.returncode else []}


def aekit(*args: str) -> list[str]:
    return [sys.executable, "-m", "aekit.cli", *args]


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()[:16]


def write_images(images: list[np.ndarray], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:03d}.png", compress_level=1)
    return folder


def folder_scaling(model: str, images: list[np.ndarray], tmp: Path) -> list[dict[str, Any]]:
    """`aekit compress` / `decompress` of a folder: 1 worker on 1 core vs 2 workers on 2 cores."""
    src = write_images(images, tmp / "folder-src")
    rows = []
    for workers, cores in ((1, "0"), (2, "0,1")):
        lat, out = tmp / f"lat{workers}", tmp / f"dec{workers}"
        c = timed(aekit("compress", str(src), "-m", model, "-o", str(lat), "--workers", str(workers),
                        "--no-progress"), cores)
        d = timed(aekit("decompress", str(lat), "-o", str(out), "--workers", str(workers), "--no-progress"), cores)
        rows.append({"model": model, "images": len(images), "side": images[0].shape[0], "workers": workers,
                     "cores": cores, "compress": c, "decompress": d,
                     "latents_sha": tree_hash(lat), "decoded_sha": tree_hash(out)})
    one, two = rows
    for k in ("compress", "decompress"):
        two[f"{k}_speedup"] = one[k]["wall_s"] / two[k]["wall_s"]
    two["identical_outputs"] = one["latents_sha"] == two["latents_sha"] and one["decoded_sha"] == two["decoded_sha"]
    return rows


def threads_vs_processes(model: str, images: list[np.ndarray], tmp: Path, rounds: int = 2) -> list[dict[str, Any]]:
    """Is a 2-worker folder job limited by the GIL or by the machine? Interleaved, whole processes:
    1 worker on core 0 (all files); 2 workers on cores 0,1 (all files); two 1-worker processes, one
    per core, on half the files each. Threads as fast as processes: the GIL is not the limit."""
    half = len(images) // 2
    src = tmp / "tvp-src"
    write_images(images[:half], src / "a")
    write_images(images[half:], src / "b")
    subprocess.run(aekit("compress", str(src), "-m", model, "-o", str(tmp / "tvp-lat"), "--no-progress"),
                   check=True, capture_output=True)
    rows = []
    for job in ("compress", "decompress"):
        def cmd(inp: Path, out: Path, workers: int) -> list[str]:
            extra = ["-m", model] if job == "compress" else []
            return aekit(job, str(inp), "-o", str(out), "--workers", str(workers), "--no-progress", *extra)

        base = src if job == "compress" else tmp / "tvp-lat"
        for r in range(rounds):
            cases = {"1 worker, core 0": [["taskset", "-c", "0", *cmd(base, tmp / f"t1-{job}{r}", 1)]],
                     "2 workers, cores 0,1": [["taskset", "-c", "0,1", *cmd(base, tmp / f"t2-{job}{r}", 2)]],
                     "2 processes x 1 worker, a core each": [
                         ["taskset", "-c", str(i), *cmd(base / d, tmp / f"p-{job}{r}{d}", 1)] for i, d in enumerate("ab")]}
            for name, cmds in cases.items():
                t0 = time.perf_counter()
                procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in cmds]
                rcs = [p.wait() for p in procs]
                rows.append({"job": job, "round": r, "case": name, "wall_s": time.perf_counter() - t0, "rc": rcs,
                             "loadavg_1": os.getloadavg()[0]})
    return rows


def overheads(tmp: Path, n: int = 30) -> list[dict[str, Any]]:
    """Per-call costs: the Python API with its caches vs rebuilding sessions every call (28² fmnist-r4),
    and PNG writing of a decoded 512² photo at zlib levels 1, 6 (Pillow's default) and 9."""
    from aekit.codec import api
    from aekit.codec.jobs import encode_image_file
    from aekit.export import runtime
    from aekit.export.manifest import resolve_model

    im = crops([PHOTOS / "test"], 512, 1)[0]
    Image.fromarray(im[:28, :28, 0]).save(tmp / "g.png")
    model = str(resolve_model("fmnist-r4"))

    def round_trip(cold: bool) -> float:
        ts = []
        for _ in range(n):
            if cold:
                api._codecs.clear(), api._decoders.clear(), runtime.clear_session_cache()
            t0 = time.perf_counter()
            api.compress_file(tmp / "g.png", tmp / "g.ael", model, overwrite=True)
            api.decompress_file(tmp / "g.ael", tmp / "g.out.png", [model], overwrite=True)
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    round_trip(False)
    rows = [{"what": "compress_file + decompress_file, 28² fmnist-r4, cached", "ms": 1e3 * round_trip(False)},
            {"what": "compress_file + decompress_file, 28² fmnist-r4, sessions rebuilt every call",
             "ms": 1e3 * round_trip(True)}]
    for level in (1, 6, 9):
        ts, size = [], 0
        for _ in range(7):
            t0 = time.perf_counter()
            size = len(encode_image_file(im, Path("x.png"), png_level=level))
            ts.append(time.perf_counter() - t0)
        rows.append({"what": f"PNG of a 512² photo, zlib level {level}", "ms": 1e3 * statistics.median(ts), "bytes": size})
    return rows


def startup(tmp: Path, runs: int = 7) -> list[dict[str, Any]]:
    """Median wall and CPU seconds of start-up commands (a tiny decompress end to end too)."""
    from aekit.export.manifest import resolve_model

    im = np.asarray(Image.open(sorted((PHOTOS / "test").iterdir())[0]).convert("L"))[:28, :28]
    Image.fromarray(im).save(tmp / "tiny.png")
    subprocess.run(aekit("compress", str(tmp / "tiny.png"), "-m", str(resolve_model("fmnist-r4")),
                         "-o", str(tmp / "tiny.png.ael"), "--overwrite"), check=True, capture_output=True)
    cmds = {"python -c pass": [sys.executable, "-c", "pass"], "aekit --help": aekit("--help"),
            "aekit decompress --help": aekit("decompress", "--help"),
            "aekit decompress one 28x28 file": aekit("decompress", str(tmp / "tiny.png.ael"), "-o",
                                                     str(tmp / "tiny.out.png"), "--overwrite", "--no-progress")}
    rows = []
    for name, cmd in cmds.items():
        got = [timed(cmd) for _ in range(runs)]
        rows.append({"what": name, "wall_s": statistics.median(g["wall_s"] for g in got),
                     "cpu_s": statistics.median(g["cpu_s"] for g in got), "runs": runs})
    return rows


def memory(model: str, tmp: Path, mpx: float, photo: Path, folders: bool = True,
           budgets: tuple[int, ...] = (0,)) -> list[dict[str, Any]]:
    """Peak RSS of compress + decompress of one image of about `mpx` megapixels (a real photo upscaled:
    smooth, so its file may be zstd-coded), of a mosaic of that size of the held-out photos (real detail:
    the hyperprior coder's file), each at every `--memory-mb` of `budgets` (0: the default), and with
    `folders` of a folder of 1, 16 and 64 photos (512² crops, the last 48 mirrored copies)."""
    rows = []
    im = Image.open(photo).convert("RGB")
    k = (mpx * 1e6 / (im.size[0] * im.size[1])) ** 0.5
    big = im.resize((round(im.size[0] * k), round(im.size[1] * k)), Image.Resampling.BICUBIC)
    w, h = big.size
    big.save(tmp / "big.png", compress_level=1)
    tiles = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((PHOTOS / "test").glob("*.png"))]
    mosaic = np.zeros((h, w, 3), np.uint8)
    y = i = 0
    while y < h:  # rows of photos, each row as tall as its first photo
        x, rh = 0, 0
        while x < w:
            t = tiles[i % len(tiles)][: h - y, : w - x]
            mosaic[y:y + t.shape[0], x:x + t.shape[1]] = t
            x, rh, i = x + t.shape[1], max(rh, t.shape[0]), i + 1
        y += rh
    Image.fromarray(mosaic).save(tmp / "mosaic.png", compress_level=1)
    del big, im, mosaic, tiles
    for mb in budgets:
        opt = ["--memory-mb", str(mb)] if mb else []
        for name, what in (("big", f"{photo.name} upscaled"), ("mosaic", "mosaic of the held-out photos")):
            c = timed(aekit("compress", str(tmp / f"{name}.png"), "-m", model, "-o", str(tmp / f"{name}.ael"),
                            "--no-progress", *opt))
            d = timed(aekit("decompress", str(tmp / f"{name}.ael"), "-o", str(tmp / f"{name}.out.png"), "--no-progress", *opt))
            rows.append({"what": f"one {w}x{h} image ({w * h / 1e6:.1f} Mpx), {what}"
                                 + (f", --memory-mb {mb}" if mb else ""), "model": model, "compress": c, "decompress": d})
            for f in (f"{name}.ael", f"{name}.out.png"):
                (tmp / f).unlink(missing_ok=True)
    if not folders:
        return rows
    images = photo_set(64)
    for n in (1, 16, 64):
        src = write_images(images[:n], tmp / f"mem{n}")
        c = timed(aekit("compress", str(src), "-m", model, "-o", str(tmp / f"mlat{n}"), "--no-progress"))
        d = timed(aekit("decompress", str(tmp / f"mlat{n}"), "-o", str(tmp / f"mdec{n}"), "--no-progress"))
        rows.append({"what": f"folder of {n} 512x512 photos", "model": model, "compress": c, "decompress": d})
    return rows


def zstd_gate(models: list[str], images: list[np.ndarray], rounds: int) -> list[dict[str, Any]]:
    """The entropy-coding step (`em.encode` of the model's default quality) with the zstd trial gated
    (ZSTD_GATE, the default) and ungated (level 19 always), interleaved on one thread, next to the whole
    `Codec.compress`: ms per image, bytes and how often the level-19 trial ran."""
    import aekit.export.entropy as ent

    rows = []
    for model in models:
        codec = model_codec(model)[1]
        qs = [codec.symbols(im[None])[0] for im in images]
        t: dict[str, list[list[float]]] = {k: [[] for _ in images] for k in ("gated", "ungated", "compress")}
        sizes = {"gated": 0, "ungated": 0}
        for r in range(rounds + 1):  # round 0 warms up
            for i, (im, q) in enumerate(zip(images, qs)):
                for key, fn in (("gated", lambda: codec.em.encode(q, ent.ZSTD_LEVEL, ent.ZSTD_GATE)),
                                ("ungated", lambda: codec.em.encode(q, ent.ZSTD_LEVEL, None)),
                                ("compress", lambda: codec.compress(im))):
                    t0 = time.perf_counter()
                    out = fn()
                    t[key][i].append(time.perf_counter() - t0)
                    if r == 0 and key in sizes:
                        sizes[key] += len(out[1])
        med = {k: 1e3 * sum(statistics.median(x[1:]) for x in v) / len(images) for k, v in t.items()}
        levels, real = [], ent._zstd_compress
        ent._zstd_compress = lambda raw, level=ent.ZSTD_LEVEL: levels.append(level) or real(raw, level)
        try:  # count the level-19 trials the gate lets through
            for q in qs:
                codec.em.encode(q, ent.ZSTD_LEVEL, ent.ZSTD_GATE)
        finally:
            ent._zstd_compress = real
        full = levels.count(ent.ZSTD_LEVEL)
        rows.append({"model": model, "images": len(images), "side": images[0].shape[0], "rounds": rounds,
                     "quality": codec.quality, "gate": ent.ZSTD_GATE, "probe_level": ent.ZSTD_PROBE_LEVEL,
                     "coding_ms_gated": med["gated"], "coding_ms_ungated": med["ungated"],
                     "compress_ms": med["compress"], "bytes_gated": sizes["gated"], "bytes_ungated": sizes["ungated"],
                     "full_trials_run": int(full),
                     "compress_speedup": (med["compress"] + med["ungated"] - med["gated"]) / med["compress"]})
    return rows


def compress_stages(models: list[str], images: list[np.ndarray], rounds: int) -> list[dict[str, Any]]:
    """Mean ms per image of each stage of a hyperprior model's compress on one thread (encoder network,
    h_a, the integer h_s, the rest of the entropy coding, the whole compress), and the encoder network's
    time by ONNX op type from onnxruntime's profiler (GDN's element-wise ops against the convolutions)."""
    from aekit.bench.lean import final_conv_share

    rows = []
    for model in models:
        folder, codec = model_codec(model)
        em = codec.em
        if not hasattr(em, "hyper_symbols"):
            continue  # not a hyperprior model
        t: dict[str, list[float]] = {k: [] for k in ("compress", "encoder", "h_a", "h_s", "encode")}
        for r in range(rounds + 1):
            for im in images:
                def clock(key: str, fn: Any, *a: Any) -> Any:
                    t0 = time.perf_counter()
                    out = fn(*a)
                    if r:
                        t[key].append(time.perf_counter() - t0)
                    return out
                clock("compress", codec.compress, im)
                q = clock("encoder", codec.symbols, im[None])[0]
                z = clock("h_a", em.hyper_symbols, q)
                clock("h_s", em.decoder.tables, z, q.shape[1], q.shape[2], em.thresholds, em.step4)
                clock("encode", em.encode, q)
        ms = {k: 1e3 * statistics.mean(v) for k, v in t.items()}
        ms["coding (encode − h_a − h_s)"] = ms.pop("encode") - ms["h_a"] - ms["h_s"]
        x = np.random.default_rng(0).uniform(-1, 1, (1, 3, *images[0].shape[:2])).astype(np.float32)
        rows.append({"model": model, "images": len(images), "side": images[0].shape[0], "rounds": rounds,
                     "ms": ms, "encoder_file": codec.rt.encoder_file,
                     "encoder_op_share": final_conv_share(folder / codec.rt.encoder_file, {"x": x}, rounds)["by_op"]})
    return rows


def tile_context(models: list[str], mpx: float, rounds: int) -> list[dict[str, Any]]:
    """A mosaic of the held-out photos of about `mpx` megapixels (tiled: above 4 Mpx), compressed and
    decompressed in memory on one worker and one thread with tiles of the fixed 6-unit context and of the
    model's receptive field (CodecConfig.overlap 0), interleaved; median seconds and whether the two give
    the same symbols and pixels."""
    from aekit.codec.core import Codec, CodecConfig, Decoder
    from aekit.export.manifest import resolve_model

    tiles = [np.asarray(Image.open(p).convert("RGB").resize((640, 480), Image.Resampling.LANCZOS))
             for p in sorted((PHOTOS / "test").glob("*.png"))]
    side = int((mpx * 1e6) ** 0.5)
    mosaic = np.concatenate(tiles, axis=1)  # (480, 640 * n, 3)
    image = np.ascontiguousarray(np.tile(mosaic, (-(-side // mosaic.shape[0]), -(-side // mosaic.shape[1]), 1))[:side, :side])
    rows = []
    for name in models:
        model = resolve_model(name)
        cfgs = {"fixed 6": CodecConfig(device="cpu", workers=1, overlap=6), "receptive field": CodecConfig(device="cpu", workers=1)}
        codecs = {k: Codec(model, c) for k, c in cfgs.items()}
        decs = {k: Decoder([model], c) for k, c in cfgs.items()}
        times: dict[str, dict[str, list[float]]] = {k: {"compress": [], "decompress": []} for k in cfgs}
        out: dict[str, tuple[bytes, np.ndarray]] = {}
        for _ in range(rounds):
            for k in cfgs:
                t0 = time.perf_counter()
                data = codecs[k].compress(image)
                t1 = time.perf_counter()
                x, _ = decs[k].decompress(data)
                t2 = time.perf_counter()
                times[k]["compress"].append(t1 - t0)
                times[k]["decompress"].append(t2 - t1)
                out[k] = (data, x)
        row = {"model": name, "side": side, "mpx": side * side / 1e6,
               "overlap": {k: c.overlap for k, c in codecs.items()},
               "same_file": out["fixed 6"][0] == out["receptive field"][0],
               "same_pixels": bool(np.array_equal(out["fixed 6"][1], out["receptive field"][1]))}
        for k in cfgs:
            for part in ("compress", "decompress"):
                row[f"{part}_s"] = row.get(f"{part}_s", {})
                row[f"{part}_s"][k] = statistics.median(times[k][part])
        row["speedup"] = {p: row[f"{p}_s"]["fixed 6"] / row[f"{p}_s"]["receptive field"] for p in ("compress", "decompress")}
        rows.append(row)
    return rows


def train_scaling(tmp: Path, epochs: int = 2) -> list[dict[str, Any]]:
    """Seconds of the last epoch of a small gdn training: nproc x threads (OMP_WAIT_POLICY passive)."""
    rows = []
    for nproc, threads, cores in ((1, 1, "0"), (2, 1, "0,1"), (1, 2, "0,1")):
        out = tmp / f"train-{nproc}x{threads}"
        r = timed(aekit("train", str(PHOTOS / "train"), "--out", str(out), "--arch", "gdn", "--rate-weight", "0.01",
                        "--size", "96", "--resize", "random-crop", "--batch-size", "16", "--repeat", "16",
                        "--epochs", str(epochs), "--nproc", str(nproc), "--threads", str(threads),
                        "--val-fraction", "0.125", "--seed", "0"), cores)
        times = []
        if (out / "log.csv").exists():
            lines = (out / "log.csv").read_text().splitlines()
            col = lines[0].split(",").index("epoch_time_s")
            times = [float(ln.split(",")[col]) for ln in lines[1:]]
        rows.append({"nproc": nproc, "threads": threads, "cores": cores, "epoch_times_s": times,
                     "last_epoch_s": times[-1] if times else None, "run": r})
    base = rows[0]["last_epoch_s"]
    for r in rows[1:]:
        r["speedup_vs_1x1"] = base / r["last_epoch_s"] if base and r["last_epoch_s"] else None
    return rows


def markdown(res: Result) -> str:
    lines = [f"# CPU scaling (issue 17)\n\n`{res.command}`\n\n{res.machine.get('cpu', {})}\n"]
    if res.speed:
        lines += ["| model | side | compress MP/s/core | decompress MP/s/core | JPEG enc / dec MP/s | "
                  "compress ÷ JPEG | decompress ÷ JPEG | bytes ours / JPEG | PSNR ours / JPEG |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for s in res.speed:
            lines.append(f"| {s['model']} | {s['side']}² | {s['compress_mp_s_per_core']:.2f} | "
                         f"{s['decompress_mp_s_per_core']:.2f} | {s['jpeg_encode_mp_s']:.1f} / {s['jpeg_decode_mp_s']:.1f} | "
                         f"{s['compress_over_jpeg']:.3f} | {s['decompress_over_jpeg']:.3f} | "
                         f"{s['ael_bytes_mean']:.0f} / {s['jpeg_bytes_mean']:.0f} | "
                         f"{s['psnr_ours']:.2f} / {s['psnr_jpeg']:.2f} dB |")
    if res.folder:
        lines += ["", "| folder job | workers (cores) | compress s | decompress s | speed-up | peak RSS MB c / d |",
                  "|---|---|---|---|---|---|"]
        for f in res.folder:
            sp = (f"{f['compress_speedup']:.2f}x / {f['decompress_speedup']:.2f}x"
                  + (", identical" if f.get("identical_outputs") else ", DIFFERENT")) if "compress_speedup" in f else ""
            lines.append(f"| {f['images']} x {f['side']}² {f['model']} | {f['workers']} ({f['cores']}) | "
                         f"{f['compress']['wall_s']:.1f} | {f['decompress']['wall_s']:.1f} | {sp} | "
                         f"{f['compress']['peak_rss_mb']:.0f} / {f['decompress']['peak_rss_mb']:.0f} |")
    if res.startup:
        lines += ["", "| start-up | wall s (median) | CPU s |", "|---|---|---|"]
        lines += [f"| {s['what']} | {s['wall_s']:.3f} | {s['cpu_s']:.2f} |" for s in res.startup]
    if res.tiles:
        lines += ["", "| large image (1 worker, 1 thread) | tile context, latent units | compress s | decompress s | "
                  "speed-up c / d | same file / pixels |", "|---|---|---|---|---|---|"]
        for t in res.tiles:
            o = t["overlap"]
            lines.append(f"| {t['model']}, {t['side']}² ({t['mpx']:.1f} Mpx) | 6 → {o['receptive field']} | "
                         f"{t['compress_s']['fixed 6']:.1f} → {t['compress_s']['receptive field']:.1f} | "
                         f"{t['decompress_s']['fixed 6']:.1f} → {t['decompress_s']['receptive field']:.1f} | "
                         f"{t['speedup']['compress']:.2f}x / {t['speedup']['decompress']:.2f}x | "
                         f"{t['same_file']} / {t['same_pixels']} |")
    if res.zstd:
        lines += ["", "| model (quality) | images | coding ms, gated / always level 19 | full trials run | "
                  "compress ms (gated) | compress speed-up | bytes gated / ungated |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {z['model']} (q{z['quality']}) | {z['images']} × {z['side']}² | {z['coding_ms_gated']:.1f} / "
                  f"{z['coding_ms_ungated']:.1f} | {z['full_trials_run']} of {z['images']} | {z['compress_ms']:.1f} | "
                  f"{z['compress_speedup']:.3f}x | {z['bytes_gated']} / {z['bytes_ungated']} |" for z in res.zstd]
    if res.stages:
        lines += ["", "| model | images | compress ms | encoder | h_a | h_s | coding (encode − h_a − h_s) | "
                  "encoder time by op (onnxruntime profile) |", "|---|---|---|---|---|---|---|---|"]
        for st in res.stages:
            m = st["ms"]
            share = ", ".join(f"{k} {100 * v:.0f} %" for k, v in st["encoder_op_share"].items() if v >= 0.02)
            lines.append(f"| {st['model']} | {st['images']} × {st['side']}² | {m['compress']:.1f} | {m['encoder']:.1f} | "
                         f"{m['h_a']:.1f} | {m['h_s']:.1f} | {m['coding (encode − h_a − h_s)']:.1f} | {share} |")
    if res.memory:
        lines += ["", "| peak RSS | compress MB | decompress MB | compress / decompress wall s |", "|---|---|---|---|"]
        lines += [f"| {m['what']} ({m['model']}) | {m['compress']['peak_rss_mb']:.0f} | "
                  f"{m['decompress']['peak_rss_mb']:.0f} | {m['compress']['wall_s']:.1f} / {m['decompress']['wall_s']:.1f} |"
                  for m in res.memory]
    if res.overheads:
        lines += ["", "| per call | ms | bytes |", "|---|---|---|"]
        lines += [f"| {o['what']} | {o['ms']:.1f} | {o.get('bytes', '')} |" for o in res.overheads]
    if res.contention:
        lines += ["", "| job | round | case | wall s | load |", "|---|---|---|---|---|"]
        lines += [f"| {c['job']} | {c['round']} | {c['case']} | {c['wall_s']:.2f} | {c['loadavg_1']:.1f} |"
                  for c in res.contention]
    if res.train:
        lines += ["", "| training | cores | epoch s (last) | speed-up vs 1 process x 1 thread |", "|---|---|---|---|"]
        for t in res.train:
            sp = f"{t['speedup_vs_1x1']:.2f}x" if t.get("speedup_vs_1x1") else "—"
            last = f"{t['last_epoch_s']:.1f}" if t["last_epoch_s"] else "failed"
            lines.append(f"| --nproc {t['nproc']} --threads {t['threads']} | {t['cores']} | {last} | {sp} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="speed,folder,startup,memory,train",
                    help="comma-separated: speed, folder, startup, memory, train, tiles (tile context), "
                         "zstd (gated vs ungated zstd trial), stages (compress stages, encoder ops), "
                         "contention (threads vs processes), "
                         "overheads (API caches, PNG levels)")
    ap.add_argument("--out", default="bench/results/cpu_scaling.json")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per image (median)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), help="models of the speed part (names or folders; "
                    "NAME:int8 decodes with the model's int8 decoder variant; NAME[:int8]:coder4 compresses without coder 5's "
                    "checkerboard context, to compare the two coders in one run; NAME…:rdoq0 rounds plainly, without RDOQ)")
    ap.add_argument("--folder-images", type=int, default=16, help="512² photos of the 1 vs 2 cores folder job (<= 64)")
    ap.add_argument("--mpx", type=float, default=50.0, help="megapixels of the memory test's single image")
    ap.add_argument("--tile-mpx", type=float, default=16.0, help="megapixels of the tiles part's mosaic")
    ap.add_argument("--memory-models", nargs="+", default=["photos-r9", "photos-r4"],
                    help="models of the memory part (the folders run with the first)")
    ap.add_argument("--memory-mb", nargs="+", type=int, default=[0],
                    help="--memory-mb values of the memory part's single-image runs (0: the codec's default)")
    ap.add_argument("--no-memory-folders", action="store_true", help="memory part: single images only")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    res = Result(command=shlex.join(["python", "-m", "aekit.bench.cpu_scaling", *(argv or sys.argv[1:])]),
                 machine=environment("cpu"))
    res.machine.update(affinity=len(os.sched_getaffinity(0)), loadavg_1_5_15=os.getloadavg(),
                       env={k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")})
    tmp = Path(tempfile.mkdtemp(prefix="aekit-cpu-"))
    try:
        if "speed" in parts:
            images = crops([PHOTOS / "test"], 512, 4)
            res.speed = [speed(m, images, args.rounds) for m in args.models]
        if "folder" in parts:
            res.folder = folder_scaling("photos-r9", photo_set(args.folder_images), tmp)
        if "startup" in parts:
            res.startup = startup(tmp)
        if "memory" in parts:
            res.memory = [r for i, m in enumerate(args.memory_models)
                          for r in memory(m, tmp, args.mpx, PHOTOS / "test" / "Storm.png",
                                          folders=i == 0 and not args.no_memory_folders, budgets=tuple(args.memory_mb))]
        if "train" in parts:
            res.train = train_scaling(tmp)
        if "overheads" in parts:
            res.overheads = overheads(tmp)
        if "tiles" in parts:
            res.tiles = tile_context(args.models, args.tile_mpx, args.rounds)
        if "stages" in parts:
            res.stages = compress_stages(args.models, photo_set(16), args.rounds)
        if "zstd" in parts:
            res.zstd = zstd_gate(args.models, photo_set(16), args.rounds)
        if "contention" in parts:
            res.contention = threads_vs_processes("photos-r9", photo_set(args.folder_images), tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, (json.dumps(asdict(res), indent=1, default=str) + "\n").encode())
    atomic_write_bytes(out.with_suffix(".md"), markdown(res).encode())
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
