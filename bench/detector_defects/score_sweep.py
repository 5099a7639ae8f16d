"""Score sweep on one recipe's trained models (reconstructions once): smoothing sigma x reducer, per-pixel z-scored and
mean-subtracted maps (fitted on 180 of the 600 calibration images). rec_l_at_test5: recall >= 4 px at the test normals' own
95th percentile (the best any calibration could do). python bench/detector_defects/score_sweep.py RECIPE sneaker,trouser"""
import json, sys
from pathlib import Path
import numpy as np
from aekit.images import load_image
from aekit.detector.model import Detector
from aekit.detector.defects import make_defects
from aekit.detector.defect_bench import auroc
from aekit.detector.scores import mse_map, smooth, reduce_maps

recipe = sys.argv[1]
res = {}
for cls in sys.argv[2].split(","):
    work = Path("/tmp/det16/work") / recipe / f"{cls}-s0"
    cal = np.stack([load_image(p, 1)[0] for p in json.loads((work / "split.json").read_text())["cal"]])
    test = np.stack([load_image(p, 1)[0] for p in sorted(Path(f"/tmp/det16/fmnist/test/{cls}").iterdir())])
    defective, masks, kinds, sizes = make_defects(test, 0, object_level=20)
    det = Detector(work / "model", threads=1)
    d = work / "model"
    rec = lambda x: np.concatenate([det.reconstruct(d.resolve(), x[i:i+256]) for i in range(0, len(x), 256)])
    M = {k: mse_map(x, rec(x)) for k, x in (("cal", cal), ("norm", test), ("def", defective))}
    big = np.array(sizes) >= 4
    rng = np.random.default_rng([0, 1])
    order = rng.permutation(len(cal)); fit, cl = order[:180], order[180:]
    mu = M["cal"][fit].mean(0); sd = M["cal"][fit].std(0)
    def evalsc(f, name, cal_idx):
        sc = f(M["cal"][cal_idx]); sn = f(M["norm"]); sd_ = f(M["def"])
        n = len(sc); k = int(np.ceil((n + 1) * 0.95)); thr = np.sort(sc)[k - 1]
        lab = np.r_[np.zeros(len(sn), bool), np.ones(int(big.sum()), bool)]
        r = dict(auroc_l=auroc(lab, np.r_[sn, sd_[big]]), auroc=auroc(np.r_[np.zeros(len(sn), bool), np.ones(len(sd_), bool)], np.r_[sn, sd_]),
                 fpr=float(np.mean(sn > thr)), rec_l=float(np.mean(sd_[big] > thr)),
                 rec_l_at_test5=float(np.mean(sd_[big] > np.quantile(sn, 0.95))))
        res[f"{cls} {name}"] = r
        print(f"{cls:8s} {name:28s} AUROC {r['auroc']:.3f} AUROC>=4 {r['auroc_l']:.3f} FPR {100*r['fpr']:.1f} rec>=4 {100*r['rec_l']:.1f} rec>=4@testq95 {100*r['rec_l_at_test5']:.1f}", flush=True)
    all_i = np.arange(len(cal))
    for sig in (0, 0.5, 1, 1.5, 2):
        for red in ("max", "top0.5", "top1", "top2", "top5"):
            evalsc(lambda m: reduce_maps(smooth(m, sig), red), f"mse s{sig} {red}", all_i)
    for eps_name, eps in (("1e-4", 1e-4), ("1e-3", 1e-3), ("q50", float(np.median(sd)))):
        for sig in (0, 1):
            for red in ("max", "top1"):
                evalsc(lambda m: reduce_maps(smooth((m - mu) / (sd + eps), sig), red), f"z eps{eps_name} s{sig} {red}", cl)
    for sig in (0, 1, 1.5):
        for red in ("max", "top1"):
            evalsc(lambda m: reduce_maps(smooth(m - mu, sig), red), f"sub s{sig} {red}", cl)
            evalsc(lambda m: reduce_maps(smooth(m, sig) - smooth(mu[None], sig), red), f"subsm s{sig} {red}", cl)
Path(f"detector/results/defects/score-sweep-{recipe}.json").write_text(json.dumps(res, indent=1))
