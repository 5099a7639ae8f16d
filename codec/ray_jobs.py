"""Compress and decompress folder trees on a Ray cluster (`--engine ray`), with the local engine's rules.

    aekit compress SRC -m MODEL -o DST --engine ray [--address auto] [--actors N]
The pipeline is aekit.export.engine_ray's; this module supplies the per-file steps, built on
aekit.codec.core.Codec / Decoder, so the files are byte-identical to the local engine's (tested).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aekit.images import NamedBytes, is_image_name
from aekit.codec.core import Codec, CodecConfig, Decoder, default_model_paths, load_for_model, wrap_errors
from aekit.codec.format import SUFFIX
from aekit.codec.jobs import JobReport, decoded_name, encode_image_file
from aekit.export.engine_ray import RayConfig, list_tree, run_files
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
                images = dec.reconstruct(items[idx[0]][2][0], np.stack([items[i][2][1] for i in idx]))
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


def _report(verb: str, job: Any, listing, rcfg: RayConfig, progress: bool | None) -> JobReport:
    report, t0 = JobReport(verb), time.monotonic()
    report.skipped, report.ignored = listing.skipped, listing.ignored
    for line in listing.failed:
        report.failed.append(line)
        log.error("failed: %s", line)
    for row in run_files(job, listing, rcfg):
        if row["error"]:
            report.failed.append(row["error"])
            log.error("failed: %s", row["error"])
            continue
        report.ok += 1
        report.bytes_in += row["bytes_in"]
        report.bytes_out += row["bytes_out"]
        report.pixel_bytes += row["meta"].get("pixel_bytes", 0)
    report.seconds = time.monotonic() - t0
    return report


def compress_tree_ray(src: str, dst: str, model: str | Path, cfg: CodecConfig | None = None,
                      rcfg: RayConfig | None = None) -> JobReport:
    """compress_tree on Ray: SRC and DST may be local paths or fsspec URLs (s3://, gs://, ...)."""
    cfg, rcfg = cfg or CodecConfig(), rcfg or RayConfig()
    job = CompressJob(_local_abs(model), cfg)
    Codec(job.model, cfg)  # a bad model or --levels fails here, once, before any file is read
    listing = list_tree(str(src), str(dst), lambda rel: is_image_name(Path(rel)), lambda rel: rel + SUFFIX,
                        rcfg.overwrite)
    return _report("compressed", job, listing, rcfg, rcfg.progress)


def decompress_tree_ray(src: str, dst: str, models: list[str | Path] | None = None, cfg: CodecConfig | None = None,
                        rcfg: RayConfig | None = None, out_format: str = "png") -> JobReport:
    """decompress_tree on Ray: each file's model is found by its id in models (default: $AEKIT_MODELS, ./models)."""
    cfg, rcfg = cfg or CodecConfig(), rcfg or RayConfig()
    job = DecompressJob([_local_abs(m) for m in (models or default_model_paths())], cfg)
    listing = list_tree(str(src), str(dst), lambda rel: rel.endswith(SUFFIX),
                        lambda rel: str(decoded_name(Path(rel), out_format)), rcfg.overwrite,
                        clash_hint="use --format same")
    return _report("decompressed", job, listing, rcfg, rcfg.progress)
