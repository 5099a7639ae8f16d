"""Folder jobs for compress and decompress: mirrored trees, streaming, resume, one line per failure.

Files are streamed (a bounded window of images in flight, never the whole folder), image
files are decoded and written by a thread pool, and images of equal size are batched into
one ONNX call. Every output is written to a temp name and renamed, so an interrupted run
leaves no partial files and a rerun resumes (existing outputs are skipped unless overwrite).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from aekit.images import IMAGE_EXTENSIONS, atomic_write_bytes, is_image_name
from aekit.codec.core import Codec, Decoder, wrap_errors
from aekit.codec.format import SUFFIX, LatentHeader

log = logging.getLogger(__name__)


@dataclass
class JobConfig:
    overwrite: bool = False  # replace existing outputs (default: skip them, so a rerun resumes)
    workers: int = 4  # threads reading/decoding and writing files
    window: int = 256  # files in flight at most (bounds memory with the batch size)
    max_held_pixels: int = 1 << 26  # decoded pixels waiting for a batch before the largest is flushed
    progress: bool | None = None  # progress bar (None: only when stderr is a terminal)
    out_format: str = "png"  # decompress: "png" (lossless) or "same" (the original file's suffix)


@dataclass
class JobReport:
    verb: str  # "compressed" | "decompressed"
    ok: int = 0
    skipped: int = 0  # outputs that already existed (resume)
    ignored: int = 0  # files of other kinds in the tree (not images / not .ael)
    failed: list[str] = field(default_factory=list)  # one line per failed file
    bytes_in: int = 0  # input file bytes of processed files
    bytes_out: int = 0  # output file bytes written
    pixel_bytes: int = 0  # raw pixel bytes (H * W * C of the original images)
    seconds: float = 0.0

    def summary(self) -> str:
        t = max(self.seconds, 1e-9)
        ratio = (f", {self.pixel_bytes / self.bytes_out:.1f}x smaller than raw pixels"
                 if self.verb == "compressed" and self.bytes_out else "")
        return (f"{self.verb} {self.ok} files, skipped {self.skipped} existing, {len(self.failed)} failed"
                f"{f', ignored {self.ignored} other files' if self.ignored else ''}; "
                f"{self.bytes_in / 1e6:.2f} MB in, {self.bytes_out / 1e6:.2f} MB out{ratio}; "
                f"{self.seconds:.1f} s, {self.ok / t:.1f} images/s, {self.pixel_bytes / 1e6 / t:.2f} MB/s of pixels")


@dataclass
class Item:
    src: Path
    dst: Path
    data: object = None  # what the loader produced
    note: str = ""


def _progress(total: int, enabled: bool | None, unit: str):
    from tqdm import tqdm

    on = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(total=total, disable=not on, unit=unit, dynamic_ncols=True, file=sys.stderr)


def walk(src: Path, want: Callable[[Path], bool]) -> Iterator[tuple[Path, Path] | tuple[None, Path]]:
    """(path, rel) of wanted files under src in sorted order; (None, rel) for the others."""
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue  # hidden files, including our own temp files
            p = Path(dirpath) / name
            yield (p, p.relative_to(src)) if want(p) else (None, p.relative_to(src))


def plan(src: Path, dst: Path, want: Callable[[Path], bool], out_name: Callable[[Path], Path],
         report: JobReport) -> tuple[int, Iterator[Item]]:
    """(count of wanted files, stream of Items); single files map to a file or into a folder."""
    if src.is_file():
        target = dst if (dst.suffix and not dst.is_dir()) else dst / out_name(Path(src.name))
        return 1, iter([Item(src, target)])
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such file or folder")
    total = sum(1 for p, _ in walk(src, want) if p is not None)  # paths only, not kept

    def items() -> Iterator[Item]:
        for p, rel in walk(src, want):
            if p is None:
                report.ignored += 1
            else:
                yield Item(p, dst / out_name(rel))

    return total, items()


def is_latent_name(p: Path) -> bool:
    return p.name.endswith(SUFFIX)


def decoded_name(rel: Path, out_format: str) -> Path:
    """a/b.jpg.ael -> a/b.png (png) or a/b.jpg (same); lossless PNG unless asked."""
    stem = Path(str(rel)[: -len(SUFFIX)] if str(rel).endswith(SUFFIX) else str(rel))
    has_ext = stem.suffix.lower() in IMAGE_EXTENSIONS
    if out_format == "same" and has_ext:
        return stem
    return stem.with_suffix(".png") if has_ext else stem.with_name(stem.name + ".png")


def encode_image_file(arr: np.ndarray, path: Path) -> bytes:
    """uint8 (H, W, 1|3) -> file bytes in the format of path's suffix (JPEG q95, WebP lossless)."""
    im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    opts = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}}.get(fmt, {})
    buf = io.BytesIO()
    im.save(buf, format=fmt, **opts)
    return buf.getvalue()


