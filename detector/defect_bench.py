"""Local-defect benchmark: seeded synthetic defects on held-out normal images, scored as `aekit screen` does.

    aekit bench-detect MODEL TEST_NORMAL_DIR --cal CAL_NORMAL_DIR --score ssim-max mse --out results/defects
Each score is calibrated (conformal, in memory: the model is not changed) on CAL_NORMAL_DIR, then
every test image is scored clean and with one synthetic defect (aekit.detector.defects). Reports
image AUROC, pixel AUROC, AUPRO (anomalib's definition: per-region overlap against the pixel
false-positive rate, integrated to FPR 0.3 and divided by 0.3), realised FPR at alpha on the clean
images, and recall per defect kind and size. Writes PREFIX.json and PREFIX.md.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from aekit.detector.defects import KINDS, SIZES, make_defects

AUPRO_MAX_FPR = 0.3  # anomalib's default integration limit
LARGE = 4  # "defects of 4 px and larger": the target set


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); numpy only."""
    labels = np.asarray(labels, bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = np.asarray(scores, np.float64)[order]
    ranks = np.empty(len(s))
    ranks[order] = _average_ranks(s)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(sorted_scores: np.ndarray) -> np.ndarray:
    """1-based ranks of sorted values, ties sharing their mean rank."""
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    return np.repeat(first + (counts + 1) / 2.0, counts)


def aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float = AUPRO_MAX_FPR, steps: int = 2000) -> float:
    """Normalised area under the per-region-overlap curve up to max_fpr (anomalib's AUPRO).

    maps (N, H, W) scores, masks (N, H, W) bool ground truth; each image's mask is one region
    (every synthetic defect is a single connected region). FPR counts pixels outside all masks."""
    neg = np.sort(maps[~masks])
    regions = [np.sort(m[k]) for m, k in zip(maps, masks) if k.any()]
    if not regions or not len(neg):
        return float("nan")
    lo = neg[max(0, int(np.floor(len(neg) * (1 - max_fpr))) - 1)]  # threshold where FPR reaches max_fpr
    hi = max(neg[-1], max(r[-1] for r in regions))
    t = np.linspace(hi, lo, steps)  # descending thresholds: FPR rises from 0 to max_fpr
    fpr = 1.0 - np.searchsorted(neg, t, side="right") / len(neg)
    pro = np.mean([1.0 - np.searchsorted(r, t, side="right") / len(r) for r in regions], axis=0)
    keep = fpr <= max_fpr
    f, p = np.concatenate([[0.0], fpr[keep], [max_fpr]]), np.concatenate([[0.0], pro[keep], [pro[keep][-1]]])
    return float(np.trapezoid(p, f) / max_fpr)


@dataclass
class DefectResult:
    score: str  # score spec
    alpha: float
    n_cal: int  # conformal calibration images (after any fit split)
    n_fit: int  # images fitting the bank / normalisers
    n_normal: int  # clean test images
    n_defective: int  # test images with one defect
    image_auroc: float
    image_auroc_large: float  # defects >= LARGE px only
    pixel_auroc: float
    aupro: float
    fpr: float  # realised false-positive rate on the clean test images
    recall: float  # all defects
    recall_large: float  # defects >= LARGE px
    recall_by_kind: dict[str, float] = field(default_factory=dict)
    recall_by_size: dict[str, float] = field(default_factory=dict)
    auroc_by_kind: dict[str, float] = field(default_factory=dict)
    threshold: float = 0.0
    score_s: float = 0.0  # seconds to score the test images (ratios within one run only)


