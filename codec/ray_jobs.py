"""Compress and decompress folder trees on a Ray cluster (`--engine ray`), with the local engine's rules.

    aekit compress SRC -m MODEL -o DST --engine ray [--address auto] [--actors N]
The pipeline is aekit.export.engine_ray's; this module supplies the per-file steps, built on
aekit.codec.core.Codec / Decoder, so the files are byte-identical to the local engine's (tested).
Resume uses the local engine's ledger (aekit.codec.jobs.Ledger, one file in the output folder), so
either engine redoes exactly the outputs the other would: changed sources, other model or settings.
"""

from __future__ import annotations

import datetime
import json
import logging
import posixpath
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aekit.images import NamedBytes, display, is_image_name, remove_stale_parts
from aekit.codec.core import Codec, CodecConfig, Decoder, default_model_paths, load_for_model, wrap_errors
from aekit.codec.format import SUFFIX
from aekit.codec.jobs import LEDGER, Item, JobReport, Ledger, decoded_name, encode_image_file, recipe
from aekit.export.engine_ray import RayConfig, list_tree, output_root, run_files, write_bytes
from aekit.export.manifest import load_manifest

log = logging.getLogger(__name__)


def fail_line(name: str, exc: BaseException) -> str:
    """One line naming the file, worded as the local engine words it."""
    err = wrap_errors(name, exc) if isinstance(exc, Exception) else exc
    line = str(err) if name in str(err) else f"{name}: {err}"
    if type(err).__name__ not in ("CodecError", "ImageError", "LatentFormatError", "ValueError"):
        line += f" ({type(err).__name__})"
    return line


def groups(items: list[tuple[str, str, Any]], key, batch: int) -> list[list[int]]:
    """Indices of items batched by key (equal image sizes share one ONNX call), at most batch each."""
    by: dict[Any, list[int]] = {}
    for i, it in enumerate(items):
        by.setdefault(key(it), []).append(i)
    return [idx[j : j + batch] for idx in by.values() for j in range(0, len(idx), batch)]


# Listing fields that identify a version of an object, most precise first (fsspec backends differ).
VERSION_KEYS = ("mtime", "LastModified", "last_modified", "updated", "created", "ETag", "etag", "md5Hash",
                "generation")


def source_version(info: dict) -> int | str | None:
    """A listing entry's modification time in ns (to the microsecond), else its ETag/hash; None if neither."""
    for k in VERSION_KEYS:
        v = info.get(k)
        if v is None:
            continue
        if isinstance(v, datetime.datetime):
            v = v.timestamp()
        if isinstance(v, (int, float)):
            return round(v * 1e6) * 1000
        return str(v)
    return None


