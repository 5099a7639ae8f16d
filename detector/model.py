"""The anomaly detector as a scikit-learn/pyod-style estimator over exported ONNX models.

    det = Detector("models/bag").fit(normal_images, classes="bag")   # calibrate (conformal)
    det.decision_function(images, "bag"); det.predict(images, "bag"); det.thresholds_
MODEL is one model folder (shared by all its classes) or a detector directory
(`detector.json` routing each class to its own model folder). Runs on onnxruntime only.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from aekit.images import ImageError, atomic_write_bytes
from aekit.detector.calibration import Calibration, CalibrationError, ClassCalibration, check_alpha, too_small_message
from aekit.detector.scores import check_score, error_maps, reduce_maps
from aekit.export.manifest import MANIFEST_NAME, ModelError, load_manifest, save_manifest

DETECTOR_FILE = "detector.json"
DETECTOR_FORMAT, DETECTOR_VERSION = "aekit-detector", 1
DEFAULT_CLASS = "default"  # class name of images from a flat folder screened without --class
LATENT_MODES = ("quantised", "float")  # reconstruct through 8-bit symbols (as shipped) or the float latent
MAX_BATCH_PIXELS = 2**24  # images x pixels per onnxruntime call (bounds memory on large images)


class DetectorError(Exception):
    """Unknown class, missing calibration, mismatched settings: names the class and the model."""


def is_detector_dir(path: str | Path) -> bool:
    return (Path(path) / DETECTOR_FILE).is_file()


def load_routes(path: str | Path) -> dict[str | None, Path]:
    """class -> model folder; {None: folder} for a single model shared by all classes."""
    p = Path(path)
    if not is_detector_dir(p):
        load_manifest(p)  # raises ModelError naming the folder when it is not a model
        return {None: p.resolve()}
    f = p / DETECTOR_FILE
    try:
        d = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{f}: unreadable detector manifest ({e})") from None
    if d.get("format") != DETECTOR_FORMAT or d.get("format_version") != DETECTOR_VERSION:
        raise ModelError(f"{f}: not an aekit detector manifest of version {DETECTOR_VERSION}")
    return {c: (p / v["model"]).resolve() for c, v in d["classes"].items()}


def save_detector_manifest(out: str | Path, classes: dict[str, dict[str, Any]], extra: dict[str, Any]) -> Path:
    """Write OUT/detector.json: {format, format_version, classes: {name: {model, model_id}}, ...}."""
    d = {"format": DETECTOR_FORMAT, "format_version": DETECTOR_VERSION,
         "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra, "classes": classes}
    return atomic_write_bytes(Path(out) / DETECTOR_FILE, (json.dumps(d, indent=1) + "\n").encode())


def as_images(X: Any, channels: int) -> list[np.ndarray]:
    """uint8 (B, H, W[, C]) array or a list of (H, W[, C]) arrays -> list of (H, W, C)."""
    items = list(X) if not isinstance(X, np.ndarray) or X.ndim in (3, 4) else None
    if items is None:
        raise ValueError(f"expected a batch of images (B, H, W[, C]), got an array of shape {X.shape}")
    out = []
    for i, im in enumerate(items):
        im = np.asarray(im)
        im = im[:, :, None] if im.ndim == 2 else im
        if im.ndim != 3 or im.shape[2] != channels:
            raise ImageError(f"image {i}: shape {im.shape}, but the model takes {channels}-channel images (H, W, {channels})")
        if im.dtype != np.uint8:
            raise ImageError(f"image {i}: dtype {im.dtype}; expected uint8 pixels 0..255")
        out.append(im)
    return out


@dataclass
class ClassScores:
    """Scores of one class's calibration images, gathered batch by batch."""

    scores: list[np.ndarray] = field(default_factory=list)  # (b,) arrays
    pixels: list[np.ndarray] = field(default_factory=list)  # sampled per-pixel errors (heatmap scale)
    shapes: set[tuple[int, int]] = field(default_factory=set)

    def add(self, scores: np.ndarray, maps: Sequence[np.ndarray]) -> None:
        self.scores.append(np.asarray(scores, dtype=np.float64))
        for m in maps:
            self.pixels.append(m.ravel()[:: max(1, m.size // 4096)])  # <= ~4k pixels per image
            self.shapes.add(m.shape)

    def calibration(self, source: str = "") -> ClassCalibration:
        shapes = sorted(self.shapes)
        scale = float(np.quantile(np.concatenate(self.pixels), 0.999)) if self.pixels else 0.0
        return ClassCalibration(np.sort(np.concatenate(self.scores)), scale,
                                list(shapes[0]) if len(shapes) == 1 else None, source)


class Detector:
    """Reconstruction-error anomaly detector with per-class conformal thresholds.

    Parameters are stored by __init__; the model(s) and any stored calibration load on first
    use. Fitted attributes: `calibrations_` (model folder -> Calibration), `thresholds_`
    (class -> threshold at `alpha_`), `decision_scores_` (scores of the images given to fit).
    Labels follow pyod: predict() returns 1 for anomalies, 0 for normal images.
    """

    def __init__(self, model: str | Path, score: str | None = None, alpha: float | None = None,
                 latent: str | None = None, device: str = "auto", batch_size: int = 64, threads: int = 0):
        self.model, self.score, self.alpha, self.latent = model, score, alpha, latent
        self.device, self.batch_size, self.threads = device, batch_size, threads
        self._routes: dict[str | None, Path] | None = None
        self._runtimes: dict[Path, Any] = {}
        self.calibrations_: dict[Path, Calibration] = {}

    # ---- setup -------------------------------------------------------------------------
    @property
    def routes(self) -> dict[str | None, Path]:
        if self._routes is None:
            self._routes = load_routes(self.model)
            for d in set(self._routes.values()):
                cal = load_manifest(d).get("calibration")
                if cal:
                    self.calibrations_[d] = Calibration.from_dict(cal, f"{d / MANIFEST_NAME}")
        return self._routes

    @property
    def classes_(self) -> list[str]:
        """Calibrated classes."""
        self.routes
        return sorted({c for cal in self.calibrations_.values() for c in cal.classes})

    def runtime(self, model_dir: Path) -> Any:
        if model_dir not in self._runtimes:
            from aekit.export.runtime import Runtime

            self._runtimes[model_dir] = Runtime(model_dir, device=self.device, threads=self.threads)
        return self._runtimes[model_dir]

    @property
    def channels(self) -> int:
        return load_manifest(next(iter(self.routes.values())))["channels"]

    def model_for(self, cls: str) -> Path:
        """The model folder scoring class cls (DetectorError for a class the detector lacks)."""
        r = self.routes
        if None in r:
            return r[None]
        if cls not in r:
            raise DetectorError(f"unknown class {cls!r}: detector {self.model} has models for "
                                f"{', '.join(sorted(map(str, r))) or 'no class'}")
        return r[cls]

    def settings(self, model_dir: Path) -> tuple[str, str]:
        """(score, latent mode) for a model: as calibrated, checked against explicit parameters."""
        cal = self.calibrations_.get(model_dir)
        score = self.score or (cal.score if cal else "mse")
        latent = self.latent or (cal.preprocess.get("latent", "quantised") if cal else "quantised")
        return check_score(score), _check_latent(latent)

    # ---- scoring -----------------------------------------------------------------------
    def score_maps(self, X: Any, classes: str | Sequence[str] | None = None,
                   maps: bool = True) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """Scores (B,) and per-pixel error maps [(H, W)] of images, each through its class's model."""
        labels = self._labels(X, classes)
        images = as_images(X, self.channels)
        scores, out_maps = np.zeros(len(images)), [None] * len(images) if maps else None
        groups: dict[tuple, list[int]] = {}
        for i, (im, c) in enumerate(zip(images, labels)):
            groups.setdefault((self.model_for(c), im.shape), []).append(i)
        for (model_dir, shape), idx in groups.items():
            step = max(1, min(self.batch_size, MAX_BATCH_PIXELS // (shape[0] * shape[1])))
            for j in range(0, len(idx), step):
                part = idx[j : j + step]
                m = self._maps(model_dir, np.stack([images[i] for i in part]))  # (b, H, W)
                scores[part] = reduce_maps(m)
                if maps:
                    for i, mi in zip(part, m):
                        out_maps[i] = mi
        return scores, out_maps

    def _maps(self, model_dir: Path, batch: np.ndarray) -> np.ndarray:
        """uint8 (B, H, W, C) -> error maps (B, H, W) of the model's score and latent mode."""
        score, latent = self.settings(model_dir)
        return error_maps(batch, self.reconstruct(model_dir, batch, latent), score)

    def reconstruct(self, model_dir: Path, batch: np.ndarray, latent: str = "quantised") -> np.ndarray:
        rt = self.runtime(model_dir)
        h, w = batch.shape[1:3]
        y = rt.encode(batch)  # (B, c_y, ceil(H/f), ceil(W/f))
        y_hat = rt.dequantise(rt.quantise(y)) if latent == "quantised" else y
        return rt.decode(y_hat, h, w)  # (B, H, W, C) uint8

    def decision_function(self, X: Any, classes: str | Sequence[str] | None = None) -> np.ndarray:
        """Anomaly scores (B,), higher = more anomalous, computed exactly as at calibration."""
        return self.score_maps(X, classes, maps=False)[0]

    # ---- calibration -------------------------------------------------------------------
    def fit(self, X: Any, classes: str | Sequence[str] | None = None, y: Any = None) -> "Detector":
        """Calibrate on normal images (the models are trained with `aekit train`); y is ignored."""
        labels = self._labels(X, classes, fitting=True)
        scores, maps = self.score_maps(X, labels)
        self.decision_scores_ = scores
        per_class: dict[str, ClassScores] = {}
        for i, c in enumerate(labels):
            per_class.setdefault(c, ClassScores()).add(scores[i : i + 1], maps[i : i + 1])
        self.set_calibration(per_class)
        return self

    calibrate = fit

    def set_calibration(self, per_class: dict[str, "ClassScores"], source: str = "") -> None:
        """Store calibration scores per class (replacing those classes); warns when n is too small."""
        alpha = check_alpha(self.alpha if self.alpha is not None else 0.01)
        by_model: dict[Path, dict[str, ClassCalibration]] = {}
        for c, cs in per_class.items():
            cc = cs.calibration(source)
            if math.isinf(cc.threshold(alpha)):
                print(f"WARNING: {too_small_message(c, cc.n, alpha)}", file=sys.stderr)
            by_model.setdefault(self.model_for(c), {})[c] = cc
        for d, classes in by_model.items():
            score, latent = self.settings(d)
            new = Calibration(score, alpha, self.runtime(d).model_id, {"latent": latent}, classes,
                              datetime.now(timezone.utc).isoformat(timespec="seconds"))
            old = self.calibrations_.get(d)
            self.calibrations_[d] = old.merged(new) if old else new

    def save(self) -> list[Path]:
        """Write each model's calibration into its manifest.json (atomically); returns the files."""
        written = []
        for d, cal in self.calibrations_.items():
            m = load_manifest(d)
            m["calibration"] = cal.to_dict()
            written.append(save_manifest(d, m))
        return written

    # ---- thresholds, p-values, predictions -----------------------------------------------
    @property
    def alpha_(self) -> float:
        if self.alpha is not None:
            return check_alpha(self.alpha)
        alphas = {cal.alpha for cal in self.calibrations_.values()}
        if not alphas:
            raise CalibrationError(f"{self.model}: not calibrated; run `aekit calibrate {self.model} NORMAL_DIR`")
        return min(alphas)

    @property
    def thresholds_(self) -> dict[str, float]:
        """class -> threshold at alpha_ (inf: too few calibration images to flag at this alpha)."""
        self.routes
        return {c: cc.threshold(self.alpha_) for cal in self.calibrations_.values() for c, cc in cal.classes.items()}

    def class_calibration(self, cls: str) -> ClassCalibration:
        """The calibration of a class; DetectorError/CalibrationError naming what is missing."""
        d = self.model_for(cls)
        cal = self.calibrations_.get(d)
        if cal is None:
            raise CalibrationError(f"class {cls!r}: model {d} has no calibration; "
                                   f"run `aekit calibrate {self.model} NORMAL_DIR`")
        if cls not in cal.classes:
            known = load_manifest(d).get("training", {}).get("classes") or []
            what = "has no calibration" if cls in known or None not in self.routes else "is unknown"
            raise CalibrationError(f"class {cls!r} {what} in {d} (calibrated: {', '.join(sorted(cal.classes))}"
                                   + (f"; trained on: {', '.join(known)}" if known else "") + ")")
        self._check_settings(d, cal)
        return cal.classes[cls]

    def _check_settings(self, d: Path, cal: Calibration) -> None:
        score, latent = self.settings(d)
        if score != cal.score or latent != cal.preprocess.get("latent", "quantised"):
            raise CalibrationError(f"{d}: calibrated with score {cal.score} ({cal.preprocess.get('latent')} latent), "
                                   f"asked for {score} ({latent}); recalibrate or drop the option")
        rt_id = load_manifest(d)["model_id"]
        if cal.model_id != rt_id:
            raise CalibrationError(f"{d}: calibration belongs to model {cal.model_id}, not {rt_id}; recalibrate")

    def p_values(self, scores: np.ndarray, classes: Sequence[str]) -> np.ndarray:
        return np.array([self.class_calibration(c).p_values(np.array([s]))[0] for s, c in zip(scores, classes)])

    def predict(self, X: Any, classes: str | Sequence[str] | None = None) -> np.ndarray:
        """1 for images scoring above their class threshold at alpha_, else 0."""
        labels = self._labels(X, classes)
        for c in set(labels):
            self.class_calibration(c)
        scores = self.decision_function(X, labels)
        t = np.array([self.class_calibration(c).threshold(self.alpha_) for c in labels])
        return (scores > t).astype(np.int64)

    def _labels(self, X: Any, classes: str | Sequence[str] | None, fitting: bool = False) -> list[str]:
        n = len(X)
        if classes is None:
            classes = self.default_class(fitting)
        if isinstance(classes, str):
            return [classes] * n
        labels = [str(c) for c in classes]
        if len(labels) != n:
            raise ValueError(f"{len(labels)} class labels for {n} images")
        return labels

    def default_class(self, fitting: bool = False) -> str:
        """Class of unlabelled images: the single calibrated (or routed) class, else 'default'."""
        routed = [c for c in self.routes if c is not None]
        known = routed if fitting or not self.classes_ else self.classes_
        if len(known) == 1:
            return known[0]
        if len(known) > 1:
            raise DetectorError(f"{self.model} has classes {', '.join(known)}; say which one the images belong to "
                                "(--class NAME or class subfolders)")
        return DEFAULT_CLASS


def _check_latent(mode: str) -> str:
    if mode not in LATENT_MODES:
        raise ValueError(f"latent mode {mode!r} must be one of {', '.join(LATENT_MODES)}")
    return mode
