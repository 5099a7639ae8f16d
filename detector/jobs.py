"""Folder jobs: calibrate a model on folders of normal images; screen folders for anomalies.

    aekit calibrate models/bag data/bag_normal --alpha 0.01
    aekit screen models/bag incoming/ --out results/screen --heatmaps results/heatmaps
Images are decoded in chunks (bounded memory); a bad file is reported and skipped, and the
job goes on. Screening writes PREFIX.jsonl, PREFIX.csv and PREFIX.summary.json atomically
(streamed to '.PREFIX.jsonl.PID-XXXX.part' temp files, fsynced and renamed). A rerun after a killed
screen deletes the dead run's temp files and reuses its complete records that are still valid
(same file size and mtime, model, threshold, maps present); only the rest is scored again.
"""

from __future__ import annotations

import logging

import csv
import io
import json
import math
import os
import re
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from aekit.images import (FILE_MODE, EmptySourceError, ImageError, Sample, _fsync_dir, _pid_alive, atomic_write_bytes, check_output_folder,
                          load_for_channels, scan_folder, warn)
from aekit.detector.calibration import CalibrationError, too_small_message
from aekit.detector.heatmap import write_heatmap, write_map
from aekit.detector.model import ClassScores, Detector, DetectorError

log = logging.getLogger(__name__)

RECORD_FIELDS = ("path", "class", "score", "threshold", "p_value", "is_anomaly", "error")


@dataclass
class ScreenConfig:
    device: str = "auto"  # onnxruntime device: auto (CUDA when a GPU is visible) | cuda | cpu
    batch_size: int = 64  # images per onnxruntime call
    chunk: int = 512  # image files decoded per step (bounds memory on large folders)
    workers: int = 4  # threads decoding image files
    threads: int = 0  # onnxruntime intra-op threads (0: its default)


def min_side(factor: int) -> int:
    """Smallest usable image side: the latent must be at least 2 x 2 (and SSIM needs room)."""
    return max(2 * factor, 8)


def load_for_model(path: Path, channels: int, factor: int) -> np.ndarray:
    """Decode an image for a model by aekit's one channel rule (aekit.images.load_for_channels: gray
    through an RGB model is replicated, colour through a gray model refused); too small raises
    ImageError naming the file."""
    arr, _ = load_for_channels(path, channels)
    h, w = arr.shape[:2]
    if min(h, w) < min_side(factor):
        raise ImageError(f"{path}: {w}x{h} is too small (the model needs at least {min_side(factor)} pixels a side)")
    return arr


def labelled(src: str | Path, cls: str | None, report: Callable[[str], None] = warn,
             ) -> tuple[list[Sample], list[str | None], list[Path]]:
    """Samples under src and their classes: --class for all, else class subfolders, else None (flat).
    Unusable image entries (aekit.images.scan_folder) go to `report` (default: a warning line each)."""
    samples, classes, skipped = scan_folder(src, report)
    labels = [cls if cls else (s.label or None) for s in samples]
    return samples, labels, skipped


def screen_sources(src: str | Path, cls: str | None, alpha: float,
                   listing: Callable[[], tuple[list[Sample], list[str | None], list[Path]]] | None = None,
                   ) -> tuple[list[Sample], list[str | None], ScreenReport]:
    """What a screen job reads, and its report started: the samples and their classes, the non-image
    files as warnings, and each unusable image entry (a non-UTF-8 name, a dangling link, a FIFO) as a
    failure (exit 2), as compress counts them. A source with no image entry at all is not an error:
    EmptySourceError propagates for the caller to end the job with a warning (exit 0), as the codec's
    folder jobs do. `listing` replaces the local walk (Ray's fsspec URLs)."""
    unusable: list[str] = []
    samples, labels, skipped = listing() if listing else labelled(
        src, cls, lambda msg: unusable.append(msg.removeprefix("skipped ") + " (not screened)"))
    report = ScreenReport(alpha=alpha, warnings=[f"{p}: not an image file (skipped)" for p in skipped],
                          failed=unusable)
    return samples, labels, report


