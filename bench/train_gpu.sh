#!/usr/bin/env bash
# One prepared GPU run for a photo model (issue 13: "where a GPU is available, train there too with one prepared
# script and record both recipes side by side"). It repeats the last CPU stages of bench/train_zoo.sh's recipe for
# NAME, with the training step on the GPU and far more crops than a CPU session can afford:
#   the shipped model's transform (aekit import NAME; a 1/4 model imports as its 1/9 source transform with
#   grid_scale 1.5)  ->  trained on end to end on the 28 photos of `aekit data photos --more` (photos-r4/-hq: on the
#   1.5x grid, --grid-scale 1.5, as their CPU fine-tunes)
#   ->  its hyperprior refitted at every quality step (CPU threads)  ->  exported  ->  (1/4) aekit rescale.
# The channel context, the int8 variants, the evaluation and the card stay on the CPU afterwards (bench/train_zoo.sh's
# context/add-int8 steps, `aekit evaluate`, `python -m aekit.bench.zoo refresh`): they need no GPU.
#
# On the device machine (the `run` tool: a bare image with torch (CUDA), onnx, onnxscript, numpy and pillow, a
# CPU-only onnxruntime, no network; one call at most 10 minutes):
#   here first: aekit data photos data/photos-plus --more          (the 28 training photos, 19 MB)
#               aekit import NAME --out runs/gpu-src/NAME-imported.pt   (10 MB; its check reads
#                 scikit-image's photos, which the device image lacks)
#               pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 --no-deps \
#                 constriction zstandard tqdm threadpoolctl -d .whl     (6 MB: the project's runtime needs)
#   carry:   data/photos-plus  runs/gpu-src  .whl
#   command: bash bench/train_gpu.sh photos-r4 6
# NAME: photos-r4 | photos-r4-hq | photos-r9 | photos-r9-hq; MINUTES: the training step's budget (default 6: the whole
# call then takes about 8.5 minutes). Everything it brings back lies under $OUT (default out/gpu-NAME here):
#   NAME.tar        the exported model folder models/zoo/NAME (for 1/4 also NAME-g15.tar, its 1.5x-grid source)
#   train.csv       the per-epoch log (aekit train's log.csv) with the command and the machine on top
#   refit.jsonl     the hyperprior refit's log;  run.log  everything printed
# Then, here: tar -xf NAME.tar (and NAME-g15.tar); add the context and int8 as bench/train_zoo.sh does; evaluate against the shipped model.
# Test on a CPU (no GPU needed; a few seconds of training): DEVICE=cpu SMOKE=1 bash bench/train_gpu.sh photos-r4 0.2
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: bash bench/train_gpu.sh NAME [MINUTES]  (NAME: photos-r4 photos-r4-hq photos-r9 photos-r9-hq)}
minutes=${2:-6}
case $name in
  photos-r4)    src=photos-r4;    rw=0.01;   grid=1.5 ;;
  photos-r4-hq) src=photos-r4-hq; rw=0.0025; grid=1.5 ;;
  photos-r9)    src=photos-r9;    rw=0.01;   grid=1 ;;
  photos-r9-hq) src=photos-r9-hq; rw=0.0025; grid=1 ;;
  *) echo "bench/train_gpu.sh: unknown model $name (photos-r4 photos-r4-hq photos-r9 photos-r9-hq)" >&2; exit 2 ;;
esac
OUT=${OUT:-out/gpu-$name}
mkdir -p "$OUT"
exec > >(tee "$OUT/run.log") 2>&1
device=${DEVICE:-cuda}
threads=$(nproc); (( threads > 8 )) && threads=8  # the refit's small networks gain little past 8
export OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1
started=$(date +%s)
say() { echo "== $(( $(date +%s) - started )) s: $*"; }

