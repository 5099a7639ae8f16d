"""Screen folders for anomalies on a Ray cluster (`aekit screen ... --engine ray`), as the local engine does.

    aekit screen models/det s3://bucket/incoming --out results/screen --engine ray --address auto
The pipeline is aekit.export.engine_ray's: images are decoded in CPU tasks and scored by
aekit.detector.model.Detector in the model actors; the driver turns scores into the same records,
summary and exit code as aekit.detector.jobs.screen_folder (identical scores, tested). A rerun after
a killed screen reuses the still-valid records of its temp file exactly as the local engine does.
"""

from __future__ import annotations

import functools
import json
import math
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aekit.images import EmptySourceError, ImageError, NamedBytes, Sample, atomic_write_bytes, check_output_folder, is_image_name
from aekit.detector.calibration import CalibrationError
from aekit.detector.heatmap import map_files, write_heatmap, write_map_files
from aekit.detector.jobs import (ClassSummary, ScreenConfig, RecordWriter, ScreenReport, _calibrated, _factor, _note_shape,
                           _reuse, empty_screen, load_for_model, screen_sources)
from aekit.detector.model import Detector
from aekit.export.engine_ray import Listing, RayConfig, filesystem, list_tree, run_files


@dataclass
class ScreenJob:
    """Image bytes -> score. The listing's output column carries each file's class (screen writes
    no per-file outputs; records are written by the driver)."""

    model: str  # model folder or detector directory (an absolute path every worker can read)
    cfg: ScreenConfig  # device, batch size, onnxruntime threads
    channels: int  # image channels the model takes
    factor: int  # down-sampling factor (smallest usable image)
    maps: bool = False  # also render each image's anomaly map (meta "map_files": PNG panel and .npy bytes)

    def setup(self) -> None:
        self._det = Detector(self.model, device=self.cfg.device, batch_size=self.cfg.batch_size,
                             threads=self.cfg.threads)
        self._det.routes  # loads the calibrations: scores use the calibrated function and settings

    def decode(self, name: str, data: bytes) -> np.ndarray:
        return load_for_model(NamedBytes(data, name), self.channels, self.factor)  # (H, W, C)

    def run(self, items: list[tuple[str, str, Any]]) -> list[tuple[bytes, dict, str]]:
        images, classes = [it[2] for it in items], [it[1] for it in items]
        scores, maps = self._det.score_maps(images, classes, maps=self.maps)
        out = []
        for k, (s, im, c) in enumerate(zip(scores, images, classes)):
            meta = {"score": float(s), "height": im.shape[0], "width": im.shape[1],
                    "model_id": self._det.runtime(self._det.model_for(c)).model_id}
            if self.maps:  # rendered here, written by the driver (the output folder is the driver's)
                meta["map_files"] = map_files(im, maps[k], self._det.class_calibration(c).map_scale)
            out.append((b"", meta, ""))
        return out

    def error(self, name: str, exc: BaseException) -> str:
        return str(exc) if name in str(exc) else f"{name}: {exc}"


def _labelled_url(src: str, cls: str | None) -> tuple[list[Sample], list[str | None], list[str]]:
    """labelled() for an fsspec URL: class subfolders (first path component) or a flat folder."""
    listing = list_tree(src, None, lambda rel: is_image_name(Path(rel)), lambda rel: rel)
    if not listing.todo:
        raise EmptySourceError(f"{src}: no image files found ({listing.ignored} other "
                               f"file{'' if listing.ignored == 1 else 's'} ignored)")
    rels = [posixpath.relpath(path, filesystem(src)[1]) for _, path, _ in listing.todo]
    nested = any("/" in r for r in rels)
    if nested and not all("/" in r for r in rels):
        raise ImageError(f"{src}: mixes images at the top level with class subfolders")
    samples = [Sample(name, r.split("/")[0] if nested else "", Path(r)) for (name, _, _), r in zip(listing.todo, rels)]
    return samples, [cls or s.label or None for s in samples], []


