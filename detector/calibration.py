"""Conformal calibration: per-class thresholds and p-values from scores of normal images.

Split-conformal rule: with n calibration scores of normal images, the threshold at level
alpha is the k-th smallest score, k = ceil((n + 1)(1 - alpha)); a new normal image (exchangeable
with the calibration images) scores above it with probability at most alpha. Its conformal
p-value is (1 + #{calibration scores >= s}) / (n + 1). Stored in the model manifest under
"calibration" (format below, versioned), so thresholds travel with the model files; feature
memory banks and PaDiM / PatchCore statistics go to `calibration.npz` beside it (its sha256 is in
the manifest).
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from aekit.detector.features import FeatureBank, ImageBank

CALIBRATION_VERSION = 2  # 2 added score specs, "norm", "n_fit" and the feature banks; 1 is still read
ARRAYS_FILE = "calibration.npz"  # feature banks, beside manifest.json
ALPHA_LADDER = (0.01, 0.05, 0.1, 0.2)  # default alpha: the smallest of these the calibration folder allows
# manifest["calibration"] = {"version": 2, "score": "ssim-max+feat", "alpha": 0.01, "model_id": ...,
#   "preprocess": {"latent": ..., "smooth": sigma}, "created": iso time, "arrays": {"file", "sha256"} | absent,
#   "classes": {name: {"n": int, "threshold": float | null (null = infinite), "scores": [sorted floats],
#                      "map_scale": float, "image_shape": [H, W] | null, "source": folder,
#                      "n_fit": images that fitted the bank / normalisers (not among the n),
#                      "norm": {part: [loc, scale]} (combined scores: sum of (s - loc) / scale)}}}


class CalibrationError(Exception):
    """Missing, foreign or unusable calibration (names the model and the class)."""


def check_alpha(alpha: float) -> float:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha {alpha} must be in (0, 1) (the false-positive rate allowed on normal images)")
    return float(alpha)


def conformal_rank(n: int, alpha: float) -> int:
    """k = ceil((n + 1)(1 - alpha)), 1-based rank of the threshold among n sorted scores."""
    check_alpha(alpha)
    return math.ceil(round((n + 1) * (1.0 - alpha), 9))  # round(): 100 * 0.99 must give 99


def min_calibration_size(alpha: float) -> int:
    """Smallest n for which a finite threshold exists at alpha: n >= 1/alpha - 1."""
    return math.ceil(round(1.0 / check_alpha(alpha) - 1.0, 9))


def default_alpha(n: int) -> float:
    """The smallest alpha of ALPHA_LADDER with a finite threshold for n calibration scores."""
    for a in ALPHA_LADDER:
        if n >= min_calibration_size(a):
            return a
    raise CalibrationError(f"{n} calibration images are too few for any alpha up to {ALPHA_LADDER[-1]} "
                           f"(need at least {min_calibration_size(ALPHA_LADDER[-1])})")


def conformal_threshold(sorted_scores: np.ndarray, alpha: float) -> float:
    """The k-th smallest calibration score; inf when k > n (nothing can be flagged)."""
    n = len(sorted_scores)
    k = conformal_rank(n, alpha)
    return float(sorted_scores[k - 1]) if k <= n else math.inf


def _flag_count_law(n_cal: int, alpha: float, n_test: int) -> Any | None:
    """The law of how many of n_test new normals exchangeable with n_cal calibration images score above
    the conformal threshold: beta-binomial(n_test, n+1-k, k) with k = conformal_rank (None when k > n:
    the threshold is infinite and nothing is flagged). Why: with continuous scores the threshold's
    false-positive probability F̄(t) is the (n+1-k)-th smallest of n+1 uniforms' upper tail, i.e.
    Beta(n+1-k, k) (Vovk 2012, "Conditional validity of inductive conformal predictors"; Angelopoulos &
    Bates 2021, "A gentle introduction to conformal prediction", sec. 3), and given it the count is binomial."""
    from scipy.stats import betabinom  # evaluation only (scikit-learn's dependency); screening never imports it

    k = conformal_rank(n_cal, alpha)
    return None if k > n_cal else betabinom(n_test, n_cal + 1 - k, k)


def realised_fpr_range(n_cal: int, alpha: float, n_test: int, level: float = 0.95) -> tuple[float, float]:
    """Central `level` range of the realised false-positive rate on n_test normal images exchangeable
    with the n_cal calibration images (see _flag_count_law): what finite calibration and test sets give
    with no drift at all. With n_cal = 600, n_test = 1000 and alpha = 0.05 it is 3.0-7.4 %, so a realised
    FPR a point or two from alpha is not by itself evidence of drift; one outside the range is."""
    law = _flag_count_law(n_cal, alpha, n_test)
    if law is None:
        return 0.0, 0.0
    tail = (1.0 - level) / 2
    return float(law.ppf(tail)) / n_test, float(law.ppf(1.0 - tail)) / n_test


def realised_fpr_pvalue(n_cal: int, alpha: float, n_test: int, flagged: int) -> float:
    """Two-sided p-value of `flagged` false positives among n_test normals under exchangeability with the
    calibration images (twice the smaller tail of _flag_count_law, at most 1): small values say the
    screened images drifted from the calibration images (recalibrate on recent ones)."""
    law = _flag_count_law(n_cal, alpha, n_test)
    if law is None:
        return 1.0 if flagged == 0 else 0.0
    return float(min(1.0, 2 * min(law.cdf(flagged), law.sf(flagged - 1))))


def p_values(sorted_scores: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Conformal p-values (1 + #{cal >= s}) / (n + 1) of scores against sorted calibration scores."""
    n = len(sorted_scores)
    at_least = n - np.searchsorted(sorted_scores, np.asarray(scores, dtype=np.float64), side="left")
    return (1.0 + at_least) / (n + 1.0)


