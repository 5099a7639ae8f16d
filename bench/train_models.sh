#!/usr/bin/env bash
# Train and export the reference models used by the codec, detector and bench results.
#   bash bench/train_models.sh            # all four models (about an hour on 2 CPU cores)
#   bash bench/train_models.sh fmnist-r4  # one of them
# Writes runs/<name>/ (checkpoints, log.csv) and models/<name>/ (ONNX + manifest), and
# copies each training log to bench/results/training/<name>.csv with the command used.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d data/fmnist/train ] || aekit data fashion-mnist data/fmnist
[ -d data/photos ] || aekit data samples data/photos
mkdir -p bench/results/training

run() {  # name, then the aekit train arguments
  local name=$1; shift
  local cmd="aekit train $* --out runs/$name"
  echo "== $name: $cmd"
  rm -rf "runs/$name"
  /usr/bin/time -v $cmd 2> >(tee "runs/$name.stderr" >&2)
  aekit export "runs/$name/best.pt" --out "models/$name" --force --fp16
  { echo "# $cmd"; echo "# machine: $(nproc) CPU cores, $(python -c 'import platform;print(platform.processor() or platform.machine())'), torch $(python -c 'import torch;print(torch.__version__)')";
    cat "runs/$name/log.csv"; } > "bench/results/training/$name.csv"
}

FMNIST="data/fmnist/train --val-data data/fmnist/test --resize none --channels 1 --width 32 --epochs 10 --batch-size 64"
PHOTOS="data/photos --channels 3 --resize random-crop --size 128 --repeat 48 --width 32 --epochs 20 --batch-size 16"
want=${1:-all}
[[ $want == all || $want == fmnist-r4 ]] && run fmnist-r4 $FMNIST --ratio 4
[[ $want == all || $want == fmnist-r9 ]] && run fmnist-r9 $FMNIST --ratio 9
[[ $want == all || $want == photos-r4 ]] && run photos-r4 $PHOTOS --ratio 4
[[ $want == all || $want == photos-r9 ]] && run photos-r9 $PHOTOS --ratio 9
exit 0
