import numpy as np
from scipy.stats import ks_2samp
from aekit.detector.defect_bench import load_folder
from aekit.detector.model import Detector
from aekit.detector.calibration import conformal_threshold
m = "/tmp/det16/wood-work/defects0.5/model"
cal, test, tr = load_folder("/tmp/det16/wood/cal", 3), load_folder("/tmp/det16/wood/test", 3), load_folder("/tmp/det16/wood/train", 3)[::8]
det = Detector(m, score="mse", threads=1); det.__dict__["calibrations_"] = {}; det.__dict__["_routes"] = {None: __import__("pathlib").Path(m)}
sc, st, sr = det.decision_function(cal, "w"), det.decision_function(test, "w"), det.decision_function(tr, "w")
print("median cal/test/train", np.median(sc), np.median(st), np.median(sr), "KS cal-test p", ks_2samp(sc, st).pvalue)
t = conformal_threshold(np.sort(sc), 0.05); print("fpr", np.mean(st > t), "train>t", np.mean(sr > t))
allv = np.r_[sc, st]; rng = np.random.default_rng(0); f = []
for _ in range(500):
    o = rng.permutation(480); f.append(np.mean(allv[o[240:]] > conformal_threshold(np.sort(allv[o[:240]]), 0.05)))
print("random re-split fpr mean", np.mean(f), "sd", np.std(f))
print("top test scores", np.sort(st)[-15:], "thr", t, "top cal", np.sort(sc)[-15:])
