"""Wood texture FPR (issue 16): is the 11-15 % realised FPR a leak or a property of one split?

Scores the 480 held-out 32-px cells (240 cal + 240 test, none overlapping any training window: checked
below) of the wood photo with each model, then compares the realised FPR at alpha = 0.05 of
(a) the recorded split, (b) 1000 random cell re-splits, (c) splits by region (cal from one part of
the photo, test from another), and measures how strongly neighbouring cells' scores agree (Moran's I
over 4-neighbours on the 30 x 40 grid): spatial correlation shrinks the effective calibration size.
    python bench/detector_defects/wood_exchangeability.py > detector/results/defects/wood-exchangeability.json
"""
import json
import sys
from pathlib import Path

import numpy as np

from aekit.detector.calibration import conformal_threshold
from aekit.detector.defect_bench import load_folder
from aekit.detector.model import Detector

ROOT, WORK = Path("/tmp/det16/wood"), Path("/tmp/det16/wood-work")
ALPHA = 0.05


def cells(split):
    return [tuple(int(v) for v in p.stem.split("_")) for p in sorted((ROOT / split).iterdir())]


def fpr(cal, test):
    return float(np.mean(test > conformal_threshold(np.sort(cal), ALPHA)))


def morans_i(pos, s):
    """Moran's I of scores s at grid cells pos with 4-neighbour weights (0: no spatial correlation)."""
    idx = {p: i for i, p in enumerate(pos)}
    z = s - s.mean()
    num, w = 0.0, 0
    for (r, c), i in idx.items():
        for q in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if q in idx:
                num += z[i] * z[idx[q]]
                w += 1
    return float(len(s) / w * num / np.sum(z * z))


def main():
    # leak check: no training window (stride 8, named Y_X) overlaps a cal or test cell
    held = {(r, c) for sp in ("cal", "test") for r, c in cells(sp)}
    over = 0
    for p in (ROOT / "train").iterdir():
        y, x = (int(v) for v in p.stem.split("_"))
        over += any((r, c) in held for r in range(y // 32, (y + 31) // 32 + 1) for c in range(x // 32, (x + 31) // 32 + 1))
    cal_pos, test_pos = cells("cal"), cells("test")
    pos = cal_pos + test_pos
    images = np.concatenate([load_folder(ROOT / "cal", 3), load_folder(ROOT / "test", 3)])
    out = {"alpha": ALPHA, "training_windows_overlapping_held_out_cells": over, "models": {}}
    rng = np.random.default_rng(0)
    for name in sorted(p.name for p in WORK.iterdir()):
        m = WORK / name / "model"
        for score in ("mse", "mse-top1"):
            det = Detector(m, score=score, threads=1)
            det.__dict__["calibrations_"] = {}
            det.__dict__["_routes"] = {None: m.resolve()}
            s = det.decision_function(images, "wood")
            sc, st = s[:240], s[240:]
            rand = [fpr(s[o[:240]], s[o[240:]]) for o in (rng.permutation(480) for _ in range(1000))]
            rows = np.array([r for r, _ in pos])
            cols = np.array([c for _, c in pos])
            region = {"cal top half, test bottom": fpr(s[rows < 15], s[rows >= 15]),
                      "cal bottom half, test top": fpr(s[rows >= 15], s[rows < 15]),
                      "cal left half, test right": fpr(s[cols < 20], s[cols >= 20]),
                      "cal right half, test left": fpr(s[cols >= 20], s[cols < 20])}
            top = np.argsort(s)[-24:]  # the 5 % highest-scoring held-out cells
            out["models"][f"{name} {score}"] = {
                "recorded_split_fpr": fpr(sc, st),
                "random_resplits_fpr_mean": float(np.mean(rand)), "random_resplits_fpr_sd": float(np.std(rand)),
                "random_resplits_fpr_p95": float(np.quantile(rand, 0.95)),
                "random_resplits_share_above_alpha_plus_1pt": float(np.mean(np.array(rand) > ALPHA + 0.01)),
                "region_splits_fpr": region, "morans_i": morans_i(pos, s),
                "top5pct_cells_in_test": int(np.sum(top >= 240)),
                "top5pct_cells_rows": sorted(int(rows[i]) for i in top)}
            print(name, score, json.dumps(out["models"][f"{name} {score}"]), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