def empty_screen(alpha: float, e: EmptySourceError) -> ScreenReport:
    """The report of a screen whose source holds no image: one warning, no outputs written (exit 0)."""
    return ScreenReport(alpha=alpha, warnings=[f"{e}; nothing was screened"])


def load_chunks(samples: list[Sample], channels: int, factor: int, cfg: ScreenConfig
                ) -> Iterator[list[tuple[int, np.ndarray | None, str | None]]]:
    """Chunks of (index, image or None, error or None), decoded in threads, in sample order."""

    def one(i: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            return i, load_for_model(samples[i].path, channels, factor), None
        except ImageError as e:
            return i, None, str(e)

    with ThreadPoolExecutor(max(1, cfg.workers)) as pool:
        for start in range(0, len(samples), cfg.chunk):
            yield list(pool.map(one, range(start, min(len(samples), start + cfg.chunk))))


# ---- calibration -----------------------------------------------------------------------------
@dataclass
class CalibrateReport:
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> n, threshold, model
    failed: list[str] = field(default_factory=list)  # one message per unusable file or class
    too_small: list[str] = field(default_factory=list)  # warnings: too few images for alpha
    written: list[Path] = field(default_factory=list)  # manifests updated
    alpha: float = 0.0  # the alpha stored (given, or the default that fits the folder)
    score: str = ""  # the score spec calibrated


def calibrate_folder(model: str | Path, src: str | Path, cls: str | None = None, alpha: float | None = None,
                     score: str | None = None, latent: str = "quantised", cfg: ScreenConfig | None = None,
                     fit_fraction: float = 0.3, fit_dir: str | Path | None = None) -> CalibrateReport:
    """Score normal images per class, store conformal calibration in the model manifest(s).

    Scores with a feature bank or several parts first fit them on a seeded fit_fraction of each
    class (held in memory), or on all of fit_dir's images of the class (e.g. the training images:
    then every image of src calibrates); the other images are streamed and give the conformal
    scores. CalibrationError when a class has too few images for alpha (nothing is stored then)."""
    cfg = cfg or ScreenConfig()
    det = Detector(model, score=score, alpha=alpha, latent=latent, device=cfg.device,
                   batch_size=cfg.batch_size, threads=cfg.threads, fit_fraction=fit_fraction)
    samples, labels, skipped = labelled(src, cls)
    for p in skipped:
        log.warning("note: %s: not an image file (skipped)", p)
    report = CalibrateReport()
    labels = [c or det.default_class(fitting=True) for c in labels]
    usable = _routable(det, samples, labels, report.failed)
    fit_idx: set[int] = set()
    fit_from = _fit_samples(det, fit_dir, cls) if fit_dir is not None else {}
    for c in sorted({labels[i] for i in usable}):
        if not det.needs_reference(det.model_for(c)):
            continue
        idx = [i for i in sorted(usable) if labels[i] == c]
        part = [] if fit_dir is not None else [idx[k] for k in det.split(len(idx), c)[0]]
        fit_idx.update(part)
        fit_s = fit_from.get(c, []) if fit_dir is not None else [samples[i] for i in part]
        if fit_dir is not None and not fit_s:
            raise CalibrationError(f"class {c!r}: no images in --fit-dir {fit_dir} (expected {Path(fit_dir) / c}"
                                   " or --class)")
        if fit_s:
            images = []
            for chunk in load_chunks(fit_s, det.channels, _factor(det), cfg):
                images += [im for _, im, err in chunk if err is None]
                report.failed += [err for _, _, err in chunk if err]
            det.fit_reference(images, c)
    per_class: dict[str, ClassScores] = {}
    rest = [i for i in sorted(usable) if i not in fit_idx]
    for chunk in load_chunks([samples[i] for i in rest], det.channels, _factor(det), cfg):
        ok = [(rest[j], im) for j, im, err in chunk if err is None]
        report.failed += [err for _, _, err in chunk if err]
        if not ok:
            continue
        scores, maps = det.score_maps([im for _, im in ok], [labels[i] for i, _ in ok])
        for k, (i, _) in enumerate(ok):
            per_class.setdefault(labels[i], ClassScores()).add(scores[k : k + 1], maps[k : k + 1])
    if not per_class:
        raise ImageError(f"{src}: no usable calibration images ({len(report.failed)} failed)")
    det.set_calibration(per_class, source=str(Path(src).resolve()))
    report.written = det.save()
    report.alpha, report.score = det.alpha_, det.settings(det.model_for(sorted(per_class)[0]))[0]
    for c in sorted(per_class):
        cc = det.class_calibration(c)
        report.classes[c] = {"n": cc.n, "n_fit": cc.n_fit, "threshold": cc.threshold(det.alpha_),
                             "model": str(det.model_for(c))}
    return report


def _fit_samples(det: Detector, fit_dir: str | Path, cls: str | None) -> dict[str, list[Sample]]:
    """class -> samples of fit_dir (class subfolders, or all of it for --class / a single class)."""
    samples, labels, _ = labelled(fit_dir, cls)
    out: dict[str, list[Sample]] = {}
    for s, c in zip(samples, labels):
        out.setdefault(c or det.default_class(fitting=True), []).append(s)
    return out


def _factor(det: Detector) -> int:
    from aekit.export.manifest import load_manifest

    return max(load_manifest(d)["factor"] for d in set(det.routes.values()))


def _routable(det: Detector, samples: list[Sample], labels: list[str], failed: list[str]) -> set[int]:
    """Indices whose class has a model; one failure message per class without one."""
    bad: dict[str, str] = {}
    for c in set(labels):
        try:
            det.model_for(c)
        except DetectorError as e:
            bad[c] = str(e)
    for c, msg in sorted(bad.items()):
        n = labels.count(c)
        failed.append(f"{msg} ({n} image(s) skipped, e.g. {samples[labels.index(c)].path})")
    return {i for i, c in enumerate(labels) if c not in bad}


# ---- screening -------------------------------------------------------------------------------
@dataclass
class ClassSummary:
    n: int = 0  # images scored
    flagged: int = 0  # images above the threshold
    errors: int = 0  # files that could not be scored
    calibrated: bool = False  # the class has a calibration (else its images are errors)
    threshold: float | None = None  # at the alpha used (None: infinite or uncalibrated)
    score_partials: list[float] = field(default_factory=list)  # the scores' exact sum (see add)
    min_p: float = 1.0

    def add(self, score: float, flagged: bool, p_value: float) -> None:
        """Count one scored image. The scores' sum is kept exact, as non-overlapping partials (Shewchuk 1997,
        the algorithm of Python's math.fsum), so mean_score is the same to the last bit in whatever order
        the images were scored: a resumed screen's summary equals a fresh one's."""
        self.n, self.flagged, self.min_p = self.n + 1, self.flagged + bool(flagged), min(self.min_p, p_value)
        x, i = float(score), 0
        for y in self.score_partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                self.score_partials[i] = lo
                i += 1
            x = hi
        self.score_partials[i:] = [x]

    def to_dict(self) -> dict[str, Any]:
        mean = math.fsum(self.score_partials) / self.n if self.n else None
        return {"n": self.n, "flagged": self.flagged, "flagged_fraction": self.flagged / self.n if self.n else 0.0,
                "errors": self.errors, "calibrated": self.calibrated, "threshold": self.threshold,
                "mean_score": mean, "min_p_value": self.min_p}


@dataclass
class ScreenReport:
    alpha: float = 0.0
    score: str = ""
    per_class: dict[str, ClassSummary] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)

    @property
    def flagged(self) -> int:
        return sum(s.flagged for s in self.per_class.values())

    @property
    def exit_code(self) -> int:
        """0 nothing flagged, 1 something flagged, 2 some file or class could not be screened."""
        return 2 if self.failed else 1 if self.flagged else 0

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "score": self.score, "flagged": self.flagged, "exit_code": self.exit_code,
                "classes": {c: s.to_dict() for c, s in sorted(self.per_class.items())},
                "failed": self.failed, "warnings": self.warnings}