class RayLedger(Ledger):
    """aekit.codec.jobs.Ledger for the Ray engine, whose sources and outputs may be fsspec URLs.

    The same file (LEDGER in the output folder), records and fresh() test as the local engine, so
    a folder either engine wrote resumes under the other with the same decisions. Local sources
    are stamped by os.stat, as locally; others by their listing's size and modification time (or
    ETag). Local outputs append a line as each lands; other filesystems cannot append, so there
    the ledger is rewritten every FLUSH_EVERY outputs and at the end (a killed run redoes the rest).
    """

    FLUSH_EVERY = 256

    def __init__(self, src: str, dst: str, recipe: dict):
        from fsspec.implementations.local import LocalFileSystem

        from aekit.export.engine_ray import filesystem

        self.fs_in = filesystem(src)[0]
        self.fs_out, root = output_root(src, dst)
        self.local_in, self.local_out = (isinstance(fs, LocalFileSystem) for fs in (self.fs_in, self.fs_out))
        self.listed: dict[str, dict] = {}  # source path -> its listing entry (until stamped)
        self.pending: dict[str, Item] = {}  # output path -> its stamped item, until the output lands
        self.unsaved = 0
        if self.local_out:
            _remove_parts(Path(root))
            super().__init__(Path(root), recipe)
            return
        self.root, self.recipe, self.path = root, recipe, posixpath.join(root, LEDGER)
        self.lock, self.records, self.intents = threading.Lock(), {}, set()
        try:
            text = self.fs_out.cat_file(self.path).decode("utf-8")
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as e:
            log.warning("%s: unreadable (%s); existing outputs are not replaced without --overwrite",
                        self.path, e)
            text = ""
        for line in text.splitlines():
            try:
                rec = json.loads(line)
                if rec.get("intent"):
                    self.intents.add(rec["out"])
                else:
                    self.records[rec["out"]] = rec
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a torn or foreign line: that output is redone

    def is_fresh(self, src: str, out: str, info: dict) -> bool:
        """engine_ray.list_tree's fresh(): is out made from this source with this recipe? Stamps src."""
        item = Item(Path(src), Path(out))
        self.listed[str(item.src)] = info
        fresh = self.fresh(item)
        self.pending[out] = item
        return fresh

    def known_out(self, out: str) -> bool:
        """engine_ray.list_tree's known(): does the ledger have a record (or intent) for this output path?"""
        return self.known(Path(out))

    def intend(self, dsts: list[Path]) -> None:
        """Ledger.intend: every output of the listing, once, before the workers write any (their records
        come back to the driver later, so a killed run can leave many outputs with no record)."""
        if self.local_out:
            return super().intend(dsts)
        with self.lock:
            self.intents.update(self.key(d) for d in dsts)
        self._save()

    def done(self, out: str) -> None:
        """out was written: record what made it."""
        item = self.pending.pop(out, None)
        if item is not None:
            self.add(item)

    def stamp(self, src: Path) -> dict:
        info = self.listed.pop(str(src), {})
        if self.local_in:
            return Ledger.stamp(src)
        return {"src": self.fs_in.unstrip_protocol(str(src)), "size": info.get("size"),
                "mtime_ns": source_version(info)}

    def key(self, dst: Path) -> str:
        return super().key(dst) if self.local_out else posixpath.relpath(str(dst), self.root)

    def add(self, item: Item) -> None:
        if self.local_out:
            return super().add(item)
        if item.stamp is None:
            return
        with self.lock:
            self.records[self.key(item.dst)] = {"out": self.key(item.dst), **item.stamp, "recipe": self.recipe}
            self.unsaved += 1
        if self.unsaved >= self.FLUSH_EVERY:
            self._save()

    def compact(self) -> None:
        if self.local_out:
            return super().compact()
        self._save(keep=set(self.fs_out.find(self.root)) if self.fs_out.exists(self.root) else set())

    def _save(self, keep: set[str] | None = None) -> None:
        """Rewrite the whole ledger (keep: only records whose output is in this listing)."""
        with self.lock:
            recs = [r for k, r in sorted(self.records.items())
                    if keep is None or posixpath.join(self.root, k) in keep]
            recs += [{"intent": True, "out": k} for k in sorted(self.intents - self.records.keys())
                     if keep is None or posixpath.join(self.root, k) in keep]
            self.unsaved = 0
        if not recs and not self.fs_out.exists(self.path):
            return
        try:
            write_bytes(self.fs_out, self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in recs).encode())
        except OSError as e:
            log.warning("%s: not saved (%s)", self.path, e)


def _remove_parts(root: Path) -> None:
    """Temp files a killed run left in a local output tree (as aekit.codec.jobs.start_job does)."""
    if root.is_dir():
        gone = remove_stale_parts(root)
        if gone:
            log.info("removed %d temp file(s) left by an interrupted run, e.g. %s", len(gone), display(gone[0]))


@dataclass
class CompressJob:
    """Images -> .ael bytes: decode in CPU tasks, encode + entropy-code in the model actors."""

    model: str  # exported model folder (an absolute path every worker can read)
    cfg: CodecConfig  # the local engine's codec settings
    _channels: int = field(default=0, repr=False)  # from the manifest, read once per process

    def setup(self) -> None:
        self._codec = Codec(self.model, self.cfg)

    def decode(self, name: str, data: bytes) -> tuple[np.ndarray, str]:
        if not self._channels:
            self._channels = load_manifest(self.model)["channels"]
        return load_for_model(NamedBytes(data, name), self._channels, self.cfg.max_pixels)  # (H, W, C), mode

    def run(self, items: list[tuple[str, str, Any]]) -> list[tuple[bytes, dict, str]]:
        codec, out = self._codec, [None] * len(items)
        tiled = lambda it: codec.tiled(*it[2][0].shape[:2])  # noqa: E731 - large images go alone
        for idx in groups(items, lambda it: (it[2][0].shape, id(it) if tiled(it) else 0), self.cfg.batch_size):
            try:
                files = codec.compress_batch(np.stack([items[i][2][0] for i in idx]), [items[i][2][1] for i in idx])
                for i, data in zip(idx, files):
                    arr, mode = items[i][2]
                    out[i] = (data, {"pixel_bytes": arr.shape[0] * arr.shape[1] * (1 if mode == "L" else 3)}, "")
            except Exception as e:  # noqa: BLE001 - a failing batch fails its files
                for i in idx:
                    out[i] = (b"", {}, fail_line(items[i][0], e))
        return out

    def error(self, name: str, exc: BaseException) -> str:
        return fail_line(name, exc)