@dataclass
class ClassCalibration:
    scores: np.ndarray  # (n,) sorted calibration scores of normal images of the class
    map_scale: float = 0.0  # 99.9th percentile of per-pixel errors on calibration images (heatmap scale)
    image_shape: list[int] | None = None  # [H, W] when all calibration images share one size
    source: str = ""  # folder the calibration images came from
    norm: dict[str, list[float]] = field(default_factory=dict)  # part -> [loc, scale] of combined scores
    n_fit: int = 0  # images used for the bank and normalisers (held apart from the n conformal scores)
    bank: FeatureBank | None = None  # encoder-feature memory bank (score 'feat')
    image_bank: ImageBank | None = None  # whole-latent memory bank (score 'knn')
    backbone: dict[str, np.ndarray] = field(default_factory=dict)  # PaDiM / PatchCore statistics ('padim_mean', …)

    @property
    def n(self) -> int:
        return len(self.scores)

    def threshold(self, alpha: float) -> float:
        return conformal_threshold(self.scores, alpha)

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        return p_values(self.scores, scores)


@dataclass
class Calibration:
    score: str  # score name the thresholds belong to (see aekit.detector.scores.SCORES)
    alpha: float  # default false-positive rate; screening may override it
    model_id: str  # the model the scores were computed with
    preprocess: dict[str, Any] = field(default_factory=dict)  # how images were fed (must match at screening)
    classes: dict[str, ClassCalibration] = field(default_factory=dict)
    created: str = ""

    def thresholds(self, alpha: float | None = None) -> dict[str, float]:
        a = self.alpha if alpha is None else check_alpha(alpha)
        return {c: cc.threshold(a) for c, cc in self.classes.items()}

    def arrays(self) -> bytes | None:
        """The feature banks as .npz bytes (None when no class has one)."""
        a = {}
        for c, cc in sorted(self.classes.items()):
            if cc.bank is not None:
                a.update(cc.bank.to_arrays(f"{c}/"))
            if cc.image_bank is not None:
                a.update(cc.image_bank.to_arrays(f"{c}/"))
            a.update({f"{c}/{k}": v for k, v in cc.backbone.items()})
        if not a:
            return None
        buf = io.BytesIO()
        np.savez(buf, **a)
        return buf.getvalue()

    def to_dict(self, arrays: bytes | None = None) -> dict[str, Any]:
        t = self.thresholds()
        extra = {"arrays": {"file": ARRAYS_FILE, "sha256": hashlib.sha256(arrays).hexdigest()}} if arrays else {}
        return {
            "version": CALIBRATION_VERSION,
            "score": self.score,
            "alpha": self.alpha,
            "model_id": self.model_id,
            "preprocess": self.preprocess,
            "created": self.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "rule": "threshold = ceil((n+1)(1-alpha))-th smallest score (null: infinite); "
                    "p = (1 + #{scores >= s}) / (n + 1); anomaly when score > threshold",
            "classes": {
                c: {"n": cc.n, "threshold": None if math.isinf(t[c]) else t[c],
                    "map_scale": cc.map_scale, "image_shape": cc.image_shape, "source": cc.source,
                    "n_fit": cc.n_fit, "norm": cc.norm, "scores": [float(s) for s in cc.scores]}
                for c, cc in sorted(self.classes.items())
            },
            **extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "manifest", arrays: bytes | None = None) -> "Calibration":
        """From the manifest's dict; arrays: the bytes of calibration.npz (checked against its sha256)."""
        if not isinstance(d, dict) or d.get("version") not in (1, CALIBRATION_VERSION):
            got = d.get("version") if isinstance(d, dict) else type(d).__name__
            raise CalibrationError(f"{where}: calibration version {got} unsupported (expected {CALIBRATION_VERSION})")
        try:
            classes = {
                c: ClassCalibration(np.sort(np.asarray(v["scores"], dtype=np.float64)), float(v.get("map_scale", 0.0)),
                                    v.get("image_shape"), v.get("source", ""), dict(v.get("norm", {})),
                                    int(v.get("n_fit", 0)))
                for c, v in d["classes"].items()
            }
            _attach_banks(classes, d.get("arrays"), arrays, where)
            return cls(d["score"], float(d["alpha"]), d["model_id"], d.get("preprocess", {}), classes,
                       d.get("created", ""))
        except (KeyError, TypeError, ValueError) as e:
            raise CalibrationError(f"{where}: malformed calibration ({type(e).__name__}: {e})") from None

    def merged(self, other: "Calibration") -> "Calibration":
        """This calibration with other's classes added or replaced (same score and preprocessing)."""
        if (other.score, other.preprocess, other.model_id) != (self.score, self.preprocess, self.model_id):
            return other  # incompatible: the new calibration replaces the old one entirely
        return Calibration(other.score, other.alpha, other.model_id, other.preprocess,
                           {**self.classes, **other.classes}, other.created)