STALE_PART_AGE_S = 3600.0  # a temp file without a PID (or of a reused PID) is stale when unchanged this long


def stale_parts(target: Path) -> list[Path]:
    """Temp files of `target` ('.NAME.PID-XXXX.part' beside it) whose writer is gone: its PID no
    longer runs, or the file has not changed for STALE_PART_AGE_S. Newest first."""
    pat = re.compile(rf"^\.{re.escape(target.name)}\.(?:(\d+)-)?[A-Za-z0-9_]+\.part$")
    out = []
    for p in target.parent.glob(f".{glob_escape(target.name)}.*.part"):
        m = pat.match(p.name)
        try:
            st = p.lstat()
        except OSError:
            continue
        if m and ((m.group(1) and not _pid_alive(int(m.group(1)))) or time.time() - st.st_mtime >= STALE_PART_AGE_S):
            out.append((st.st_mtime, p))
    return [p for _, p in sorted(out, reverse=True)]


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def complete_records(path: Path) -> list[dict[str, Any]]:
    """The whole JSON lines of a (possibly truncated) JSONL file; reading stops at the first broken one."""
    try:
        data = path.read_bytes()
    except OSError:
        return []
    out = []
    for line in data.split(b"\n")[:-1]:  # the text after the last newline is a torn record
        try:
            rec = json.loads(line)
        except ValueError:
            break
        if not isinstance(rec, dict):
            break
        out.append(rec)
    return out


