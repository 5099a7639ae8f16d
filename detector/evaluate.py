"""Evaluate a calibrated detector on labelled images: AUROC, AUPRC, FPR and recall at the threshold.

    aekit detector evaluate models/det data/fmnist/test --out results/eval
Layouts: class subfolders (one-vs-rest: each calibrated class is normal, every other subfolder
its anomalies), or with --class NAME a good/ (or normal/) subfolder plus anomaly subfolders.
Writes OUT.json, OUT.md and OUT_roc.png. Needs scikit-learn (and matplotlib for the plot).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aekit.images import ImageError, atomic_write_bytes, scan_folder
from aekit.detector.jobs import ScreenConfig, _factor, load_chunks
from aekit.detector.model import Detector, DetectorError

NORMAL_NAMES = ("good", "normal")


@dataclass
class EvalResult:
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # class -> metrics; "mean" too
    markdown: str = ""
    failed: list[str] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # class -> (fpr, tpr)


def class_metrics(scores: np.ndarray, is_anomaly: np.ndarray, threshold: float, alpha: float) -> dict[str, Any]:
    """AUROC and AUPRC (anomalies positive), realised FPR and recall at the threshold."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    flagged = scores > threshold
    both = 0 < is_anomaly.sum() < len(is_anomaly)
    return {"n_normal": int((~is_anomaly).sum()), "n_anomalous": int(is_anomaly.sum()), "alpha": alpha,
            "threshold": None if math.isinf(threshold) else threshold,
            "auroc": float(roc_auc_score(is_anomaly, scores)) if both else None,
            "auprc": float(average_precision_score(is_anomaly, scores)) if both else None,
            "fpr": float(flagged[~is_anomaly].mean()) if (~is_anomaly).any() else None,
            "recall": float(flagged[is_anomaly].mean()) if is_anomaly.any() else None}


def exchangeability(m: dict[str, Any], n_cal: int, alpha: float) -> dict[str, Any]:
    """The realised FPR's 95 % range for normals exchangeable with the n_cal calibration images, and the
    two-sided p-value of the observed one (aekit.detector.calibration.realised_fpr_range / _pvalue):
    a p-value under 0.05 says these normals drifted from the calibration images (recalibrate on recent
    ones); inside the range, the gap to alpha is what finite sets give."""
    from aekit.detector.calibration import realised_fpr_pvalue, realised_fpr_range

    if m.get("fpr") is None or not m.get("n_normal") or not n_cal:
        return {"fpr_range_95": None, "fpr_p_value": None}
    flagged = round(m["fpr"] * m["n_normal"])
    return {"fpr_range_95": list(realised_fpr_range(n_cal, alpha, m["n_normal"])),
            "fpr_p_value": realised_fpr_pvalue(n_cal, alpha, m["n_normal"], flagged)}