class _Pipeline:
    """Shared machinery: bounded load window, shape buckets, write futures, failure lines."""

    def __init__(self, report: JobReport, jcfg: JobConfig, bar):
        self.report, self.jcfg, self.bar = report, jcfg, bar
        self.pool = ThreadPoolExecutor(max(1, jcfg.workers))
        self.writes: deque[tuple[Item, Future]] = deque()
        self.buckets: dict[tuple, list[Item]] = {}
        self.held = 0

    def fail(self, item: Item, exc: Exception) -> None:
        """Record one failed file as one line naming it (unexpected error types are named too)."""
        err = wrap_errors(item.src, exc)
        line = str(err) if str(item.src) in str(err) else f"{item.src}: {err}"
        if type(err).__name__ not in ("CodecError", "ImageError", "LatentFormatError", "ValueError"):
            line += f" ({type(err).__name__})"
        self.report.failed.append(line)
        log.error("failed: %s", line)
        self.bar.update(1)

    def write(self, item: Item, make_bytes: Callable[[], bytes], pixel_bytes: int) -> None:
        def job() -> int:
            data = make_bytes()
            atomic_write_bytes(item.dst, data)
            return len(data)

        self.writes.append((item, self.pool.submit(job), pixel_bytes))
        while len(self.writes) > self.jcfg.window:
            self.finish_write()

    def finish_write(self) -> None:
        item, fut, pixel_bytes = self.writes.popleft()
        try:
            n = fut.result()
        except Exception as e:
            self.fail(item, e)
            return
        self.report.ok += 1
        self.report.bytes_out += n
        self.report.pixel_bytes += pixel_bytes
        self.report.bytes_in += item.src.stat().st_size
        self.bar.update(1)

    def add(self, key: tuple, item: Item, pixels: int, batch: int, flush: Callable[[list[Item]], None]) -> None:
        self.buckets.setdefault(key, []).append(item)
        self.held += pixels
        if len(self.buckets[key]) >= batch:
            self.flush(key, flush)
        while self.held > self.jcfg.max_held_pixels and self.buckets:
            self.flush(max(self.buckets, key=lambda k: len(self.buckets[k])), flush)

    def flush(self, key: tuple, flush: Callable[[list[Item]], None]) -> None:
        items = self.buckets.pop(key)
        self.held -= sum(_pixels(i) for i in items)
        try:
            flush(items)
        except Exception as e:  # a failing batch fails its files, the job goes on
            for it in items:
                self.fail(it, e)

    def run(self, items: Iterator[Item], load: Callable[[Item], object], route: Callable[[Item], None],
            flush: Callable[[list[Item]], None]) -> None:
        loads: deque[tuple[Item, Future]] = deque()
        try:
            for item in items:
                if item.dst.exists() and not self.jcfg.overwrite:
                    self.report.skipped += 1
                    self.bar.update(1)
                    continue
                loads.append((item, self.pool.submit(load, item)))
                while len(loads) > self.jcfg.window:
                    self._route(*loads.popleft(), route)
            while loads:
                self._route(*loads.popleft(), route)
            for key in list(self.buckets):
                self.flush(key, flush)
            while self.writes:
                self.finish_write()
        finally:  # on interrupt: drop pending reads, but let computed outputs land (atomically)
            for _, fut in loads:
                fut.cancel()
            wait([fut for _, fut, _ in self.writes])
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _route(self, item: Item, fut: Future, route: Callable[[Item], None]) -> None:
        try:
            item.data = fut.result()
            route(item)
        except Exception as e:
            self.fail(item, e)


