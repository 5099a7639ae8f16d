"""One-class AUROC (class vs the other nine, full 10k test set) and FPR drift check, per score, on the trained models.
    python bench/detector_defects/oneclass.py RECIPE CLASS SCORES [FIT_FRACTION [OUT_DIR [train]]]
SEED=N in the environment reads the models of seed N (train_models.py ... SEED; default 0).
'train': banks and normalisers fit on the model's own training images (the class's training split less
the 600-image hold-out), and all 600 hold-out images calibrate (FIT_FRACTION is then unused)."""
import json, os, sys
from pathlib import Path
import numpy as np
from aekit.images import load_image, scan_folder
from aekit.detector.model import Detector
from aekit.detector.defect_bench import auroc
from aekit.detector.calibration import conformal_threshold

recipe, cls, scores = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
fit = float(sys.argv[4]) if len(sys.argv) > 4 else 0.3  # share of the hold-out fitting banks / normalisers
res_dir = Path(sys.argv[5]) if len(sys.argv) > 5 else Path("/tmp/det16/res")
fit_on_train = len(sys.argv) > 6 and sys.argv[6] == "train"
seed = int(os.environ.get("SEED", 0))
work = Path("/tmp/det16/work") / recipe / f"{cls}-s{seed}"
cal_paths = json.loads((work / "split.json").read_text())["cal"]
cal = np.stack([load_image(p, 1)[0] for p in cal_paths])
if fit_on_train:
    held = set(cal_paths)
    train_x = [load_image(s.path, 1)[0] for s in scan_folder("/tmp/det16/fmnist/train")[0]
               if s.label == cls and str(s.path) not in held]
samples, _, _ = scan_folder("/tmp/det16/fmnist/test")
X = np.stack([load_image(s.path, 1)[0] for s in samples]); y = np.array([s.label for s in samples]) != cls
out = {}
for sc in scores:
    det = Detector(work / "model", score=sc, alpha=0.05, threads=1, fit_fraction=fit,
                   n_neighbors=int(os.environ.get("KNN_K", 3)))  # KNN_K: neighbours of the knn score
    det.__dict__["calibrations_"] = {}; det.__dict__["_routes"] = {None: (work / "model").resolve()}
    if fit_on_train and det.needs_reference(det.routes[None]):
        det.fit_reference(train_x, cls)
    det.fit(cal, cls)
    s = det.decision_function(X, cls)
    t = det.thresholds_[cls]
    # exchangeability check: calibrate on half of the class's *test* normals, FPR on the other half
    sn = s[~y]; rng = np.random.default_rng(0); o = rng.permutation(len(sn)); a, b = sn[o[:500]], sn[o[500:]]
    t2 = conformal_threshold(np.sort(a), 0.05) if det.class_calibration(cls).n_fit == 0 or fit_on_train else float("nan")
    out[sc] = {"oneclass_auroc": auroc(y, s), "fpr_train_holdout_cal": float(np.mean(sn > t)),
               "fpr_test_half_cal": float(np.mean(b > t2)), "recall_other_classes": float(np.mean(s[y] > t))}
    print(recipe, cls, sc, {k: round(v, 4) for k, v in out[sc].items()}, flush=True)
res_dir.mkdir(parents=True, exist_ok=True)
(res_dir / f"oneclass-{recipe}-{cls}.json").write_text(json.dumps({"recipe": recipe, "class": cls, "seed": seed, "alpha": 0.05, "fit_fraction": fit,
    "fit_on": "training images" if fit_on_train else "hold-out share", "results": out}, indent=1))