def score_folder(det: Detector, samples: list, cls: str, cfg: ScreenConfig, failed: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Scores of all samples against class cls; (indices kept, scores)."""
    keep, scores = [], []
    for chunk in load_chunks(samples, det.channels, _factor(det), cfg):
        failed += [err for _, _, err in chunk if err]
        ok = [(i, im) for i, im, err in chunk if err is None]
        if ok:
            keep += [i for i, _ in ok]
            scores.append(det.decision_function([im for _, im in ok], cls))
    return np.array(keep, dtype=np.int64), np.concatenate(scores) if scores else np.zeros(0)


def evaluate_folder(model: str | Path, src: str | Path, out: str | Path, cls: str | None = None,
                    alpha: float | None = None, cfg: ScreenConfig | None = None) -> EvalResult:
    cfg = cfg or ScreenConfig()
    det = Detector(model, alpha=alpha, device=cfg.device, batch_size=cfg.batch_size, threads=cfg.threads)
    samples, folders, _ = scan_folder(src)
    if not folders:
        raise ImageError(f"{src}: a labelled folder needs subfolders (classes, or good/ + anomaly folders)")
    labels = np.array([s.label for s in samples])
    if cls:
        normal = [f for f in folders if f in NORMAL_NAMES]
        if not normal:
            raise ImageError(f"{src}: --class {cls} needs a subfolder named {' or '.join(NORMAL_NAMES)} (have: {', '.join(folders)})")
        plan = {cls: ~np.isin(labels, normal)}
    else:
        known = [c for c in folders if c in det.classes_]
        if not known:
            raise DetectorError(f"{src}: none of its subfolders ({', '.join(folders[:10])}) is a calibrated class "
                                f"(calibrated: {', '.join(det.classes_)}); use --class NAME with good/ and anomaly folders")
        plan = {c: labels != c for c in known}
    res = EvalResult()
    cache: dict[Path, tuple[np.ndarray, np.ndarray]] = {}  # one model scores all its classes identically
    for c, is_anom in plan.items():
        cc = det.class_calibration(c)
        d = det.model_for(c)
        if d not in cache:
            cache[d] = score_folder(det, samples, c, cfg, res.failed if not cache else [])
        keep, scores = cache[d]
        from sklearn.metrics import roc_curve

        res.metrics[c] = class_metrics(scores, is_anom[keep], cc.threshold(det.alpha_), det.alpha_)
        res.metrics[c]["n_calibration"] = cc.n
        res.metrics[c].update(exchangeability(res.metrics[c], cc.n, det.alpha_))
        if 0 < is_anom[keep].sum() < len(keep):
            fpr, tpr, _ = roc_curve(is_anom[keep], scores)
            res.curves[c] = (fpr, tpr)
    res.metrics["mean"] = {k: _mean([m[k] for m in res.metrics.values()]) for k in ("auroc", "auprc", "fpr", "recall")}
    res.markdown = markdown(res.metrics, det.alpha_)
    res.outputs = write_outputs(res, out, {"model": str(model), "data": str(src), "alpha": det.alpha_,
                                           "score": sorted({det.settings(det.model_for(c))[0] for c in plan})})
    return res


def _mean(values: list) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def markdown(metrics: dict[str, dict[str, Any]], alpha: float) -> str:
    lines = [f"| class | n normal | n anomalous | AUROC % | AUPRC % | FPR % (target {100 * alpha:g}) | "
             "FPR range if exchangeable (95 %) | p (drift) | recall % |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c, m in metrics.items():
        if c == "mean":
            continue
        rng, p = m.get("fpr_range_95"), m.get("fpr_p_value")
        lines.append(f"| {c} | {m['n_normal']} | {m['n_anomalous']} | {_pct(m['auroc'])} | {_pct(m['auprc'])} "
                     f"| {_pct(m['fpr'])} | {f'{100 * rng[0]:.1f}–{100 * rng[1]:.1f}' if rng else '-'} "
                     f"| {'-' if p is None else f'{p:.3f}' + (' **drift**' if p < 0.05 else '')} | {_pct(m['recall'])} |")
    m = metrics["mean"]
    lines.append(f"| **mean** | | | **{_pct(m['auroc'])}** | {_pct(m['auprc'])} | {_pct(m['fpr'])} | | | {_pct(m['recall'])} |")
    return "\n".join(lines)


def write_outputs(res: EvalResult, out: str | Path, info: dict[str, Any]) -> list[Path]:
    out = Path(out)
    body = {**info, "metrics": res.metrics, "failed": res.failed}
    paths = [atomic_write_bytes(Path(f"{out}.json"), (json.dumps(body, indent=1) + "\n").encode()),
             atomic_write_bytes(Path(f"{out}.md"), (res.markdown + "\n").encode())]
    try:
        paths.append(roc_plot(res.curves, Path(f"{out}_roc.png")))
    except ImportError:  # matplotlib is optional at run time
        pass
    return paths


def roc_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import auc

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for c, (fpr, tpr) in curves.items():
        ax.plot(fpr, tpr, lw=1.2, label=f"{c} ({100 * auc(fpr, tpr):.1f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate (recall)", title="ROC (AUROC %)")
    ax.legend(fontsize=7, loc="lower right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
