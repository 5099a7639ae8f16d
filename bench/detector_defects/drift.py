"""FPR drift: calibrating on the training hold-out vs on (other) test-set normals, 200 random splits."""
import json, sys
from pathlib import Path
import numpy as np
from aekit.images import load_image
from aekit.detector.model import Detector
from aekit.detector.calibration import conformal_threshold
res = {}
for recipe, cls in [(r, c) for r in sys.argv[1].split(",") for c in sys.argv[2].split(",")]:
    work = Path("/tmp/det16/work") / recipe / f"{cls}-s0"
    cal = np.stack([load_image(p, 1)[0] for p in json.loads((work / "split.json").read_text())["cal"]])
    test = np.stack([load_image(p, 1)[0] for p in sorted(Path(f"/tmp/det16/fmnist/test/{cls}").iterdir())])
    for sc in sys.argv[3].split(","):
        det = Detector(work / "model", score=sc, alpha=0.05, threads=1)
        det.__dict__["calibrations_"] = {}; det.__dict__["_routes"] = {None: (work / "model").resolve()}
        sc_cal, sc_test = det.decision_function(cal, cls), det.decision_function(test, cls)
        rng = np.random.default_rng(0); a, b = [], []
        for _ in range(200):
            o = rng.permutation(len(test)); n = len(cal)
            tt = conformal_threshold(np.sort(sc_test[o[:n]]), 0.05)   # calibrate on n test normals
            a.append(np.mean(sc_test[o[n:]] > tt))
            th = conformal_threshold(np.sort(sc_cal), 0.05)            # calibrate on the training hold-out
            b.append(np.mean(sc_test[o[n:]] > th))
        # the two-sample question: are hold-out and test scores from one distribution?
        from scipy.stats import ks_2samp
        ks = ks_2samp(sc_cal, sc_test)
        r = {"n_cal": len(cal), "fpr_cal_on_train_holdout": float(np.mean(b)), "fpr_cal_on_test_normals": float(np.mean(a)),
             "fpr_sd_over_splits": float(np.std(a)), "ks_p_holdout_vs_test": float(ks.pvalue),
             "median_score_holdout": float(np.median(sc_cal)), "median_score_test": float(np.median(sc_test))}
        res[f"{recipe}/{cls}/{sc}"] = r
        print(recipe, cls, sc, {k: round(v, 4) for k, v in r.items()}, flush=True)
Path("/tmp/det16/res/drift.json").write_text(json.dumps(res, indent=1))
