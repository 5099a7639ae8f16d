#!/usr/bin/env bash
# Train and export the reference models used by the codec, detector and bench results.
#   bash bench/train_models.sh                 # all four models, two at a time
#   bash bench/train_models.sh fmnist-r4       # one of them
#   RESUME=1 bash bench/train_models.sh ...    # continue interrupted runs from runs/<name>/last.pt
# THREADS (default 1) torch threads per training; two trainings run at once on 2 cores.
# Writes runs/<name>/ (checkpoints, log.csv) and models/<name>/ (ONNX + manifest), and
# copies each training log to bench/results/training/<name>.csv with the command used.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d data/fmnist/train ] || aekit data fashion-mnist data/fmnist
[ -d data/photos ] || aekit data samples data/photos
mkdir -p bench/results/training runs

run() {  # name, then the aekit train arguments
  local name=$1; shift
  local cmd="aekit train $* --threads ${THREADS:-1} --out runs/$name"
  if [[ ${RESUME:-0} == 1 && -f runs/$name/last.pt ]]; then cmd="$cmd --resume"; else rm -rf "runs/$name"; fi
  echo "== $name: $cmd"
  $cmd 2> "runs/$name.stderr"
  aekit export "runs/$name/best.pt" --out "models/$name" --force --fp16 2>> "runs/$name.stderr"
  { echo "# $cmd"; echo "# machine: $(nproc) CPU cores, $(lscpu | sed -n 's/^Model name: *//p'), torch $(python -c 'import torch;print(torch.__version__)')";
    cat "runs/$name/log.csv"; } > "bench/results/training/$name.csv"
  echo "== $name done: $(tail -1 "runs/$name/log.csv")"
}

FMNIST="data/fmnist/train --val-data data/fmnist/test --resize none --channels 1 --width 32 --epochs 10 --batch-size 64"
PHOTOS="data/photos --channels 3 --resize random-crop --size 128 --repeat 48 --width 32 --epochs 12 --batch-size 16"
want=${1:-all}
pids=()
[[ $want == all || $want == fmnist-r4 ]] && { run fmnist-r4 $FMNIST --ratio 4 & pids+=($!); }
[[ $want == all || $want == fmnist-r9 ]] && { run fmnist-r9 $FMNIST --ratio 9 & pids+=($!); }
for p in "${pids[@]}"; do wait "$p"; done
pids=()
[[ $want == all || $want == photos-r4 ]] && { run photos-r4 $PHOTOS --ratio 4 & pids+=($!); }
[[ $want == all || $want == photos-r9 ]] && { run photos-r9 $PHOTOS --ratio 9 & pids+=($!); }
for p in "${pids[@]}"; do wait "$p"; done
exit 0
