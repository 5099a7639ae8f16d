"""The anomaly detector as a scikit-learn/pyod-style estimator over exported ONNX models.

    det = Detector("models/bag", score="ssim-max").fit(normal_images, classes="bag")  # conformal
    det.decision_function(images, "bag"); det.predict(images, "bag"); det.thresholds_; det.anomaly_maps(images)
MODEL is one model folder (shared by all its classes) or a detector directory
(`detector.json` routing each class to its own model folder). Runs on onnxruntime only.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from aekit.images import ImageError, atomic_write_bytes
from aekit.detector.calibration import (ARRAYS_FILE, Calibration, CalibrationError, ClassCalibration, check_alpha,
                                        default_alpha, too_small_message)
from aekit.detector.features import FeatureBank, ImageBank
from aekit.detector.scores import (BACKBONE_PARTS, FEATURE, KNN, SMOOTH_SIGMA, components, error_maps, image_scores,
                                   upsample)
from aekit.export.manifest import MANIFEST_NAME, ModelError, load_manifest, save_manifest

DETECTOR_FILE = "detector.json"
DETECTOR_FORMAT, DETECTOR_VERSION = "aekit-detector", 1
DEFAULT_CLASS = "default"  # class name of images from a flat folder screened without --class
LATENT_MODES = ("quantised", "float")  # reconstruct through 8-bit symbols (as shipped) or the float latent
MAX_BATCH_PIXELS = 2**24  # images x pixels per onnxruntime call (bounds memory on large images)
DEFAULT_SCORE = "mse-top1"  # best image score measured on local defects (detector/RESULTS.md)

log = logging.getLogger(__name__)


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
    pixels: list[np.ndarray] = field(default_factory=list)  # sampled per-pixel map values (colour scale)
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


@dataclass
class Reference:
    """What a combined or feature score fits on normal images before conformal calibration."""

    bank: FeatureBank | None = None  # memory bank of the 'feat' part
    image_bank: ImageBank | None = None  # memory bank of the 'knn' part
    norm: dict[str, list[float]] = field(default_factory=dict)  # part -> [loc, scale] (combined scores)
    n_fit: int = 0
    backbone: dict[str, np.ndarray] = field(default_factory=dict)  # 'padim_*' / 'patchcore_*' arrays


def part_name(part: tuple[str, str]) -> str:
    return part[0] if not part[1] else f"{part[0]}-{part[1]}"


def combine(parts: dict[str, tuple[np.ndarray, np.ndarray]], norm: dict[str, list[float]]
            ) -> tuple[np.ndarray, np.ndarray]:
    """Several (scores (B,), maps (B, H, W)) -> one: sum of (s - loc) / scale; maps / scale summed.

    loc, scale (median, 95th percentile - median) come from the fit images, never from the
    calibration ones, so the combined score is one fixed function calibrated as a whole."""
    missing = sorted(set(parts) - set(norm))
    if missing:
        raise CalibrationError(f"combined score: no normaliser for {', '.join(missing)}; recalibrate")
    score = sum((s - norm[k][0]) / norm[k][1] for k, (s, _) in parts.items())
    maps = sum(m / norm[k][1] for k, (_, m) in parts.items())
    return score, maps


class Detector:
    """Reconstruction-error and encoder-feature anomaly detector with per-class conformal thresholds.

    Parameters (stored by __init__ as given; get_params/set_params as in scikit-learn):
    model: model folder or detector directory; score: score spec (None: the calibrated one, else
    DEFAULT_SCORE); alpha (None: the calibrated one; at fit, the smallest of ALPHA_LADDER the data
    allow); latent: 'quantised' | 'float'; fit_fraction: share of each class's normal images that
    fits the feature bank and the normalisers of a combined score (only for such scores; the rest
    calibrates); bank_size: memory-bank vectors per class; n_neighbors: nearest normal images the 'knn'
    score averages over; random_state: seeds split and subsampling.
    Fitted attributes (set by fit, or loaded with a calibrated model): `calibrations_` (model folder
    -> Calibration), `thresholds_`, `alpha_`, `classes_`, `decision_scores_` (set by fit only).
    Labels follow pyod: predict() returns 1 for anomalies, 0 for normal images.
    """

    def __init__(self, model: str | Path, score: str | None = None, alpha: float | None = None,
                 latent: str | None = None, device: str = "auto", batch_size: int = 64, threads: int = 0,
                 fit_fraction: float = 0.3, bank_size: int = 8192, n_neighbors: int = 3, random_state: int = 0):
        self.model = model
        self.score = score
        self.alpha = alpha
        self.latent = latent
        self.device = device
        self.batch_size = batch_size
        self.threads = threads
        self.fit_fraction = fit_fraction
        self.bank_size = bank_size
        self.n_neighbors = n_neighbors
        self.random_state = random_state

    # ---- scikit-learn parameter protocol --------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        return [n for n in inspect.signature(cls.__init__).parameters if n != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {n: getattr(self, n) for n in self._param_names()}

    def set_params(self, **params: Any) -> "Detector":
        """Set parameters; loaded models and fitted state are dropped when the model changes."""
        bad = sorted(set(params) - set(self._param_names()))
        if bad:
            raise ValueError(f"invalid parameter(s) {', '.join(bad)} for Detector (valid: {', '.join(self._param_names())})")
        if "model" in params or "device" in params or "threads" in params:
            for k in ("_routes", "_runtimes", "_backbones", "calibrations_", "_reference", "_checked"):
                self.__dict__.pop(k, None)
        for k, v in params.items():
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        d = {n: v for n, v in self.get_params().items() if v != inspect.signature(type(self).__init__).parameters[n].default}
        return f"Detector({', '.join(f'{k}={v!r}' for k, v in d.items())})"

    # ---- setup -------------------------------------------------------------------------
    @property
    def routes(self) -> dict[str | None, Path]:
        """class -> model folder (loaded on first use, with any calibration stored in the models)."""
        if "_routes" not in self.__dict__:
            routes = load_routes(self.model)
            cals = {}
            for d in set(routes.values()):
                cal = load_manifest(d).get("calibration")
                if cal:
                    f = d / ARRAYS_FILE
                    cals[d] = Calibration.from_dict(cal, f"{d / MANIFEST_NAME}", f.read_bytes() if f.is_file() else None)
            self._routes, self.calibrations_ = routes, cals
        return self._routes

    def _cals(self) -> dict[Path, Calibration]:
        self.routes
        return self.calibrations_

    @property
    def classes_(self) -> list[str]:
        """Calibrated classes."""
        return sorted({c for cal in self._cals().values() for c in cal.classes})

    def runtime(self, model_dir: Path) -> Any:
        rts = self.__dict__.setdefault("_runtimes", {})
        if model_dir not in rts:
            from aekit.export.runtime import Runtime

            rts[model_dir] = Runtime(model_dir, device=self.device, threads=self.threads)
        return rts[model_dir]

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
        """(score spec, latent mode) for a model: as calibrated, else the parameters, else the defaults."""
        cal = self._cals().get(model_dir)
        score = self.score or (cal.score if cal else DEFAULT_SCORE)
        latent = self.latent or (cal.preprocess.get("latent", "quantised") if cal else "quantised")
        components(score)
        return score, _check_latent(latent)

    def smooth_sigma(self, model_dir: Path) -> float:
        cal = self._cals().get(model_dir)
        return float(cal.preprocess.get("smooth", SMOOTH_SIGMA)) if cal else SMOOTH_SIGMA

    # ---- scoring -----------------------------------------------------------------------
    def score_maps(self, X: Any, classes: str | Sequence[str] | None = None,
                   maps: bool = True) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """Scores (B,) and anomaly maps [(H, W)] of images, each through its class's model and reference."""
        labels = self._labels(X, classes)
        images = as_images(X, self.channels)
        scores, out_maps = np.zeros(len(images)), [None] * len(images) if maps else None
        groups: dict[tuple, list[int]] = {}
        for i, (im, c) in enumerate(zip(images, labels)):
            groups.setdefault((self.model_for(c), c, im.shape), []).append(i)
        for (model_dir, c, shape), idx in groups.items():
            step = max(1, min(self.batch_size, MAX_BATCH_PIXELS // (shape[0] * shape[1])))
            for j in range(0, len(idx), step):
                part = idx[j : j + step]
                s, m = self._combined(model_dir, c, np.stack([images[i] for i in part]))
                scores[part] = s
                if maps:
                    for i, mi in zip(part, m):
                        out_maps[i] = mi
        return scores, out_maps

    def anomaly_maps(self, X: Any, classes: str | Sequence[str] | None = None) -> list[np.ndarray]:
        """Per-pixel anomaly maps [(H, W)] of the calibrated score (what screen --maps writes)."""
        return self.score_maps(X, classes)[1]

    def _parts(self, model_dir: Path, batch: np.ndarray, ref: Reference | None,
               image_ids: np.ndarray | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each part of the score spec -> (raw scores (B,), map (B, H, W)) for uint8 (B, H, W, C)."""
        score, latent = self.settings(model_dir)
        h, w = batch.shape[1:3]
        rt = self.runtime(model_dir)
        y = rt.encode(batch)  # (B, c_y, ceil(H/f), ceil(W/f))
        y_hat = rt.dequantise(rt.quantise(y)) if latent == "quantised" else y
        x_hat = None
        out = {}
        for part in components(score):
            if part[0] == FEATURE:
                if ref is None or ref.bank is None:
                    raise CalibrationError(f"{model_dir}: score {score!r} needs a feature bank; calibrate first")
                fm = ref.bank.score_maps(y_hat, image_ids)  # (B, h', w')
                out[part_name(part)] = (fm.reshape(len(fm), -1).max(axis=1), upsample(fm, h, w))
                continue
            if part[0] == KNN:
                if ref is None or ref.image_bank is None:
                    raise CalibrationError(f"{model_dir}: score {score!r} needs an image bank; calibrate first")
                sc, fm = ref.image_bank.scores(y_hat, image_ids)  # (B,), (B, h', w')
                out[KNN] = (sc, upsample(fm, h, w))
                continue
            if part[0] in BACKBONE_PARTS:  # PaDiM / PatchCore: image score = the map's max (as anomalib)
                fm = self._backbone_maps(model_dir, batch, part[0], ref)  # (B, side/8, side/8)
                out[part_name(part)] = (fm.reshape(len(fm), -1).max(axis=1), upsample(fm, h, w))
                continue
            if x_hat is None:
                x_hat = rt.decode(y_hat, h, w)  # (B, H, W, C) uint8
            out[part_name(part)] = image_scores(error_maps(batch, x_hat, part[0]), part[1], self.smooth_sigma(model_dir))
        return out

    def backbone(self, model_dir: Path):
        """The model folder's exported pretrained trunk (aekit.detector.backbone), loaded once."""
        from aekit.detector.backbone import BackboneRuntime

        rts = self.__dict__.setdefault("_backbones", {})
        if model_dir not in rts:
            rts[model_dir] = BackboneRuntime(model_dir, threads=self.threads)
        return rts[model_dir]

    def _backbone_maps(self, model_dir: Path, batch: np.ndarray, kind: str, ref: Reference | None) -> np.ndarray:
        from aekit.detector.backbone import padim_maps, patchcore_maps

        if ref is None or not any(k.startswith(kind + "_") for k in ref.backbone):
            raise CalibrationError(f"{model_dir}: score part {kind!r} needs its fitted statistics; calibrate first")
        a = {k[len(kind) + 1:]: v for k, v in ref.backbone.items() if k.startswith(kind + "_")}
        f = self.backbone(model_dir).features(batch)  # (B, D, side/8, side/8)
        return padim_maps(f, a) if kind == "padim" else patchcore_maps(f, a)

    def _combined(self, model_dir: Path, cls: str, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores (B,), maps (B, H, W)); several parts: sum of (s - loc) / scale, maps / scale summed."""
        ref = self._reference_for(cls)
        parts = self._parts(model_dir, batch, ref)
        if len(parts) == 1:
            return next(iter(parts.values()))
        return combine(parts, ref.norm)

    def _reference_for(self, cls: str) -> Reference | None:
        pending = self.__dict__.get("_reference", {})
        if cls in pending:
            return pending[cls]
        cal = self._cals().get(self.model_for(cls))
        cc = cal.classes.get(cls) if cal else None
        return Reference(cc.bank, cc.image_bank, cc.norm, cc.n_fit, cc.backbone) if cc else None

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
    def needs_reference(self, model_dir: Path) -> bool:
        """Whether the score fits something on normal images first (a feature bank or normalisers)."""
        parts = components(self.settings(model_dir)[0])
        return len(parts) > 1 or parts[0][0] in (FEATURE, KNN) or parts[0][0] in BACKBONE_PARTS

    def split(self, n: int, cls: str) -> tuple[np.ndarray, np.ndarray]:
        """(fit indices, calibration indices) of a class's n normal images (seeded by class name)."""
        if not self.needs_reference(self.model_for(cls)):
            return np.arange(0), np.arange(n)
        order = np.random.default_rng([self.random_state, zlib.crc32(cls.encode())]).permutation(n)
        k = int(round(n * self.fit_fraction))
        return np.sort(order[:k]), np.sort(order[k:])

    def fit_reference(self, X: Any, cls: str) -> Reference:
        """Fit the feature bank and the normalisers of cls on normal images (not the calibration ones)."""
        model_dir = self.model_for(cls)
        images = as_images(X, self.channels)
        if not images:
            raise CalibrationError(f"class {cls!r}: score {self.settings(model_dir)[0]!r} needs normal images to fit "
                                   "(fit_fraction is 0 or the class has too few images)")
        ref = Reference(n_fit=len(images))
        names = [p[0] for p in components(self.settings(model_dir)[0])]
        if FEATURE in names or KNN in names:
            y = self._latents(model_dir, images)  # (N, c_y, h, w)
            if FEATURE in names:
                ref.bank = FeatureBank.fit(y, self.bank_size, self.random_state)
            if KNN in names:
                ref.image_bank = ImageBank.fit(y, self.bank_size, self.random_state, self.n_neighbors)
        kinds = [p[0] for p in components(self.settings(model_dir)[0]) if p[0] in BACKBONE_PARTS]
        if kinds:
            from aekit.detector.backbone import padim_fit, patchcore_fit

            bb = self.backbone(model_dir)
            f = np.concatenate([bb.features(np.stack(images[i : i + self.batch_size]))
                                for i in range(0, len(images), self.batch_size)])  # (N, D, side/8, side/8)
            for kind in kinds:
                a = padim_fit(f, bb.cfg.dims, self.random_state) if kind == "padim" else \
                    patchcore_fit(f, self.bank_size, self.random_state)
                ref.backbone.update({f"{kind}_{k}": v for k, v in a.items()})
        raw: dict[str, list[np.ndarray]] = {}
        for i in range(0, len(images), self.batch_size):  # leave-one-image-out feature scores
            ids = np.arange(i, min(i + self.batch_size, len(images)))
            for k, (s, _) in self._parts(model_dir, np.stack(images[i : i + self.batch_size]), ref, ids).items():
                raw.setdefault(k, []).append(s)
        for k, v in raw.items():
            v = np.concatenate(v)
            ref.norm[k] = [float(np.median(v)), float(max(np.quantile(v, 0.95) - np.median(v), 1e-12))]
        self.__dict__.setdefault("_reference", {})[cls] = ref
        return ref

    def _latents(self, model_dir: Path, images: list[np.ndarray]) -> np.ndarray:
        """Latents (N, c_y, h, w) of same-size images, through 8-bit symbols unless the latent is 'float'."""
        rt, latent = self.runtime(model_dir), self.settings(model_dir)[1]
        ys = [rt.encode(np.stack(images[i : i + self.batch_size])) for i in range(0, len(images), self.batch_size)]
        if latent == "quantised":
            ys = [rt.dequantise(rt.quantise(y)) for y in ys]
        return np.concatenate(ys)

    def fit(self, X: Any, classes: str | Sequence[str] | None = None, y: Any = None) -> "Detector":
        """Calibrate on normal images (the models are trained with `aekit train`); y is ignored.

        Per class: a fit_fraction share fits the feature bank / normalisers when the score has
        them, the rest gives the conformal scores; after fit_reference(other_images, cls) (e.g. the
        training images) all of X calibrates. decision_scores_: scores of the calibration part."""
        labels = self._labels(X, classes, fitting=True)
        images = list(X)
        per_class: dict[str, ClassScores] = {}
        self.decision_scores_ = np.full(len(images), np.nan)
        for c in sorted(set(labels)):
            idx = np.array([i for i, lab in enumerate(labels) if lab == c])
            fitted = c in self.__dict__.get("_reference", {})
            fit_i, cal_i = (np.arange(0), np.arange(len(idx))) if fitted else self.split(len(idx), c)
            if len(fit_i):
                self.fit_reference([images[i] for i in idx[fit_i]], c)
            scores, maps = self.score_maps([images[i] for i in idx[cal_i]], c)
            self.decision_scores_[idx[cal_i]] = scores
            per_class.setdefault(c, ClassScores()).add(scores, maps)
        self.set_calibration(per_class)
        return self

    calibrate = fit

    def set_calibration(self, per_class: dict[str, "ClassScores"], source: str = "") -> None:
        """Store calibration scores per class (replacing those classes).

        CalibrationError (one line, with the minimum count) when a class has too few images for
        alpha; with alpha None, the smallest alpha of ALPHA_LADDER every class allows."""
        if not per_class:
            raise CalibrationError(f"{self.model}: no calibration images")
        ccs = {c: cs.calibration(source) for c, cs in per_class.items()}
        alpha = check_alpha(self.alpha) if self.alpha is not None else default_alpha(min(cc.n for cc in ccs.values()))
        others = {c: d for d, cal in self._cals().items() for c in cal.classes if c not in ccs}
        inherited = ""
        kept = {cal.alpha for d, cal in self._cals().items() if any(o == d for o in others.values())}
        if others and kept and alpha not in kept:  # alpha is one per model: the other classes' thresholds move too
            if self.alpha is None:  # the folder's default alpha: keep the model's, if these classes allow it
                alpha, inherited = min(kept), " (the alpha of the model's other classes: --alpha re-thresholds all)"
            else:
                for c, d in sorted(others.items()):
                    old = self._cals()[d].classes[c]
                    if math.isinf(old.threshold(alpha)):
                        raise CalibrationError(
                            f"--alpha {alpha:g} applies to every class of the model, and "
                            f"{too_small_message(c, old.n, alpha)} (calibrated at alpha {self._cals()[d].alpha:g}; "
                            "recalibrate it with more images first)")
                log.warning("alpha %g now applies to every class of the model, also to %s (calibrated at alpha %s): "
                            "their thresholds change", alpha, ", ".join(sorted(others)),
                            ", ".join(f"{a:g}" for a in sorted(kept)))
        by_model: dict[Path, dict[str, ClassCalibration]] = {}
        for c, cc in ccs.items():
            ref = self._reference_for(c) if self.needs_reference(self.model_for(c)) else None
            if ref is not None:
                cc.bank, cc.image_bank, cc.norm, cc.n_fit, cc.backbone = (ref.bank, ref.image_bank, ref.norm,
                                                                         ref.n_fit, ref.backbone)
            if math.isinf(cc.threshold(alpha)):
                raise CalibrationError(too_small_message(c, cc.n, alpha, cc.n_fit) + inherited)
            by_model.setdefault(self.model_for(c), {})[c] = cc
        cals = self._cals()
        for d, classes in by_model.items():
            score, latent = self.settings(d)
            pre = {"latent": latent, "smooth": self.smooth_sigma(d)}
            if any(p[0] in BACKBONE_PARTS for p in components(score)):
                pre["backbone"] = self.backbone(d).id  # sha256 of backbone.onnx: a swapped trunk is refused
            new = Calibration(score, alpha, self.runtime(d).model_id, pre, classes,
                              datetime.now(timezone.utc).isoformat(timespec="seconds"))
            old = cals.get(d)
            cals[d] = old.merged(new) if old else new
        self.__dict__.pop("_reference", None)
        self.__dict__.pop("_checked", None)

    def save(self) -> list[Path]:
        """Write each model's calibration into its manifest.json and feature banks into
        calibration.npz (both atomically); returns the files."""
        written = []
        for d, cal in self._cals().items():
            arrays = cal.arrays()
            if arrays is not None:
                written.append(atomic_write_bytes(d / ARRAYS_FILE, arrays))
            m = load_manifest(d)
            m["calibration"] = cal.to_dict(arrays)
            written.append(save_manifest(d, m))
        return written

    # ---- thresholds, p-values, predictions -----------------------------------------------
    @property
    def alpha_(self) -> float:
        if self.alpha is not None:
            return check_alpha(self.alpha)
        alphas = {cal.alpha for cal in self._cals().values()}
        if not alphas:
            raise CalibrationError(f"{self.model}: not calibrated; run `aekit calibrate {self.model} NORMAL_DIR`")
        return min(alphas)

    @property
    def thresholds_(self) -> dict[str, float]:
        """class -> threshold at alpha_ (inf: too few calibration images to flag at this alpha)."""
        return {c: cc.threshold(self.alpha_) for cal in self._cals().values() for c, cc in cal.classes.items()}

    def class_calibration(self, cls: str) -> ClassCalibration:
        """The calibration of a class; DetectorError/CalibrationError naming what is missing."""
        d = self.model_for(cls)
        cal = self._cals().get(d)
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
        """CalibrationError when the calibration does not belong to this model and these settings;
        checked once per model, calibration and settings (screening asks for every image)."""
        score, latent = self.settings(d)
        key = (d, id(cal), score, latent)
        checked = self.__dict__.setdefault("_checked", set())
        if key in checked:
            return
        if score != cal.score or latent != cal.preprocess.get("latent", "quantised"):
            raise CalibrationError(f"{d}: calibrated with score {cal.score} ({cal.preprocess.get('latent')} latent), "
                                   f"asked for {score} ({latent}); recalibrate or drop the option")
        if cal.preprocess.get("backbone") and cal.preprocess["backbone"] != self.backbone(d).id:
            raise CalibrationError(f"{d}: calibrated with another {d / 'backbone.onnx'} "
                                   f"({cal.preprocess['backbone'][:12]}…); recalibrate")
        rt_id = load_manifest(d)["model_id"]
        if cal.model_id != rt_id:
            raise CalibrationError(f"{d}: calibration belongs to model {cal.model_id}, not {rt_id}; recalibrate")
        checked.add(key)

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
        """Class of unlabelled images: the single calibrated (or routed) class, else 'default'. When fitting
        (calibrating a flat folder), a model already calibrated for several named classes needs --class: a
        new class 'default' beside them would make every later flat screen ambiguous."""
        routed = [c for c in self.routes if c is not None]
        if fitting:
            known = routed or [c for c in self.classes_ if c != DEFAULT_CLASS]
        else:
            known = routed if not self.classes_ else self.classes_
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
