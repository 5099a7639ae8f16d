"""Is a realised FPR off alpha because of drift, or because calibration and test sets are finite?
    python bench/detector_defects/fpr_exchangeability.py detector/results/defects/oneclass10-r9-w16-b1-e8-mse-fit-train-3seeds.json \
        detector/results/defects/fpr-exchangeability
For every score, seed and class of the one-class Fashion-MNIST runs: the realised FPR at alpha = 0.05, the
95 % range exchangeable normals give (aekit.detector.calibration.realised_fpr_range: beta-binomial), and the
two-sided p-value, for the two calibrations the runs recorded: the class's 600-image training hold-out
(tested on the class's 1000 test images) and a random half of the test normals (500, tested on the other
500: exchangeable by construction, the control). Writes OUT.json and OUT.md."""
import json
import sys
from pathlib import Path

import numpy as np

from aekit.detector.calibration import realised_fpr_pvalue, realised_fpr_range

PROTOCOLS = {"fpr_train_holdout_cal": ("training hold-out", 600, 1000), "fpr_test_half_cal": ("test half (control)", 500, 500)}
src, out = Path(sys.argv[1]), Path(sys.argv[2])
res = json.loads(src.read_text())
alpha = res["alpha"]
rows, summary = [], {}
for seed, per in enumerate(res["per_seed"]):
    for cls, scores in per.items():
        for score, m in scores.items():
            for key, (name, n_cal, n_test) in PROTOCOLS.items():
                fpr = m.get(key)
                if fpr is None or fpr != fpr:  # NaN: not recorded for this score
                    continue
                p = realised_fpr_pvalue(n_cal, alpha, n_test, round(fpr * n_test))
                lo, hi = realised_fpr_range(n_cal, alpha, n_test)
                rows.append({"seed": seed, "class": cls, "score": score, "calibration": name, "n_cal": n_cal,
                             "n_test": n_test, "fpr": fpr, "range_95": [lo, hi], "p_value": p,
                             "within_1_point": abs(fpr - alpha) <= 0.01})
for score in sorted({r["score"] for r in rows}):
    for name, _, _ in PROTOCOLS.values():
        sel = [r for r in rows if r["score"] == score and r["calibration"] == name]
        if sel:
            summary[f"{score} / {name}"] = {
                "runs": len(sel), "mean_fpr": float(np.mean([r["fpr"] for r in sel])),
                "outside_95_range": sum(r["p_value"] < 0.05 for r in sel),
                "within_1_point": sum(r["within_1_point"] for r in sel),
                "worst": max(sel, key=lambda r: abs(r["fpr"] - alpha))}
lo, hi = realised_fpr_range(600, alpha, 1000)
lines = [f"# Realised FPR against exchangeability (alpha = {alpha})", "",
         f"`python {' '.join(sys.argv)}`", "",
         f"Runs: {res['recipe']}, {res['seeds']} seeds x 10 classes. Exchangeable normals give a realised FPR in "
         f"{100 * lo:.1f}-{100 * hi:.1f} % with 95 % probability (600 calibration, 1000 test images); "
         f"{100 * realised_fpr_range(500, alpha, 500)[0]:.1f}-{100 * realised_fpr_range(500, alpha, 500)[1]:.1f} % "
         "for the 500/500 control. Expected outside the range with no drift: about 5 % of runs.", "",
         "| score / calibration | runs | mean FPR | within 1 point of alpha | outside the 95 % range (p < 0.05) | worst run |",
         "|---|---|---|---|---|---|"]
for k, v in summary.items():
    w = v["worst"]
    lines.append(f"| {k} | {v['runs']} | {100 * v['mean_fpr']:.2f} % | {v['within_1_point']} | {v['outside_95_range']} | "
                 f"{w['class']} seed {w['seed']}: {100 * w['fpr']:.1f} % (p = {w['p_value']:.3f}) |")
out.parent.mkdir(parents=True, exist_ok=True)
Path(f"{out}.json").write_text(json.dumps({"source": str(src), "alpha": alpha, "summary": summary, "runs": rows}, indent=1) + "\n")
Path(f"{out}.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
