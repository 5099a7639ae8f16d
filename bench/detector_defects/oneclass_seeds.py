"""Gather oneclass.py results of several seeds (one recipe) into one JSON and a table: per class the mean
± std over seeds, the mean AUROC ± std of the per-seed means, the mean and worst class FPR (seed means).
    python bench/detector_defects/oneclass_seeds.py r9-w16-b1-e8-mse OUT.json SCORES DIRS_SEED0 DIRS_SEED1 ...
DIRS_SEEDk: comma-separated result folders of seed k, merged (each oneclass.py run writes the scores it was given)."""
import json
import sys
from pathlib import Path

import numpy as np

CLASSES = ("ankle_boot", "bag", "coat", "dress", "pullover", "sandal", "shirt", "sneaker", "t-shirt_top", "trouser")
recipe, out, scores, seed_dirs = sys.argv[1], Path(sys.argv[2]), sys.argv[3].split(","), sys.argv[4:]


def load(dirs: str) -> dict[str, dict]:
    return {c: {k: v for d in dirs.split(",") for k, v in json.loads(Path(f"{d}/oneclass-{recipe}-{c}.json").read_text())["results"].items()}
            for c in CLASSES}


per_seed = [load(d) for d in seed_dirs]
res = {"recipe": recipe, "seeds": len(per_seed), "alpha": 0.05, "protocol": "class normal, other nine anomalous, full 10k "
       "test set; calibrated on the class's 600-image training hold-out of each seed", "per_seed": per_seed, "summary": {}}
lines = ["| score | " + " | ".join(CLASSES) + " | mean ± std (seeds) | mean FPR | worst class FPR |", "|---" * (len(CLASSES) + 4) + "|"]
for s in scores:
    au = np.array([[100 * p[c][s]["oneclass_auroc"] for c in CLASSES] for p in per_seed])  # (seeds, classes)
    fp = np.array([[100 * p[c][s]["fpr_train_holdout_cal"] for c in CLASSES] for p in per_seed])
    means = au.mean(axis=1)
    res["summary"][s] = {"auroc_mean": float(means.mean()), "auroc_std_over_seeds": float(means.std(ddof=0)),
                         "auroc_per_seed": means.tolist(), "fpr_mean": float(fp.mean()),
                         "worst_class_fpr": float(fp.mean(axis=0).max()), "worst_class": CLASSES[int(fp.mean(axis=0).argmax())]}
    cells = " | ".join(f"{a:.1f}±{d:.1f}" for a, d in zip(au.mean(axis=0), au.std(axis=0)))
    lines.append(f"| {s} | {cells} | **{means.mean():.1f} ± {means.std():.1f}** | {fp.mean():.2f} % | "
                 f"{fp.mean(axis=0).max():.1f} % ({CLASSES[int(fp.mean(axis=0).argmax())]}) |")
out.write_text(json.dumps(res, indent=1) + "\n")
print("\n".join(lines))