class RecordWriter:
    """JSONL + CSV records streamed to temp files beside the targets, renamed into place by commit().

    On creation it deletes the temp files a killed run left beside the targets; the complete
    records of the newest one are kept in `leftover` (the caller decides which are still valid)."""

    def __init__(self, prefix: str | Path):
        self.targets = [Path(f"{prefix}.jsonl"), Path(f"{prefix}.csv")]
        self.temps: list[str] = []
        self.files = []
        self.leftover: list[dict[str, Any]] = []
        self.leftover_start = 0.0  # when the run that wrote leftover started (Unix s; 0: unknown)
        self.removed: list[Path] = []
        for t in self.targets:
            t.parent.mkdir(parents=True, exist_ok=True)
            stale = stale_parts(t)
            if stale and t.suffix == ".jsonl":
                self.leftover = complete_records(stale[0])
                m = re.search(r"\.\d+-t([0-9a-f]+)_", stale[0].name)
                self.leftover_start = int(m.group(1), 16) / 1000.0 if m else 0.0
            for p in stale:
                p.unlink(missing_ok=True)
                self.removed.append(p)
        if self.removed:
            log.info("removed %d temp file(s) left by an interrupted screen, e.g. %s", len(self.removed), self.removed[0])
        for t in self.targets:
            start = f"t{int(time.time() * 1000):x}_"  # the start time (ms, hex): a resume trusts sources older than it
            fd, tmp = tempfile.mkstemp(prefix=f".{t.name}.{os.getpid()}-{start}", suffix=".part", dir=t.parent)
            self.temps.append(tmp)
            self.files.append(io.open(fd, "w", newline=""))
        self.csv = csv.DictWriter(self.files[1], fieldnames=RECORD_FIELDS, extrasaction="ignore")
        self.csv.writeheader()

    def write(self, rec: dict[str, Any]) -> None:
        """One record; every RECORD_FIELDS key is present (null where an error left it unknown)."""
        rec = {**dict.fromkeys(RECORD_FIELDS), **rec}
        self.files[0].write(json.dumps(rec) + "\n")
        self.csv.writerow({k: ("" if rec.get(k) is None else rec.get(k)) for k in RECORD_FIELDS})

    def commit(self) -> list[Path]:
        for f, tmp, t in zip(self.files, self.temps, self.targets):
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, t)
            _fsync_dir(t.parent)
        return self.targets

    def abort(self) -> None:
        for f, tmp in zip(self.files, self.temps):
            f.close()
            Path(tmp).unlink(missing_ok=True)

    def suspend(self) -> None:
        """An interrupted run (Ctrl-C): the records so far stay in the temp files, flushed, for the next run
        to reuse, exactly as a killed run's (their writer's PID is gone by then)."""
        for f in self.files:
            try:
                f.flush()
                os.fsync(f.fileno())
            except (OSError, ValueError):
                pass
            f.close()


