"""Gather the ten per-class one-class results of oneclass.py (one recipe, seed 0) into one JSON and a table.
    python bench/detector_defects/oneclass_summary.py r9-w16-b1-e8-mse OUT.json [RESULT_DIR ...]
RESULT_DIRs (default /tmp/det16/res) are merged: each oneclass.py run writes the scores it was given."""
import json
import sys
from pathlib import Path

import numpy as np

CLASSES = ("ankle_boot", "bag", "coat", "dress", "pullover", "sandal", "shirt", "sneaker", "t-shirt_top", "trouser")
recipe, out, dirs = sys.argv[1], Path(sys.argv[2]), sys.argv[3:] or ["/tmp/det16/res"]
per = {c: {k: v for d in dirs for k, v in json.loads(Path(f"{d}/oneclass-{recipe}-{c}.json").read_text())["results"].items()}
       for c in CLASSES}
scores = list(per[CLASSES[0]])
res = {"recipe": recipe, "seed": 0, "alpha": 0.05, "protocol": "class normal, other nine anomalous, full 10k test set; "
       "calibrated on the class's 600-image training hold-out", "per_class": per, "mean": {}}
lines = ["| score | " + " | ".join(CLASSES) + " | mean AUROC | mean FPR | worst FPR |", "|---" * (len(CLASSES) + 4) + "|"]
for s in scores:
    au = [100 * per[c][s]["oneclass_auroc"] for c in CLASSES]
    fp = [100 * per[c][s]["fpr_train_holdout_cal"] for c in CLASSES]
    res["mean"][s] = {"auroc": float(np.mean(au)), "fpr": float(np.mean(fp)), "worst_fpr": float(np.max(fp))}
    lines.append(f"| {s} | " + " | ".join(f"{a:.1f}" for a in au) + f" | **{np.mean(au):.1f}** | {np.mean(fp):.2f} % | {np.max(fp):.1f} % |")
out.write_text(json.dumps(res, indent=1) + "\n")
print("\n".join(lines))
