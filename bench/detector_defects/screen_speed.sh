#!/bin/bash
# Screening speed: 10,000 Fashion-MNIST test images through the 80-epoch sneaker model, 1 onnxruntime thread,
# wall clock of `aekit screen` including its start-up. Speeds are compared as ratios within one run.
#   bash bench/detector_defects/screen_speed.sh [OLD_PKG]
# OLD_PKG: a folder holding an older aekit package (aekit/ with detector/, export/, ... inside it), run on
# PYTHONPATH for the "before" rows in the same run; e.g. the tree of the commit before the speed work:
#   git archive d820274 aekit detector export codec bench serve | tar -x -C OLD && mkdir OLD/pkg && cp -r OLD/aekit OLD/pkg/ \
#     && for d in detector export codec bench serve; do ln -s OLD/$d OLD/pkg/aekit/$d; done     # OLD_PKG=OLD/pkg
# Each configuration is screened twice (interleaved); the table keeps the faster run.
# Nothing is deleted while the runs go on, and the script waits out earlier deletions before its first run:
# this machine's ext4 has no journal, and without one ext4 will not reuse an inode deleted in the last
# 60-360 s (fs/ext4/ialloc.c, recently_deleted()): each new file then costs a scan over the inode table,
# 0.03 ms a file normally, 0.84 ms after 20,000 files were deleted nearby (perf: 59 % of the time in
# recently_deleted / find_get_block_common). Every run writes into its own folder; they are kept
# until the next run of the script, which deletes them first and then waits.
set -e
trap 'rm -rf /dev/shm/aekit-speed-maps' EXIT
OLD_PKG=${1:-}
WORK=${WORK:-/work/det-runs/speed}
TEST=/tmp/det16/fmnist/test
MODEL=/tmp/det16/work/r4-w32-b1-e80-mse-defects0.9/sneaker-s0/model
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
mkdir -p "$WORK" && cd "$WORK"
if ls -d runs-* > /dev/null 2>&1; then  # a previous run's outputs: delete them, then wait until ext4 may reuse the inodes
  rm -rf runs-* && sync && echo "deleted a previous run's outputs; waiting 6 minutes (ext4's recently-deleted window)" >&2 \
    && sleep 360
fi
stamp=runs-$(date +%s)
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
      run=$stamp/$round-$code-$score-$maps && mkdir -p $run
      extra=""; [ $maps = disk ] && extra="--maps $run/maps"; [ $maps = tmpfs ] && extra="--maps /dev/shm/aekit-speed-maps/$run"
      t0=$(date +%s.%N)
      $code -q screen "m-$code-$score" $TEST --class sneaker --out $run/out --threads 1 $extra > /dev/null || true
      t1=$(date +%s.%N)
      echo "$round $code $score maps=$maps $(python -c "print(f'{10000/($t1-$t0):.0f}')")"
      rm -rf /dev/shm/aekit-speed-maps  # tmpfs has no recently-deleted scan: its maps go at once
      sync && sleep 3  # this run's writes reach the disk before the next run starts
    done
  done
done
echo "outputs kept in $WORK/$stamp (the next run of this script deletes them and waits out the deletion)" >&2