def screen_folder(model: str | Path, src: str | Path, out: str | Path, cls: str | None = None,
                  alpha: float | None = None, heatmaps: str | Path | None = None,
                  cfg: ScreenConfig | None = None, maps: str | Path | None = None) -> ScreenReport:
    """Score every image under src against its class threshold; write records and a summary.

    maps: folder for every image's anomaly map (REL.png overlay with colour scale, REL.npy raw)."""
    cfg = cfg or ScreenConfig()
    for what, folder in (("--out", Path(out).parent), ("--maps", maps), ("--heatmaps", heatmaps)):
        if folder is not None:
            check_output_folder(Path(folder), what)
    det = Detector(model, alpha=alpha, device=cfg.device, batch_size=cfg.batch_size, threads=cfg.threads)
    if not det.classes_:
        from aekit import zoo

        if zoo.contains(model):  # calibration writes into the folder: a shipped model is calibrated as a copy
            name = Path(model).resolve().name
            raise CalibrationError(f"{model}: not calibrated, and a shipped model is calibrated as a copy: `cp -r "
                                   f"{model} models/{name} && aekit calibrate models/{name} NORMAL_DIR`, then "
                                   f"screen with models/{name}")
        raise CalibrationError(f"{model}: not calibrated; run `aekit calibrate {model} NORMAL_DIR` first")
    if cls:
        det.class_calibration(cls)  # an explicit unknown/uncalibrated class is a usage error
    try:
        samples, labels, report = screen_sources(src, cls, det.alpha_)
    except EmptySourceError as e:
        return empty_screen(det.alpha_, e)
    labels = [c or det.default_class() for c in labels]
    writer = RecordWriter(out)
    files = MapWriter(cfg.workers)
    try:
        usable = _calibrated(det, samples, labels, report, writer)
        reused = _reuse(det, samples, labels, usable, report, writer, heatmaps, maps)
        todo = [i for i in range(len(samples)) if i not in reused]
        for chunk in load_chunks([samples[i] for i in todo], det.channels, _factor(det), cfg):
            chunk = [(todo[j], im, err) for j, im, err in chunk]
            _screen_chunk(det, samples, labels, chunk, usable, report, writer, heatmaps, maps, files)
        files.close()  # every map and heatmap on disk (or its error raised) before the records are committed
        report.outputs = writer.commit()
    except KeyboardInterrupt:  # the records so far are kept for the rerun to reuse, as after a kill
        try:
            files.close()  # their maps too (the writes already queued take milliseconds)
        except Exception:  # a map that failed: its record is not reused (its map is missing)
            pass
        writer.suspend()
        raise
    except BaseException:
        files.close(cancel=True)
        writer.abort()
        raise
    summary = Path(f"{out}.summary.json")
    report.outputs.append(atomic_write_bytes(summary, (json.dumps(report.to_dict(), indent=1) + "\n").encode()))
    return report