def _pixels(item: Item) -> int:
    d = item.data
    arr = d[0] if isinstance(d, tuple) else None
    if isinstance(arr, np.ndarray):
        return arr.size
    if isinstance(arr, LatentHeader):
        return arr.height * arr.width * 3
    return 0


def compress_tree(src: str | Path, dst: str | Path, codec: Codec, jcfg: JobConfig | None = None) -> JobReport:
    """Compress an image file or folder tree into mirrored .ael files (dst/rel + '.ael')."""
    jcfg, report, t0 = jcfg or JobConfig(), JobReport("compressed"), time.monotonic()
    total, items = plan(Path(src), Path(dst), is_image_name, lambda rel: rel.with_name(rel.name + SUFFIX), report)

    def route(item: Item) -> None:
        arr, mode = item.data  # (H, W, C) uint8, original mode
        if codec.tiled(*arr.shape[:2]):
            flush([item])  # a large image is its own batch (tiled, bounded memory)
        else:
            p.add(("img",) + arr.shape, item, arr.size, codec.cfg.batch_size, flush)

    def flush(items: list[Item]) -> None:
        images = np.stack([it.data[0] for it in items])  # (B, H, W, C)
        files = codec.compress_batch(images, [it.data[1] for it in items])
        for it, data in zip(items, files):
            raw = it.data[0].shape[0] * it.data[0].shape[1] * (1 if it.data[1] == "L" else 3)
            it.data = None  # release pixels
            p.write(it, lambda d=data: d, raw)

    with _progress(total, jcfg.progress, "img") as bar:
        p = _Pipeline(report, jcfg, bar)
        p.run(items, lambda it: codec.load(it.src), route, flush)
    report.seconds = time.monotonic() - t0
    return report


def decompress_tree(src: str | Path, dst: str | Path, decoder: Decoder, jcfg: JobConfig | None = None) -> JobReport:
    """Decompress a .ael file or folder tree into mirrored images (PNG unless out_format='same')."""
    jcfg, report, t0 = jcfg or JobConfig(), JobReport("decompressed"), time.monotonic()
    total, items = plan(Path(src), Path(dst), is_latent_name, lambda rel: decoded_name(rel, jcfg.out_format), report)
    claimed: dict[Path, Path] = {}  # outputs of the current folder (two latents -> one name)

    def load(item: Item) -> tuple[LatentHeader, np.ndarray]:
        return decoder.symbols(item.src.read_bytes(), str(item.src))

    def route(item: Item) -> None:
        if claimed and next(iter(claimed)).parent != item.dst.parent:
            claimed.clear()
        if item.dst in claimed:
            raise ValueError(f"{item.src}: decodes to {item.dst.name}, already written from "
                             f"{claimed[item.dst].name} in this run; use --format same")
        claimed[item.dst] = item.src
        h, _ = item.data
        key = (h.model_id, h.height, h.width, h.mode)
        if h.height * h.width > decoder.cfg.full_res_max_pixels:
            flush([item])
        else:
            p.add(key, item, h.height * h.width * 3, decoder.cfg.batch_size, flush)

    def flush(items: list[Item]) -> None:
        h = items[0].data[0]
        out = decoder.reconstruct(h, np.stack([it.data[1] for it in items]))  # (B, H, W, C)
        for it, img in zip(items, out):
            it.data = None
            p.write(it, lambda a=img, d=it.dst: encode_image_file(a, d), img.size)

    with _progress(total, jcfg.progress, "file") as bar:
        p = _Pipeline(report, jcfg, bar)
        p.run(items, load, route, flush)
    report.seconds = time.monotonic() - t0
    return report