def evaluate_score(det, cal: np.ndarray, test: np.ndarray, defective: np.ndarray, masks: np.ndarray,
                   kinds: list[str], sizes: list[int], cls: str) -> DefectResult:
    """Calibrate det on cal (in memory), score clean and defective test images, compute the metrics."""
    det.fit(cal, cls)
    cc = det.class_calibration(cls)
    t0 = time.monotonic()
    s_norm, m_norm = det.score_maps(test, cls)
    s_def, m_def = det.score_maps(defective, cls)
    elapsed = time.monotonic() - t0
    thr = cc.threshold(det.alpha_)
    kinds_a, sizes_a = np.array(kinds), np.array(sizes)
    flagged = s_def > thr
    lab = np.r_[np.zeros(len(s_norm), bool), np.ones(len(s_def), bool)]
    big = sizes_a >= LARGE
    maps = np.stack(m_norm + m_def)
    gt = np.concatenate([np.zeros_like(masks), masks])
    sub = np.random.default_rng(0).permutation(maps.size)[:2_000_000]  # pixel AUROC on a sample of pixels
    return DefectResult(
        score=det.settings(det.model_for(cls))[0], alpha=det.alpha_, n_cal=cc.n, n_fit=cc.n_fit,
        n_normal=len(s_norm), n_defective=len(s_def),
        image_auroc=auroc(lab, np.r_[s_norm, s_def]),
        image_auroc_large=auroc(np.r_[np.zeros(len(s_norm), bool), np.ones(int(big.sum()), bool)],
                                np.r_[s_norm, s_def[big]]),
        pixel_auroc=auroc(gt.ravel()[sub], maps.ravel()[sub]), aupro=aupro(maps, gt),
        fpr=float(np.mean(s_norm > thr)), recall=float(flagged.mean()), recall_large=float(flagged[big].mean()),
        recall_by_kind={k: float(flagged[kinds_a == k].mean()) for k in KINDS if (kinds_a == k).any()},
        recall_by_size={str(s): float(flagged[sizes_a == s].mean()) for s in SIZES if (sizes_a == s).any()},
        auroc_by_kind={k: auroc(np.r_[np.zeros(len(s_norm), bool), np.ones(int((kinds_a == k).sum()), bool)],
                                np.r_[s_norm, s_def[kinds_a == k]]) for k in KINDS if (kinds_a == k).any()},
        threshold=float(thr), score_s=round(elapsed, 2))


def run(model: str | Path, test: np.ndarray, cal: np.ndarray, scores: list[str], alpha: float = 0.05,
        cls: str = "default", seed: int = 0, object_level: int | None = 20, threads: int = 0) -> dict[str, Any]:
    """The benchmark on uint8 image arrays (N, H, W, C); returns the JSON-ready result."""
    from aekit.detector.model import Detector

    defective, masks, kinds, sizes = make_defects(test, seed, object_level=object_level)
    rows = []
    for spec in scores:
        det = Detector(model, score=spec, alpha=alpha, threads=threads, random_state=seed)
        det.__dict__["calibrations_"] = {}  # in memory only: ignore (and never write) a stored calibration
        det.__dict__["_routes"] = {None: Path(model).resolve()}
        rows.append(asdict(evaluate_score(det, cal, test, defective, masks, kinds, sizes, cls)))
    return {"benchmark": "local defects (aekit.detector.defects)", "model": str(model), "class": cls, "seed": seed,
            "kinds": list(KINDS), "sizes_px_at_28": list(SIZES), "object_level": object_level,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": _machine(), "results": rows}


def _machine() -> dict[str, Any]:
    import onnxruntime

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__}


def table(result: dict[str, Any]) -> str:
    """Markdown: one row per score."""
    head = ("| score | image AUROC | AUROC ≥4px | pixel AUROC | AUPRO | FPR@α | recall | recall ≥4px | "
            + " | ".join(f"recall {k}" for k in KINDS) + " |")
    lines = [head, "|" + "---|" * (8 + len(KINDS))]
    for r in result["results"]:
        lines.append(f"| {r['score']} | {r['image_auroc']:.3f} | {r['image_auroc_large']:.3f} | {r['pixel_auroc']:.3f} "
                     f"| {r['aupro']:.3f} | {100 * r['fpr']:.1f}% | {100 * r['recall']:.0f}% | "
                     f"{100 * r['recall_large']:.0f}% | "
                     + " | ".join(f"{100 * r['recall_by_kind'].get(k, float('nan')):.0f}%" for k in KINDS) + " |")
    return "\n".join(lines)


def load_folder(path: str | Path, channels: int, limit: int = 0) -> np.ndarray:
    """All images of a folder (recursively) as uint8 (N, H, W, C); they must share one size."""
    from aekit.images import load_image, scan_folder

    samples, _, _ = scan_folder(path)
    samples = samples[:limit] if limit else samples
    images = [load_image(s.path, channels)[0] for s in samples]
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"{path}: images of {len(shapes)} sizes; the benchmark needs one size (cut tiles first)")
    return np.stack(images)


def main(args) -> int:
    """`aekit bench-detect` handler."""
    from aekit.export.manifest import load_manifest

    channels = load_manifest(args.model)["channels"]
    test = load_folder(args.test_dir, channels, args.limit)
    cal = load_folder(args.cal, channels)
    res = run(args.model, test, cal, args.score, args.alpha, args.cls, args.seed,
              None if args.texture else args.object_level, args.threads)
    res["command"] = "aekit bench-detect " + " ".join(args.argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(res, indent=1) + "\n")  # not with_suffix: OUT may contain dots
    md = table(res)
    Path(f"{out}.md").write_text(f"`{res['command']}`\n\n{md}\n")
    print(md)
    return 0