def _calibrated(det: Detector, samples: list[Sample], labels: list[str], report: ScreenReport,
                writer: RecordWriter) -> set[int]:
    """Indices whose class is calibrated; the others are recorded as errors (one message per class)."""
    ok: set[str] = set()
    for c in sorted(set(labels)):
        s = report.per_class.setdefault(c, ClassSummary())
        try:
            cc = det.class_calibration(c)
            if math.isinf(cc.threshold(det.alpha_)):  # nothing could be flagged: refused, not passed (exit 2)
                raise CalibrationError(too_small_message(c, cc.n, det.alpha_))
        except (DetectorError, CalibrationError) as e:
            idx = [i for i, lab in enumerate(labels) if lab == c]
            report.failed.append(f"{e} ({len(idx)} image(s) not screened, e.g. {samples[idx[0]].path})")
            s.errors = len(idx)
            for i in idx:
                writer.write({"path": str(samples[i].path), "class": c, "is_anomaly": None, "error": str(e)})
            continue
        ok.add(c)
        s.calibrated = True
        t = cc.threshold(det.alpha_)
        s.threshold = t
        report.score = det.settings(det.model_for(c))[0]
    return {i for i, c in enumerate(labels) if c in ok}


def _reuse(det: Detector, samples: list[Sample], labels: list[str], usable: set[int], report: ScreenReport,
           writer: RecordWriter, heatmaps: str | Path | None, map_dir: str | Path | None) -> set[int]:
    """Write the killed run's records that are still valid and count them; returns their indices.

    Valid: a scored record (errors are retried) of a file in this job, same class, model id and
    threshold (so the same calibration, score and alpha), the file not modified since that run
    started, and its map / heatmap files present when asked for."""
    by_path = {str(s.path): i for i, s in enumerate(samples)}
    done: set[int] = set()
    for rec in writer.leftover:
        i = by_path.get(rec.get("path"))
        if i is None or i in done or i not in usable or rec.get("error") is not None or rec.get("class") != labels[i]:
            continue
        c = labels[i]
        cc, model_id = det.class_calibration(c), det.runtime(det.model_for(c)).model_id
        t = cc.threshold(det.alpha_)
        try:
            fresh = samples[i].path.stat().st_mtime < writer.leftover_start
        except OSError:
            fresh = False
        rel = samples[i].rel
        wanted = ([Path(map_dir) / rel.with_suffix(".png"), Path(map_dir) / rel.with_suffix(".npy")] if map_dir else []) \
            + ([Path(heatmaps) / rel.with_suffix(".png")] if heatmaps is not None and rec.get("is_anomaly") else [])
        if not (fresh and rec.get("model_id") == model_id and rec.get("threshold") == (None if math.isinf(t) else t)
                and isinstance(rec.get("score"), float) and all(f.is_file() for f in wanted)):
            continue
        _note_shape(report, c, cc.image_shape, (rec.get("height"), rec.get("width")))
        s = report.per_class[c]
        s.add(rec["score"], rec["score"] > t, float(cc.p_values(np.array([rec["score"]]))[0]))
        writer.write(rec)
        done.add(i)
    if writer.leftover:
        log.info("resumed an interrupted screen: %d of its %d record(s) reused, the rest screened again",
                 len(done), len(writer.leftover))
    return done


def _fail(samples, labels, report, writer, i: int, err: str) -> None:
    report.failed.append(err)
    report.per_class[labels[i]].errors += 1
    writer.write({"path": str(samples[i].path), "class": labels[i], "is_anomaly": None, "error": err})


def _score_or_isolate(det, samples, labels, ok, want_maps, report, writer):
    """Scores and maps of a chunk; when the batch fails, image by image, so an unexpected error
    names its file and the rest of the folder is still screened."""
    images, labs = [im for _, im in ok], [labels[i] for i, _ in ok]
    try:
        return ok, *det.score_maps(images, labs, maps=want_maps)
    except (DetectorError, CalibrationError):
        raise
    except Exception:
        pass
    kept, scores, maps = [], [], []
    for i, im in ok:
        try:
            s, m = det.score_maps([im], [labels[i]], maps=want_maps)
        except Exception as e:
            _fail(samples, labels, report, writer, i, f"{samples[i].path}: scoring failed ({type(e).__name__}: {e})")
            continue
        kept.append((i, im))
        scores.append(s[0])
        maps.append(m[0] if want_maps else None)
    return kept, np.array(scores), maps if want_maps else None


