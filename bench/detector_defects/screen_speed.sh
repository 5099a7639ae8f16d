#!/bin/bash
# Screening speed: 10,000 Fashion-MNIST test images through the 80-epoch sneaker model, 1 onnxruntime thread,
# wall clock of `aekit screen` including its start-up. Speeds are compared as ratios within one run.
#   bash bench/detector_defects/screen_speed.sh [OLD_PKG]
# OLD_PKG: a folder holding an older aekit package (aekit/ with detector/, export/, ... inside it), run on
# PYTHONPATH for the "before" rows in the same run; e.g. the tree of the commit before the speed work:
#   git archive d820274 aekit detector export codec bench serve | tar -x -C OLD && mkdir OLD/pkg && cp -r OLD/aekit OLD/pkg/ \
#     && for d in detector export codec bench serve; do ln -s OLD/$d OLD/pkg/aekit/$d; done     # OLD_PKG=OLD/pkg
# Each configuration is screened twice (interleaved); the table keeps the faster run. Outputs are deleted
# after each run, then sync and a pause, so no run pays for the previous run's deletions.
set -e
OLD_PKG=${1:-}
WORK=${WORK:-/work/det-runs/speed}
TEST=/tmp/det16/fmnist/test
MODEL=/tmp/det16/work/r4-w32-b1-e80-mse-defects0.9/sneaker-s0/model
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
mkdir -p "$WORK" && cd "$WORK"
if [ ! -d cal ]; then  # the model's 600-image calibration hold-out
  mkdir cal && python -c "import json,shutil; [shutil.copy(p, 'cal') for p in json.load(open('$MODEL/../split.json'))['cal']]"
fi
new() { python -m aekit.cli "$@"; }
old() { PYTHONPATH="$OLD_PKG" python -m aekit.cli "$@"; }
configs="new:mse new:mse-top1 new:mse-max+feat new:knn"
[ -n "$OLD_PKG" ] && configs="old:mse old:mse-top1 $configs"
for c in $configs; do  # one calibrated model copy per code version and score
  code=${c%%:*} score=${c#*:}
  rm -rf "m-$code-$score" && cp -r "$MODEL" "m-$code-$score"
  $code -q calibrate "m-$code-$score" cal --class sneaker --score "$score" --alpha 0.05 --threads 1 > /dev/null
done
for round in 1 2; do
  for c in $configs; do
    code=${c%%:*} score=${c#*:}
    for maps in no disk tmpfs; do  # tmpfs: the same maps written to /dev/shm (file creation without the disk's cost)
      [ $code = old ] && [ $maps != no ] && { [ $score = mse ] || [ $maps = tmpfs ]; } && continue
      extra=""; [ $maps = disk ] && extra="--maps maps"; [ $maps = tmpfs ] && extra="--maps /dev/shm/aekit-speed-maps"
      t0=$(date +%s.%N)
      $code -q screen "m-$code-$score" $TEST --class sneaker --out out --threads 1 $extra > /dev/null || true
      t1=$(date +%s.%N)
      echo "$round $code $score maps=$maps $(python -c "print(f'{10000/($t1-$t0):.0f}')")"
      # delete this run's 20,000 map files and let ext4 finish that work before the next timed run: deleted
      # right before a run, their journal work showed up as 10-20x slower file creation inside it
      rm -rf maps out* /dev/shm/aekit-speed-maps && sync && sleep 3
    done
  done
done
rm -rf /dev/shm/aekit-speed-maps
