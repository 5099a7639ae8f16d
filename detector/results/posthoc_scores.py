"""Ad-hoc: alternative scores on the seed-0 benchmark models (no retraining); output in RESULTS.md.

    python detector/results/posthoc_scores.py ankle_boot bag coat dress pullover sandal shirt sneaker t-shirt_top trouser
z(.) combinations are normalised with the test normals' statistics: an optimistic upper bound.
"""
import json, sys, numpy as np
from pathlib import Path
from sklearn.metrics import roc_auc_score
from aekit.detector.benchmark import load_all, split
from aekit.detector.model import Detector
from aekit.detector.scores import error_maps, reduce_maps
from aekit.images import scan_folder
test, _, _ = scan_folder("data/fmnist/test")
X = load_all(test); y = np.array([s.label for s in test])
work = Path("runs/detector-bench/r9-w16-b1-e8-mse")
res = {}
for cls in sys.argv[1:]:
    d = work / f"{cls}-s0" / "model"
    det = Detector(d, threads=1); rt = det.runtime(det.routes[None])
    hist = np.array(rt.manifest["latent_hist"], dtype=np.float64) + 0.5
    logp = np.log(hist / hist.sum(1, keepdims=True))  # (c_y, L)
    out = {k: [] for k in ("mse", "ssim", "rate", "mse_top", "ssim_top", "l1")}
    for i in range(0, len(X), 1000):
        x = X[i:i+1000]
        q = rt.quantise(rt.encode(x))  # (B, c, h, w)
        xh = rt.decode(rt.dequantise(q), 28, 28)
        m = error_maps(x, xh, "mse"); s = error_maps(x, xh, "ssim")
        out["mse"].append(reduce_maps(m)); out["ssim"].append(reduce_maps(s))
        out["l1"].append(np.abs(x.astype(float)-xh).mean((1,2,3)))
        c = np.arange(q.shape[1])[None, :, None, None]
        out["rate"].append(-logp[c, q].mean((1, 2, 3)))
        k = 50
        out["mse_top"].append(np.sort(m.reshape(len(m), -1), 1)[:, -k:].mean(1))
        out["ssim_top"].append(np.sort(s.reshape(len(s), -1), 1)[:, -k:].mean(1))
    sc = {k: np.concatenate(v) for k, v in out.items()}
    a = y != cls
    z = lambda v: (v - v[~a].mean()) / v[~a].std()  # (cheating normaliser: test normals; only to rank ideas)
    sc["mse+rate"] = z(sc["mse"]) + z(sc["rate"])
    sc["mse+ssim"] = z(sc["mse"]) + z(sc["ssim"])
    res[cls] = {k: round(roc_auc_score(a, v), 4) for k, v in sc.items()}
    print(cls, res[cls], flush=True)
keys = list(next(iter(res.values())))
print("mean", {k: round(np.mean([r[k] for r in res.values()]), 4) for k in keys})