def _attach_banks(classes: dict[str, ClassCalibration], meta: dict | None, arrays: bytes | None, where: str) -> None:
    if not meta:
        return
    if arrays is None or hashlib.sha256(arrays).hexdigest() != meta.get("sha256"):
        what = "missing" if arrays is None else "does not match its sha256"
        raise CalibrationError(f"{where}: feature bank file {meta.get('file')} {what}; recalibrate")
    a = dict(np.load(io.BytesIO(arrays)))
    for c, cc in classes.items():
        if f"{c}/bank" in a:
            cc.bank = FeatureBank.from_arrays(a, f"{c}/")
        if f"{c}/knn_bank" in a:
            cc.image_bank = ImageBank.from_arrays(a, f"{c}/")
        cc.backbone = {k[len(c) + 1:]: v for k, v in a.items()
                       if k.startswith(f"{c}/padim_") or k.startswith(f"{c}/patchcore_")}


def too_small_message(name: str, n: int, alpha: float, n_fit: int = 0) -> str:
    """One line: why no finite threshold exists and the minimum count of normal images for alpha."""
    need = min_calibration_size(alpha)
    fit = f" plus the {n_fit} that fit the score" if n_fit else ""
    ok = [a for a in ALPHA_LADDER if n >= min_calibration_size(a)]
    hint = f"; add normal images or use alpha >= {ok[0]:g}" if ok else "; add normal images"
    return (f"class {name!r}: {n} calibration images are too few for alpha={alpha:g} "
            f"(need at least {need}{fit}): the threshold would be infinite and nothing could be flagged{hint}")