def screen_folder_ray(model: str | Path, src: str, out: str | Path, cls: str | None = None,
                      alpha: float | None = None, heatmaps: str | Path | None = None,
                      cfg: ScreenConfig | None = None, rcfg: RayConfig | None = None,
                      maps: str | Path | None = None) -> ScreenReport:
    """screen_folder on Ray: SRC may be a local folder or an fsspec URL; records (and --maps files, rendered
    in the actors) are written locally."""
    cfg, rcfg = cfg or ScreenConfig(), rcfg or RayConfig()
    for what, folder in (("--out", Path(out).parent), ("--maps", maps), ("--heatmaps", heatmaps)):
        if folder is not None:
            check_output_folder(Path(folder), what)
    model = str(Path(model).resolve())
    det = Detector(model, alpha=alpha, device=cfg.device, batch_size=cfg.batch_size, threads=cfg.threads)
    if not det.classes_:
        raise CalibrationError(f"{model}: not calibrated; run `aekit calibrate {model} NORMAL_DIR` first")
    if cls:
        det.class_calibration(cls)  # an explicit unknown/uncalibrated class is a usage error
    url = "://" in str(src)
    try:
        samples, labels, report = screen_sources(
            src, cls, det.alpha_, functools.partial(_labelled_url, str(src), cls) if url else None)
    except EmptySourceError as e:
        return empty_screen(det.alpha_, e)
    labels = [c or det.default_class() for c in labels]
    writer = RecordWriter(out)
    try:
        usable = _calibrated(det, samples, labels, report, writer)
        reused = _reuse(det, samples, labels, usable, report, writer, heatmaps, maps)  # a killed run's valid records
        usable = sorted(usable - reused)
        fs_in, _ = filesystem(str(src))
        paths = [str(samples[i].path) for i in usable]
        listing = Listing(fs_in, None, [(p, filesystem(p)[1] if url else p, labels[i]) for p, i in zip(paths, usable)])
        job = ScreenJob(model, cfg, det.channels, _factor(det), maps is not None)
        index = {p: i for p, i in zip(paths, usable)}
        flagged = []
        for row in run_files(job, listing, rcfg):
            i = index[row["name"]]
            if maps is not None and not row["error"]:
                write_map_files(Path(maps) / samples[i].rel.with_suffix(""), row["meta"]["map_files"])
            if _record(det, samples[i], labels[i], row, report, writer):
                flagged.append(i)
        report.outputs = writer.commit()
    except BaseException:
        writer.abort()
        raise
    if heatmaps is not None:
        _heatmaps(det, samples, labels, flagged, job, Path(heatmaps))
    summary = Path(f"{out}.summary.json")
    report.outputs.append(atomic_write_bytes(summary, (json.dumps(report.to_dict(), indent=1) + "\n").encode()))
    return report


def _record(det: Detector, sample: Sample, c: str, row: dict[str, Any], report: ScreenReport,
            writer: RecordWriter) -> bool:
    """One file's record and class statistics, as the local engine writes them; True if flagged."""
    s = report.per_class.setdefault(c, ClassSummary())
    if row["error"]:
        report.failed.append(row["error"])
        s.errors += 1
        writer.write({"path": str(sample.path), "class": c, "is_anomaly": None, "error": row["error"]})
        return False
    m, cc = row["meta"], det.class_calibration(c)
    _note_shape(report, c, cc.image_shape, (m["height"], m["width"]))
    score = m["score"]
    t, p = cc.threshold(det.alpha_), float(cc.p_values(np.array([score]))[0])
    flag = bool(score > t)
    s.add(score, flag, p)
    writer.write({"path": str(sample.path), "class": c, "score": score, "threshold": None if math.isinf(t) else t,
                  "p_value": p, "is_anomaly": flag, "error": None, "rel": str(sample.rel),
                  "height": m["height"], "width": m["width"], "model_id": m["model_id"]})
    return flag


def _heatmaps(det: Detector, samples: list[Sample], labels: list[str], flagged: list[int], job: ScreenJob,
              folder: Path) -> None:
    """Error-map overlays of the flagged images (a small fraction), drawn on the driver."""
    for i in flagged:
        c, s = labels[i], samples[i]
        fs, path = filesystem(str(s.path))
        im = job.decode(str(s.path), fs.cat_file(path))
        model_dir = det.model_for(c)
        recon = det.reconstruct(model_dir, im[None], det.settings(model_dir)[1])[0]
        _, maps = det.score_maps([im], [c])
        write_heatmap(folder / s.rel.with_suffix(".png"), im, recon, maps[0], det.class_calibration(c).map_scale)
