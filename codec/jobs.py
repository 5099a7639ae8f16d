"""Folder jobs for compress and decompress: mirrored trees, streaming, resume, one line per failure.

Files are streamed (a bounded window of images in flight, never the whole folder), image
files are decoded and written by a thread pool, and images of equal size are batched into
one ONNX call. Every output is written to a temp name, fsynced and renamed, so an interrupted
run leaves no partial files (temp files of a killed run are removed by the next one).
Resume: a ledger in the output folder (.aekit-outputs.jsonl) records what made each output
(source path, size and mtime; job, model id, levels, output format); a rerun skips outputs
whose record matches and redoes stale ones (changed source, other model or settings); an existing
file with no record (not written by an aekit job there) is not replaced without --overwrite, and an
output that is its own source never is. Two sources that map to one output name are reported on
every run, not only the first.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np
from PIL import Image

from aekit.machine import usable_cores
from aekit.images import (
    IMAGE_EXTENSIONS, LazyPixels, atomic_write_bytes, check_output_folder, commit_part, display, encode_image,
    is_image_name, iter_files, new_part, remove_stale_parts, write_png_rows,
)
from aekit.codec.core import Codec, Decoder, wrap_errors
from aekit.codec.format import SUFFIX, LatentHeader
from aekit.export.entropy import RDOQ_T

log = logging.getLogger(__name__)


IO_THREADS_MIN = 4  # threads reading/decoding and encoding/writing files (at least; more with more workers)
PNG_LEVEL_FAST, PNG_LEVEL_SMALLEST = 1, 9  # zlib levels of decoded PNGs: default, and --smallest


@dataclass
class JobConfig:
    overwrite: bool = False  # replace existing outputs (default: skip them, so a rerun resumes)
    workers: int = 0  # model calls at once, one onnxruntime thread each (0: the usable cores, os.sched_getaffinity)
    window: int = 256  # files in flight at most (read ahead, or written behind)
    held_mb: int = 256  # MiB of decoded files read ahead or waiting for a batch before the largest batch is flushed
    progress: bool | None = None  # progress bar (None: only when stderr is a terminal)
    out_format: str = "png"  # decompress: "png" (lossless) or "same" (the original file's suffix)
    smallest: bool = False  # decompress: PNG at zlib level 9 (smallest, slow) instead of 1 (fast)

    @property
    def n_workers(self) -> int:
        return self.workers if self.workers > 0 else usable_cores()

    @property
    def held_bytes(self) -> int:
        return max(1, self.held_mb) << 20


@dataclass
class JobReport:
    verb: str  # "compressed" | "decompressed"
    ok: int = 0
    skipped: int = 0  # outputs that already existed and are up to date (resume)
    stale: int = 0  # existing outputs redone: source changed, or other model/settings
    ignored: int = 0  # files of other kinds in the tree (not images / not .ael)
    failed: list[str] = field(default_factory=list)  # one line per failed file
    bytes_in: int = 0  # input file bytes of processed files
    bytes_out: int = 0  # output file bytes written
    pixel_bytes: int = 0  # raw pixel bytes (H * W * C of the original images)
    seconds: float = 0.0
    empty_source: str = ""  # a source folder with no file of this job's kind (a warning, not an error)

    def summary(self) -> str:
        t = max(self.seconds, 1e-9)
        ratio = ""
        if self.verb == "compressed" and self.bytes_out:  # against the source files too, not raw pixels alone
            vs_src = self.bytes_in / self.bytes_out
            ratio = (f", {self.pixel_bytes / self.bytes_out:.1f}x smaller than raw pixels, "
                     + (f"{vs_src:.2f}x smaller than the source files" if vs_src >= 1 else
                        f"{1 / vs_src:.2f}x LARGER than the source files"))
        stale = f" (redid {self.stale} stale)" if self.stale else ""
        return (f"{self.verb} {_files(self.ok)}{stale}, skipped {self.skipped} existing, {len(self.failed)} failed"
                f"{f', ignored {self.ignored} other {_files(self.ignored, False)}' if self.ignored else ''}; "
                f"{self.bytes_in / 1e6:.2f} MB in, {self.bytes_out / 1e6:.2f} MB out{ratio}; "
                f"{self.seconds:.1f} s, {self.ok / t:.1f} images/s, {self.pixel_bytes / 1e6 / t:.2f} MB/s of pixels")


    def warnings(self) -> list[str]:
        """What a user must hear about the result beyond the counts (one line each)."""
        if self.empty_source:
            kind = ".ael files" if self.verb == "decompressed" else "images"
            other = f" ({self.ignored} other {_files(self.ignored, False)} ignored)" if self.ignored else ""
            return [f"{self.empty_source}: no {kind} found{other}; nothing was {self.verb}"]
        if self.verb == "compressed" and self.ok and self.bytes_out > self.bytes_in:
            return [f"the latent files ({self.bytes_out / 1e6:.2f} MB) are larger than the source files "
                    f"({self.bytes_in / 1e6:.2f} MB): this model and quality save nothing over the sources' "
                    "own coding; try a lower --quality or another model (see aekit evaluate)"]
        return []


def _files(n: int, count: bool = True) -> str:
    """'1 file', '2 files' (count=False: the noun alone)."""
    noun = "file" if n == 1 else "files"
    return f"{n} {noun}" if count else noun


@dataclass
class Item:
    src: Path
    dst: Path
    data: object = None  # what the loader produced
    note: str = ""
    stamp: dict | None = None  # the source's identity when it was read (see Ledger)
    seq: int = 0  # position in the walk: failures are listed in this order
    loaded: int = 0  # bytes of `data` counted as read-ahead (until routed)
    held: int = 0  # bytes counted while waiting in a batch bucket


LEDGER = ".aekit-outputs.jsonl"  # hidden: walkers skip it, like our temp files


class Ledger:
    """What made each output of a folder job, so a rerun redoes exactly the stale outputs.

    One JSON line per output written: {"out": path relative to the ledger's folder, "src":
    absolute source path, "size", "mtime_ns", "recipe": {job, model, levels, ...}}, and before
    outputs are written, an intent line {"intent": true, "out": ...} for each (see intend). Lines are
    appended as outputs land (a killed run keeps what it finished) and the file is compacted,
    atomically, when the job ends. An output whose record does not match is redone; an existing file
    with neither line is someone else's and is not replaced (see known).
    """

    def __init__(self, root: Path, recipe: dict):
        self.root, self.recipe, self.path = root, recipe, root / LEDGER
        self.lock = threading.Lock()
        self.records: dict[str, dict] = {}
        self.intents: set[str] = set()  # outputs a run set out to write (write-ahead; see intend)
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (FileNotFoundError, NotADirectoryError):
            lines = []
        except (OSError, UnicodeDecodeError) as e:
            log.warning("%s: unreadable (%s); existing outputs are not replaced without --overwrite",
                        display(self.path), e)
            lines = []
        for line in lines:
            try:
                rec = json.loads(line)
                if rec.get("intent"):
                    self.intents.add(rec["out"])
                else:
                    self.records[rec["out"]] = rec
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # the torn last line of a killed run (its intent line remains), or foreign text

    def key(self, dst: Path) -> str:
        return os.path.relpath(dst, self.root)

    @staticmethod
    def stamp(src: Path) -> dict:
        st = src.stat()
        return {"src": os.path.abspath(src), "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def fresh(self, item: Item) -> bool:
        """Is item.dst made from this very source with this recipe? Sets item.stamp."""
        try:
            item.stamp = self.stamp(item.src)
        except OSError:
            item.stamp = None
            return False
        rec = self.records.get(self.key(item.dst))
        return rec is not None and {k: rec.get(k) for k in ("src", "size", "mtime_ns", "recipe")} == {
            **item.stamp, "recipe": self.recipe}

    def known(self, dst: Path) -> bool:
        """Has a run of this folder's jobs written dst (a record, fresh or stale, or the intent line of a
        run killed before its record landed)? Files without one are someone else's: a job does not
        replace them unless told to (--overwrite)."""
        k = self.key(dst)
        return k in self.records or k in self.intents

    def intend(self, dsts: list[Path]) -> None:
        """Write-ahead: append {"out": ..., "intent": true} for outputs about to be written, before any of
        them lands, so an output whose record a killed run never appended is still known as ours."""
        keys = [k for k in dict.fromkeys(self.key(d) for d in dsts) if k not in self.intents]
        if not keys:
            return
        with self.lock:
            self.intents.update(keys)
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write("".join(json.dumps({"intent": True, "out": k}, sort_keys=True) + "\n" for k in keys))
            except OSError as e:  # the outputs' own writes will report an unwritable folder, file by file
                log.warning("%s: intent lines not written (%s)", display(self.path), e)

    def add(self, item: Item) -> None:
        if item.stamp is None:
            return
        rec = {"out": self.key(item.dst), **item.stamp, "recipe": self.recipe}
        line = json.dumps(rec, sort_keys=True) + "\n"
        with self.lock:
            self.records[rec["out"]] = rec
            self.root.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)

    def compact(self) -> None:
        """Rewrite with one line per output that still exists (atomic; a failure only logs)."""
        with self.lock:
            keep = [r for k, r in sorted(self.records.items()) if (self.root / k).exists()]
            keep += [{"intent": True, "out": k} for k in sorted(self.intents - self.records.keys())
                     if (self.root / k).exists()]  # written by a killed run, never recorded: still ours
            if not keep and not self.path.exists():
                return
            try:
                atomic_write_bytes(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep).encode())
            except OSError as e:
                log.warning("%s: not compacted (%s)", display(self.path), e)


def output_root(src: Path, dst: Path) -> Path:
    """The folder that holds a job's outputs and its ledger (dst, or a single output's folder)."""
    if src.is_file() and dst.suffix and not dst.is_dir():
        return dst.parent
    return dst


def start_job(src: Path, dst: Path, recipe: dict) -> Ledger:
    """Remove temp files a killed run left in the output tree; open the output ledger."""
    root = output_root(src, dst)
    if root.is_dir():
        gone = remove_stale_parts(root)
        if gone:
            log.info("removed %d temp file(s) left by an interrupted run, e.g. %s", len(gone), display(gone[0]))
    return Ledger(root, recipe)


def _progress(total: int, enabled: bool | None, unit: str):
    from tqdm import tqdm

    on = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(total=total, disable=not on, unit=unit, dynamic_ncols=True, file=sys.stderr)


def walk(src: Path, want: Callable[[Path], bool]) -> Iterator[tuple[Path, Path] | tuple[None, Path]]:
    """(path, rel) of wanted files under src in sorted order; (None, rel) for the others.

    aekit.images.iter_files is the walker (hidden names, including our temp files and
    ledger, are skipped); wanted entries that cannot be read fail later with one line.
    """
    for p in iter_files(src):
        yield (p, p.relative_to(src)) if want(p) else (None, p.relative_to(src))


def plan(src: Path, dst: Path, want: Callable[[Path], bool], out_name: Callable[[Path], Path],
         report: JobReport) -> tuple[int, Iterator[Item]]:
    """(count of wanted files, stream of Items); single files map to a file or into a folder."""
    if src.is_file():
        target = dst if (dst.suffix and not dst.is_dir()) else dst / out_name(Path(src.name))
        check_output_folder(target.parent, make=True)
        return 1, iter([Item(src, target)])
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such file or folder")
    total = sum(1 for p, _ in walk(src, want) if p is not None)  # paths only, not kept
    check_output_folder(dst, make=total > 0)  # checked either way; not made for a job with nothing to write
    if total == 0:
        report.empty_source = display(src)

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


def is_png_name(path: Path) -> bool:
    """A decoded file named path is written as PNG (its suffix is PNG's or unknown to Pillow)."""
    return Image.registered_extensions().get(Path(path).suffix.lower(), "PNG") == "PNG"


def stream_png(decoder: Decoder, header: LatentHeader, q: np.ndarray, f: BinaryIO, png_level: int = PNG_LEVEL_FAST) -> int:
    """Decode symbols q (c_y, h, w) of one file straight into a PNG written to f, a row of tiles at a
    time (Decoder.reconstruct_rows, aekit.images.write_png_rows): a tiled image never exists whole in
    memory. Returns the bytes written; the pixels are those of Decoder.reconstruct."""
    c = 1 if header.mode == "L" else decoder.runtime(header.model_id).channels
    return write_png_rows(f, header.width, header.height, c, decoder.reconstruct_rows(header, q), png_level)


def encode_image_file(arr: np.ndarray, path: Path, png_level: int = PNG_LEVEL_FAST) -> bytes:
    """uint8 (H, W, 1|3) -> file bytes in the format of path's suffix (aekit.images.encode_image).

    PNG is written at zlib level png_level (default 1: encoding was 8.5-10 % of decompress at
    Pillow's 6, issue 17; 9 for the smallest files); the pixels are the same at every level.
    """
    if not is_png_name(path):
        return encode_image(arr, Path(path).suffix)
    buf = io.BytesIO()
    Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(buf, format="PNG", compress_level=png_level)
    return buf.getvalue()


class _Pipeline:
    """Shared machinery: bounded load window, shape buckets, parallel model calls, write futures, failure lines.

    The main thread walks the sources, routes loaded files into buckets of equal size and hands full
    batches to `workers` compute threads (one onnxruntime thread each); what a batch writes is
    replayed in submission order, so outputs, ledger lines and the failure list do not depend on
    the number of workers or on timing (failures are listed in source order).
    """

    def __init__(self, report: JobReport, jcfg: JobConfig, bar, ledger: Ledger | None = None):
        self.report, self.jcfg, self.bar, self.ledger = report, jcfg, bar, ledger
        self.claimed: dict[Path, Path] = {}  # outputs of the current folder -> their source
        self.workers = jcfg.n_workers
        self.pool = ThreadPoolExecutor(max(IO_THREADS_MIN, self.workers), thread_name_prefix="aekit-io")
        self.compute = ThreadPoolExecutor(self.workers, thread_name_prefix="aekit-model") if self.workers > 1 else None
        self.computes: deque[tuple[list[Item], Future]] = deque()  # batches in the compute threads, oldest first
        self.writes: deque[tuple[Item, Future, int]] = deque()
        self.buckets: dict[tuple, list[Item]] = {}
        self.held = 0  # bytes of decoded files waiting in buckets
        self.loaded = 0  # bytes of loaded files not yet routed (read-ahead)
        self._loaded_lock = threading.Lock()
        self._collect = threading.local()  # a compute thread's writes, replayed by the main thread
        self._failed_seq: list[int] = []  # source order of report.failed lines
        self._intents: list[Path] = []  # outputs set out to be written, not yet in the ledger (see Ledger.intend)

    def fail(self, item: Item, exc: Exception) -> None:
        """Record one failed file as one line naming it (unexpected error types are named too)."""
        err = wrap_errors(item.src, exc)
        name = display(item.src)
        line = str(err) if (str(item.src) in str(err) or name in str(err)) else f"{name}: {err}"
        if type(err).__name__ not in ("CodecError", "ImageError", "LatentFormatError", "ValueError"):
            line += f" ({type(err).__name__})"
        self.report.failed.append(line)
        self._failed_seq.append(item.seq)
        log.error("failed: %s", line)
        self.bar.update(1)

    def write(self, item: Item, make_bytes: Callable[[], bytes], pixel_bytes: int) -> None:
        self._submit_write(item, make_bytes, None, pixel_bytes)

    def _submit_write(self, item: Item, make_bytes: Callable[[], bytes] | None, part: tuple[Path, int] | None,
                      pixel_bytes: int) -> None:
        collected = getattr(self._collect, "writes", None)
        if collected is not None:  # in a compute thread: the main thread submits it, in order
            collected.append((item, make_bytes, part, pixel_bytes))
            return
        if self.ledger and self._intents:  # one append for every output claimed since the last write
            self.ledger.intend(self._intents)
            self._intents = []
        self.writes.append((item, self.pool.submit(self._write_job(item, make_bytes, part)), pixel_bytes))
        while len(self.writes) > self.jcfg.window:
            self.finish_write()

    def _write_job(self, item: Item, make_bytes: Callable[[], bytes] | None,
                   part: tuple[Path, int] | None = None) -> Callable[[], int]:
        def job() -> int:
            if part is None:
                data = make_bytes()
                atomic_write_bytes(item.dst, data)
                n = len(data)
            else:  # written already (streamed by the compute thread): commit it in order
                tmp, n = part
                try:
                    commit_part(tmp, item.dst)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
            if self.ledger:
                self.ledger.add(item)
            return n

        return job

    def write_stream(self, item: Item, fill: Callable[[BinaryIO], int], pixel_bytes: int) -> None:
        """Like write, for an output produced while it is written (a large image, band by band): fill(file)
        -> bytes written runs here, in the calling (compute) thread, into a temp file beside item.dst, so
        --workers and the memory gate bound it as any decode; the I/O pool then only renames it into place,
        in order. A failure removes the temp file and raises (the item fails)."""
        tmp = new_part(item.dst)
        try:
            with open(tmp, "wb") as f:
                n = fill(f)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._submit_write(item, None, (tmp, n), pixel_bytes)

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

    def add(self, key: tuple, item: Item, nbytes: int, batch: int, flush: Callable[[list[Item]], None]) -> None:
        """Put a loaded file in its bucket (nbytes: what it holds until written); full buckets are flushed."""
        item.held = nbytes
        self.buckets.setdefault(key, []).append(item)
        self.held += nbytes
        if len(self.buckets[key]) >= batch:
            self.flush(key, flush)
        while self.held > self.jcfg.held_bytes and self.buckets:
            self.flush(max(self.buckets, key=lambda k: len(self.buckets[k])), flush)

    def flush(self, key: tuple, flush: Callable[[list[Item]], None]) -> None:
        items = self.buckets.pop(key)
        self.held -= sum(i.held for i in items)
        self.submit(items, flush)

    def submit(self, items: list[Item], flush: Callable[[list[Item]], None]) -> None:
        """Run flush(items) (a model call and its writes): here with one worker, else in a compute thread."""
        if self.compute is None:
            try:
                flush(items)
            except Exception as e:  # a failing batch fails its files, the job goes on
                for it in items:
                    self.fail(it, e)
            return

        def job() -> list:
            self._collect.writes = []
            try:
                flush(items)
            except BaseException as e:  # (an interrupt too: re-raised in the main thread)
                return [*self._collect.writes, e]  # what it wrote before failing, then the error
            finally:
                writes, self._collect.writes = self._collect.writes, None
            return writes

        self.computes.append((items, self.compute.submit(job)))
        while len(self.computes) > self.workers:
            self.finish_compute()

    def finish_compute(self) -> None:
        """Replay the oldest batch's writes in order; fail its unwritten files if it raised."""
        items, fut = self.computes.popleft()
        done = fut.result()
        err = done.pop() if done and isinstance(done[-1], BaseException) else None
        for it, make_bytes, part, pixel_bytes in done:
            self._submit_write(it, make_bytes, part, pixel_bytes)
        if err is not None and not isinstance(err, Exception):
            raise err  # an interrupt: the job stops here
        if err is not None:
            written = {id(w[0]) for w in done}
            for it in items:
                if id(it) not in written:
                    self.fail(it, err)

    def _land_finished_computes(self) -> None:
        """On an interrupt: the writes of batches that finished anyway still land (atomically)."""
        self.compute.shutdown(wait=True, cancel_futures=True)
        for _, fut in self.computes:
            if fut.cancelled() or fut.exception() is not None:
                continue
            for w in fut.result():
                if not isinstance(w, BaseException):
                    it, make_bytes, part, pixel_bytes = w
                    self.writes.append((it, self.pool.submit(self._write_job(it, make_bytes, part)), pixel_bytes))
        self.computes.clear()

    def run(self, items: Iterator[Item], load: Callable[[Item], object], route: Callable[[Item], None],
            flush: Callable[[list[Item]], None]) -> None:
        loads: deque[tuple[Item, Future]] = deque()
        try:
            for seq, item in enumerate(items):
                item.seq = seq
                if not self._claim(item):
                    continue
                fresh = self.ledger.fresh(item) if self.ledger else True  # also stamps the source
                if item.dst.exists():
                    if _same_file(item.dst, item.src):  # even with --overwrite: sources are never touched
                        self.fail(item, ValueError(f"{display(item.src)}: its output {display(item.dst)} is the "
                                                   "source itself; choose another -o"))
                        continue
                    if fresh and not self.jcfg.overwrite:
                        self.report.skipped += 1
                        self.bar.update(1)
                        continue
                    if not self.jcfg.overwrite and self.ledger and not self.ledger.known(item.dst):
                        self.fail(item, ValueError(
                            f"{display(item.src)}: its output {display(item.dst)} exists and was not written by "
                            f"an aekit job here (no record in {LEDGER}): not replaced; --overwrite replaces it"))
                        continue
                    self.report.stale += not self.jcfg.overwrite
                self._intents.append(item.dst)
                loads.append((item, self._load(load, item)))
                # read-ahead bounded by files and by the bytes of what has been loaded
                while len(loads) > self.jcfg.window or (loads and self.loaded > self.jcfg.held_bytes):
                    self._route(*loads.popleft(), route)
            while loads:
                self._route(*loads.popleft(), route)
            for key in list(self.buckets):
                self.flush(key, flush)
            while self.computes:
                self.finish_compute()
            while self.writes:
                self.finish_write()
        finally:  # on interrupt: drop pending reads, but let computed outputs land (atomically)
            for _, fut in loads:
                fut.cancel()
            if self.compute is not None:
                self._land_finished_computes()
            wait([fut for _, fut, _ in self.writes])
            self.pool.shutdown(wait=True, cancel_futures=True)
            order = sorted(range(len(self.report.failed)), key=lambda i: self._failed_seq[i])
            self.report.failed[:] = [self.report.failed[i] for i in order]
            if self.ledger:
                self.ledger.compact()

    def _load(self, load: Callable[[Item], object], item: Item) -> Future:
        """Submit load(item) into item.data; its bytes count as read-ahead until routed. The future holds
        no data: a caller's reference to it (an argument tuple) must not keep a large image alive."""
        def job() -> None:
            data = load(item)
            item.loaded = _nbytes(data)
            with self._loaded_lock:
                self.loaded += item.loaded
            item.data = data

        return self.pool.submit(job)

    def _claim(self, item: Item) -> bool:
        """False (and one failure line) when an earlier source of this run maps to the same output.

        Checked before resume, so the clash is reported on every run, not only the first.
        Sources are walked folder by folder, so only the current folder's outputs are kept.
        """
        if self.claimed and next(iter(self.claimed)).parent != item.dst.parent:
            self.claimed.clear()
        first = self.claimed.setdefault(item.dst, item.src)
        if first == item.src:
            return True
        self.fail(item, ValueError(f"{display(item.src)}: its output {display(item.dst.name)} is already the output "
                                   f"of {display(first.name)}; rename one (or use --format same)"))
        return False

    def _route(self, item: Item, fut: Future, route: Callable[[Item], None]) -> None:
        try:
            fut.result()  # raises what load raised; the data is in item.data (only there, so a flush can release it)
            route(item)
        except Exception as e:
            self.fail(item, e)
        finally:
            with self._loaded_lock:
                self.loaded -= item.loaded
                item.loaded = 0


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# Public names of the folder-job machinery, for jobs built on it elsewhere (aekit.codec.denoise).
Pipeline = _Pipeline
progress = _progress


def _nbytes(data: object) -> int:
    """Bytes a loaded file holds: its pixels (compress) or its symbols (decompress)."""
    parts = data if isinstance(data, tuple) else (data,)
    return sum(int(x.nbytes) for x in parts if isinstance(x, (np.ndarray, LazyPixels)))


def compress_tree(src: str | Path, dst: str | Path, codec: Codec, jcfg: JobConfig | None = None) -> JobReport:
    """Compress an image file or folder tree into mirrored .ael files (dst/rel + '.ael')."""
    jcfg, report, t0 = jcfg or JobConfig(), JobReport("compressed"), time.monotonic()
    total, items = plan(Path(src), Path(dst), is_image_name, lambda rel: rel.with_name(rel.name + SUFFIX), report)
    if Path(src).is_file() and is_image_name(Path(dst)) and not Path(dst).is_dir():
        log.warning("warning: %s: a latent file (.ael) is written under an image's name", display(dst))
    ledger = start_job(Path(src), Path(dst), recipe("compress", codec, **({"smallest": True} if codec.cfg.smallest else {}),
                                                    **({"int8": True} if codec.rt.encoder_file != codec.rt.manifest["files"]["encoder"] else {})))

    def route(item: Item) -> None:
        # (H, W, C) uint8 pixels: no local name for them, since with one worker flush runs inside this call
        shape, nbytes = item.data[0].shape, item.data[0].nbytes
        if codec.tiled(*shape[:2]):
            p.submit([item], flush)  # a large image is its own batch (tiled, bounded memory)
        else:
            p.add(("img",) + shape, item, nbytes, codec.batch_limit(*shape[:2]), flush)

    def flush(items: list[Item]) -> None:
        images = np.stack([it.data[0] for it in items]) if len(items) > 1 else [items[0].data[0]]  # (B, H, W, C)
        h, w = images[0].shape[:2]
        modes = [it.data[1] for it in items]
        q = codec.symbols(images, packed=True)  # a tiled image's: compressed while its pixels are alive
        # kept for the post-filter's fit: the pixels, or windows of a large image's (Codec.fit_input)
        pixels = [codec.fit_input(images[i]) for i in range(len(items))]
        del images
        for it in items:
            it.data = None  # the pixels go before the entropy coder runs (a 178 Mpx photo's are 534 MB)
        for i, (it, qi, mode) in enumerate(zip(items, q, modes)):
            p.write(it, lambda d=codec.pack(np.asarray(qi), h, w, mode, pixels[i]): d, h * w * (1 if mode == "L" else 3))
            pixels[i] = None

    with _progress(total, jcfg.progress, "img") as bar:
        p = _Pipeline(report, jcfg, bar, ledger)
        p.run(items, lambda it: codec.load(it.src, lazy=True), route, flush)
    report.seconds = time.monotonic() - t0
    return report


def recipe(job: str, codec: Codec | None = None, **settings) -> dict:
    """What, besides the source, decides an output's bytes: a changed recipe makes it stale."""
    # format 2: version 3 only adds a coder that models with a new id use, so a version-2 output
    # stays current (the model id below decides)
    r: dict = {"job": job, "format": 2, **settings}
    if codec is not None:
        r.update(model=codec.model_id, levels=codec.levels)
        if codec.rd:  # the quality step decides the symbols (resolved: the model's default when not chosen)
            r["quality"] = codec.quality
            if codec.rdoq != RDOQ_T:  # other rounding, other symbols; the default keeps older outputs current
                r["rdoq"] = codec.rdoq
    return r


def decompress_tree(src: str | Path, dst: str | Path, decoder: Decoder, jcfg: JobConfig | None = None) -> JobReport:
    """Decompress a .ael file or folder tree into mirrored images (PNG unless out_format='same')."""
    jcfg, report, t0 = jcfg or JobConfig(), JobReport("decompressed"), time.monotonic()
    total, items = plan(Path(src), Path(dst), is_latent_name, lambda rel: decoded_name(rel, jcfg.out_format), report)
    ledger = start_job(Path(src), Path(dst), recipe("decompress", out_format=jcfg.out_format,
                                                    **({"smallest": True} if jcfg.smallest else {}),
                                                    **({"int8": True} if decoder.cfg.int8 else {})))
    png_level = PNG_LEVEL_SMALLEST if jcfg.smallest else PNG_LEVEL_FAST

    def load(item: Item) -> tuple[LatentHeader, np.ndarray]:
        return decoder.symbols(item.src.read_bytes(), str(item.src))

    def route(item: Item) -> None:
        h, _ = item.data
        key = (h.model_id, h.height, h.width, h.mode)
        if decoder.tiled(h):
            p.submit([item], flush)  # decoded tile by tile, alone
        else:  # held until written: the decoded pixels
            p.add(key, item, h.height * h.width * 3, decoder.batch_limit(h), flush)

    def flush(items: list[Item]) -> None:
        h = items[0].data[0]
        if len(items) == 1 and decoder.tiled(h) and is_png_name(items[0].dst):  # large: streamed, band by band
            it, q = items[0], items[0].data[1]
            it.data = None
            c = 1 if h.mode == "L" else decoder.runtime(h.model_id).channels
            p.write_stream(it, lambda f: stream_png(decoder, h, q, f, png_level), h.height * h.width * c)
            return
        out = decoder.reconstruct(h, np.stack([it.data[1] for it in items]), [it.data[0] for it in items])  # (B, H, W, C)
        for it, img in zip(items, out):
            it.data = None
            p.write(it, lambda a=img, d=it.dst: encode_image_file(a, d, png_level), img.size)

    with _progress(total, jcfg.progress, "file") as bar:
        p = _Pipeline(report, jcfg, bar, ledger)
        p.run(items, load, route, flush)
    report.seconds = time.monotonic() - t0
    return report
