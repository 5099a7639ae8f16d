"""Alternative anomaly scores on the detector benchmark's trained models, after the fact (no retraining).

    python -m aekit.bench.detector_posthoc ankle_boot bag coat dress pullover sandal shirt sneaker t-shirt_top trouser
AUROC of each score per class and the mean, as recorded in detector/RESULTS.md ("Scored after the
fact"). z(.) combinations are normalised with the test normals' statistics: an optimistic upper
bound, only to rank ideas. Needs scikit-learn.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SCORES = ("mse", "ssim", "rate", "mse_top", "ssim_top", "l1")


def class_scores(model_dir: Path, X: np.ndarray, top_k: int = 50, chunk: int = 1000) -> dict[str, np.ndarray]:
    """Every score of SCORES for the images X (N, H, W, C) through one class's model."""
    from aekit.detector.model import Detector
    from aekit.detector.scores import error_maps, reduce_maps

    det = Detector(model_dir, threads=1)
    rt = det.runtime(det.routes[None])
    hist = np.array(rt.manifest["latent_hist"], dtype=np.float64) + 0.5
    logp = np.log(hist / hist.sum(1, keepdims=True))  # (c_y, L)
    out: dict[str, list[np.ndarray]] = {k: [] for k in SCORES}
    for i in range(0, len(X), chunk):
        x = X[i:i + chunk]
        q = rt.quantise(rt.encode(x))  # (B, c_y, h, w)
        xh = rt.decode(rt.dequantise(q), *x.shape[1:3])
        m, s = error_maps(x, xh, "mse"), error_maps(x, xh, "ssim")
        out["mse"].append(reduce_maps(m))
        out["ssim"].append(reduce_maps(s))
        out["l1"].append(np.abs(x.astype(float) - xh).mean((1, 2, 3)))
        c = np.arange(q.shape[1])[None, :, None, None]
        out["rate"].append(-logp[c, q].mean((1, 2, 3)))  # bits-like: rarer symbols score higher
        out["mse_top"].append(np.sort(m.reshape(len(m), -1), 1)[:, -top_k:].mean(1))
        out["ssim_top"].append(np.sort(s.reshape(len(s), -1), 1)[:, -top_k:].mean(1))
    return {k: np.concatenate(v) for k, v in out.items()}


def aurocs(sc: dict[str, np.ndarray], anomalous: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    def z(v: np.ndarray) -> np.ndarray:  # cheating normaliser (test normals): an upper bound
        return (v - v[~anomalous].mean()) / v[~anomalous].std()

    sc = dict(sc, **{"mse+rate": z(sc["mse"]) + z(sc["rate"]), "mse+ssim": z(sc["mse"]) + z(sc["ssim"])})
    return {k: round(float(roc_auc_score(anomalous, v)), 4) for k, v in sc.items()}


def main(argv: list[str] | None = None) -> int:
    from aekit.detector.benchmark import load_all
    from aekit.images import scan_folder

    p = argparse.ArgumentParser(prog="python -m aekit.bench.detector_posthoc", description=__doc__.split("\n")[0])
    p.add_argument("classes", nargs="+", help="class names (each has a model RUNS/<class>-s0/model)")
    p.add_argument("--test", default="data/fmnist/test", help="test folder, one subfolder per class")
    p.add_argument("--runs", default="runs/detector-bench/r9-w16-b1-e8-mse", help="the benchmark's work folder")
    args = p.parse_args(argv)
    test, _, _ = scan_folder(args.test)
    X, y = load_all(test), np.array([s.label for s in test])
    res = {}
    for cls in args.classes:
        res[cls] = aurocs(class_scores(Path(args.runs) / f"{cls}-s0" / "model", X), y != cls)
        print(cls, res[cls], flush=True)
    keys = list(next(iter(res.values())))
    print("mean", {k: round(float(np.mean([r[k] for r in res.values()])), 4) for k in keys})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
