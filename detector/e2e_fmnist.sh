#!/usr/bin/env bash
# End-to-end CLI run on the benchmark's seed-0 Fashion-MNIST models (one model per class):
# assemble a detector directory, calibrate it on each class's held-out 10% (the same seeded
# split the benchmark used), screen the 10k test set (each image routed to its class's model)
# and evaluate one-vs-rest. Run after `python -m aekit.detector.benchmark` (it trains the models):
#   flock /tmp/aekit-cpu.lock bash detector/e2e_fmnist.sh [runs/detector-bench/r9-w16-b1-e8-mse]
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${1:-runs/detector-bench/r9-w16-b1-e8-mse}
WORK=runs/detector-e2e
rm -rf "$WORK" && mkdir -p "$WORK" detector/results
# the calibration hold-out of seed 0, as symlink class folders
python - "$WORK/cal" <<'PY'
import os, sys
from pathlib import Path
from aekit.images import scan_folder
from aekit.detector.benchmark import split
samples, classes, _ = scan_folder("data/fmnist/train")
for c in classes:
    _, cal = split([s for s in samples if s.label == c], 0.1, 0)
    d = Path(sys.argv[1]) / c
    d.mkdir(parents=True)
    for s in cal:
        os.symlink(s.path, d / s.path.name)
PY
models=()
for m in "$BENCH"/*-s0/model; do c=$(basename "$(dirname "$m")"); models+=("${c%-s0}=$m"); done
run() { echo "\$ $*"; "$@"; }
{
  run aekit detector assemble "$WORK/det" "${models[@]}"
  run aekit calibrate "$WORK/det" "$WORK/cal" --alpha 0.05 --score mse  # the recorded one-class protocol
  run aekit screen "$WORK/det" data/fmnist/test --out "$WORK/screen" --heatmaps "$WORK/heatmaps" || echo "exit code $?"
  run aekit detector evaluate "$WORK/det" data/fmnist/test --out detector/results/e2e_evaluate
} 2>&1 | tee detector/results/e2e_fmnist.log
cp "$WORK/screen.summary.json" detector/results/e2e_screen.summary.json