if ! python -c "import constriction, zstandard, tqdm, threadpoolctl" 2> /dev/null \
    && [[ -d .whl ]] && compgen -G ".whl/*.whl" > /dev/null; then
  say "installing the carried wheels"; pip install -q --no-deps --no-index .whl/*.whl
fi
pip show aekit > /dev/null 2>&1 || { say "installing the project"; pip install -q --no-deps -e .; }
python - <<'EOF'
import importlib, sys
missing = [m for m in ("torch", "onnx", "onnxscript", "onnxruntime", "numpy", "PIL", "constriction", "zstandard", "tqdm",
                       "threadpoolctl", "aekit") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"bench/train_gpu.sh: missing here: {', '.join(missing)} (carry their wheels in .whl)")
EOF
[[ -d data/photos-plus/train ]] || { echo "bench/train_gpu.sh: data/photos-plus/train: not here (carry data/photos-plus)" >&2; exit 2; }
[[ -e data/photos ]] || ln -sfn photos-plus data/photos  # aekit rescale's --check-data below

machine="$(python -c 'import aekit.machine as m, platform; print(m.cpu_name(), m.usable_cores(), "cores,", platform.python_version())') / torch $(python -c 'import torch; print(torch.__version__)')"
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU")
say "machine: $machine; GPU: $gpu"

run=runs/gpu/$name
rm -rf "$run" "$run-rf"  # one call, one run: a device machine starts bare anyway
mkdir -p runs/gpu models/zoo
src_ckpt=runs/gpu-src/$src-imported.pt  # made here before the call: import checks its graphs on scikit-image's
if [[ ! -f $src_ckpt ]]; then           # photos, which the device image lacks
  say "aekit import $src"; aekit import "$src" --out "$src_ckpt" --force
fi

# The CPU recipe's fine-tunes: batch 8 of 192² crops at lr 5e-5, a few hundred steps. Here: batch 16 of 256² crops,
# about 11,000 crops an epoch (--repeat 400 of 28 photos; 25 of them validate), a cosine over the budget from lr 1e-4, fp32 (bf16
# would round GDN's squares and the likelihoods the rate term differentiates).
repeat=400; epochs=40; batch=16; size=256
if [[ ${SMOKE:-0} == 1 ]]; then repeat=1; epochs=1; batch=2; size=128; fi
cmd="aekit train data/photos-plus/train --arch gdn-hp --channels 3 --ratio 9 --width 128 --size $size \
--resize random-crop --repeat $repeat --batch-size $batch --epochs $epochs --time-budget $minutes --lr 1e-4 \
--freeze-epochs 0 --clip-grad 1.0 --rate-weight $rw --grid-scale $grid --seed 0 --device $device --no-amp \
--threads $threads --out $run"
# The cosine should end when the budget does: one epoch first (checkpointed), then as many as the rest of the budget
# holds at that speed (--resume with --epochs N sets the schedule's length; the first epoch ran near the peak lr).
say "$cmd --init-from $src_ckpt --stop-after 1"
$cmd --init-from "$src_ckpt" --stop-after 1
n=$(python -c "
import csv
t = float(list(csv.DictReader(open('$run/log.csv')))[-1]['epoch_time_s'])
print(max(2, min(400, int($minutes * 60 // t))))")
say "first epoch timed: $n epochs in $minutes minutes"
$cmd --epochs "$n" --time-budget "$(python -c "print($minutes * 1.15)")" --resume  # a slow epoch must not cut the tail
{ echo "# bench/train_gpu.sh $name $minutes: $cmd --init-from $src_ckpt --stop-after 1, then --epochs N --resume"; echo "# machine: $machine; GPU: $gpu"; cat "$run/log.csv"; } > "$OUT/train.csv"

steps=2000; [[ ${SMOKE:-0} == 1 ]] && steps=4
say "aekit refit-hyperprior ($steps steps, $threads CPU threads)"
aekit refit-hyperprior "$run/best.pt" data/photos-plus/train --out "$run-rf" --steps $steps --lr 5e-4 \
  --threads $threads
cp "$run-rf/log.jsonl" "$OUT/refit.jsonl" 2>/dev/null || true

folders=()
if [[ $grid == 1 ]]; then
  aekit export "$run-rf/best.pt" --out "models/zoo/$name" --force
  folders+=("models/zoo/$name")
else
  aekit export "$run-rf/best.pt" --out "models/zoo/$name-g15" --force
  aekit rescale "models/zoo/$name-g15" --ratio 4 --out "models/zoo/$name" --force --check-data data/photos/train
  folders+=("models/zoo/$name-g15" "models/zoo/$name")
fi
for f in "${folders[@]}"; do  # one tar a folder: a file brought back holds at most 16 MiB
  tar -cf "$OUT/$(basename "$f").tar" "$f"; say "$OUT/$(basename "$f").tar: $(du -h "$OUT/$(basename "$f").tar" | cut -f1)"
done
say "done"