class MapWriter:
    """Renders and writes map / heatmap files in I/O threads while the next images are scored.

    Files are renamed into place as they are written (never partial) and flushed to disk once, by
    close(), before screen commits its records. At most `limit` files are in flight (bounded memory);
    a failed write is raised by the next submit() or by close(), so screen fails as it did when it
    wrote them itself."""

    def __init__(self, workers: int, limit: int = 1024):
        self.pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="aekit-maps")
        self.pending: deque[Future] = deque()
        self.limit = limit
        self.written = 0

    def submit(self, fn, *args, **kwargs) -> None:
        self.pending.append(self.pool.submit(fn, *args, **kwargs))
        self.written += 1
        while self.pending and (self.pending[0].done() or len(self.pending) > self.limit):
            self.pending.popleft().result()

    def close(self, cancel: bool = False) -> None:
        if cancel:
            for f in self.pending:
                f.cancel()
        try:
            while self.pending and not cancel:
                self.pending.popleft().result()
        finally:
            self.pool.shutdown(wait=True)
        if self.written and not cancel and hasattr(os, "sync"):
            os.sync()  # one flush for all map files (an fsync per file cost 5 ms each here)
            self.written = 0


def _screen_chunk(det, samples, labels, chunk, usable, report, writer, heatmaps, map_dir,
                  files: MapWriter | None = None) -> None:
    ok = [(i, im) for i, im, err in chunk if err is None and i in usable]
    for i, _, err in chunk:
        if err is not None and i in usable:
            _fail(samples, labels, report, writer, i, err)
    if not ok:
        return
    ok, scores, maps = _score_or_isolate(det, samples, labels, ok, heatmaps is not None or map_dir is not None,
                                         report, writer)
    labs = [labels[i] for i, _ in ok]
    for k, (i, im) in enumerate(ok):
        c, cc = labs[k], det.class_calibration(labs[k])
        _note_shape(report, c, cc.image_shape, im.shape[:2])
        t, p = cc.threshold(det.alpha_), float(cc.p_values(scores[k : k + 1])[0])
        flag = bool(scores[k] > t)
        s = report.per_class[c]
        s.add(float(scores[k]), flag, p)
        writer.write({"path": str(samples[i].path), "class": c, "score": float(scores[k]),
                      "threshold": None if math.isinf(t) else t, "p_value": p, "is_anomaly": flag, "error": None,
                      "rel": str(samples[i].rel), "height": im.shape[0], "width": im.shape[1],
                      "model_id": det.runtime(det.model_for(c)).model_id})
        if flag and heatmaps is not None:
            recon = det.reconstruct(det.model_for(c), im[None], det.settings(det.model_for(c))[1])[0]
            dest = Path(heatmaps) / samples[i].rel.with_suffix(".png")
            files.submit(write_heatmap, dest, im, recon, maps[k], cc.map_scale) if files else \
                write_heatmap(dest, im, recon, maps[k], cc.map_scale)
        if map_dir is not None:
            stem = Path(map_dir) / samples[i].rel.with_suffix("")
            files.submit(write_map, stem, im, maps[k], cc.map_scale, durable=False) if files else \
                write_map(stem, im, maps[k], cc.map_scale)  # without a MapWriter, nothing flushes later


def _note_shape(report: ScreenReport, cls: str, cal_shape: list[int] | None, shape: tuple[int, int]) -> None:
    if cal_shape and list(shape) != list(cal_shape):
        msg = (f"class {cls!r}: calibrated on {cal_shape[1]}x{cal_shape[0]} images, screening "
               f"{shape[1]}x{shape[0]} images; scores of other sizes may not be comparable")
        if msg not in report.warnings and sum(w.startswith(f"class {cls!r}: calibrated on") for w in report.warnings) < 3:
            report.warnings.append(msg)