@dataclass
class DecompressJob:
    """.ael bytes -> image files: entropy-decode in CPU tasks, decode + image-encode in the actors."""

    models: list[str]  # model folders or folders of them (absolute paths every worker can read)
    cfg: CodecConfig

    def _decoder(self) -> Decoder:
        if getattr(self, "_dec", None) is None:
            self._dec = Decoder(self.models, self.cfg)
        return self._dec

    def setup(self) -> None:
        self._decoder()

    def decode(self, name: str, data: bytes) -> tuple[Any, np.ndarray]:
        return self._decoder().symbols(data, name)  # (header, symbols (c_y, h, w))

    def run(self, items: list[tuple[str, str, Any]]) -> list[tuple[bytes, dict, str]]:
        dec, out = self._decoder(), [None] * len(items)

        def key(it):
            h = it[2][0]
            return (h.model_id, h.height, h.width, h.mode, id(it) if h.height * h.width > self.cfg.full_res_max_pixels else 0)

        for idx in groups(items, key, self.cfg.batch_size):
            try:
                images = dec.reconstruct(items[idx[0]][2][0], np.stack([items[i][2][1] for i in idx]),
                                         [items[i][2][0] for i in idx])
                for i, img in zip(idx, images):
                    out[i] = (encode_image_file(img, Path(items[i][1])), {"pixel_bytes": int(img.size)}, "")
            except Exception as e:  # noqa: BLE001
                for i in idx:
                    out[i] = (b"", {}, fail_line(items[i][0], e))
        return out

    def error(self, name: str, exc: BaseException) -> str:
        return fail_line(name, exc)


def _local_abs(p: str | Path) -> str:
    """Local paths made absolute (Ray workers may run elsewhere in the tree); URLs unchanged."""
    return str(Path(p).resolve()) if "://" not in str(p) else str(p)


def _report(verb: str, job: Any, listing, rcfg: RayConfig, ledger: RayLedger | None = None) -> JobReport:
    report, t0 = JobReport(verb), time.monotonic()
    report.skipped, report.stale, report.ignored = listing.skipped, listing.stale, listing.ignored
    if ledger is not None and listing.todo:
        ledger.intend([Path(out) for _, _, out in listing.todo])
    for line in listing.failed:
        report.failed.append(line)
        log.error("failed: %s", line)
    try:
        for row in run_files(job, listing, rcfg):
            if row["error"]:
                report.failed.append(row["error"])
                log.error("failed: %s", row["error"])
                continue
            report.ok += 1
            report.bytes_in += row["bytes_in"]
            report.bytes_out += row["bytes_out"]
            report.pixel_bytes += row["meta"].get("pixel_bytes", 0)
            if ledger is not None:
                ledger.done(row["dst"])
    finally:  # as locally: what landed is recorded, the ledger compacted even after an interrupt
        if ledger is not None:
            ledger.compact()
    report.seconds = time.monotonic() - t0
    return report


def compress_tree_ray(src: str, dst: str, model: str | Path, cfg: CodecConfig | None = None,
                      rcfg: RayConfig | None = None) -> JobReport:
    """compress_tree on Ray: SRC and DST may be local paths or fsspec URLs (s3://, gs://, ...)."""
    cfg, rcfg = cfg or CodecConfig(), rcfg or RayConfig()
    job = CompressJob(_local_abs(model), cfg)
    codec = Codec(job.model, cfg)  # a bad model or --levels fails here, once, before any file is read
    ledger = RayLedger(str(src), str(dst), recipe("compress", codec))
    listing = list_tree(str(src), str(dst), lambda rel: is_image_name(Path(rel)), lambda rel: rel + SUFFIX,
                        rcfg.overwrite, fresh=ledger.is_fresh, known=ledger.known_out)
    return _report("compressed", job, listing, rcfg, ledger)


def decompress_tree_ray(src: str, dst: str, models: list[str | Path] | None = None, cfg: CodecConfig | None = None,
                        rcfg: RayConfig | None = None, out_format: str = "png") -> JobReport:
    """decompress_tree on Ray: each file's model is found by its id in models (default: $AEKIT_MODELS, ./models)."""
    cfg, rcfg = cfg or CodecConfig(), rcfg or RayConfig()
    job = DecompressJob([_local_abs(m) for m in (models or default_model_paths())], cfg)
    ledger = RayLedger(str(src), str(dst), recipe("decompress", out_format=out_format))
    listing = list_tree(str(src), str(dst), lambda rel: rel.endswith(SUFFIX),
                        lambda rel: str(decoded_name(Path(rel), out_format)), rcfg.overwrite,
                        clash_hint="use --format same", fresh=ledger.is_fresh, known=ledger.known_out)
    return _report("decompressed", job, listing, rcfg, ledger)
