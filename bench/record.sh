#!/usr/bin/env bash
# Record the CPU results in bench/RESULTS.md (run under the shared CPU lock, nothing else heavy running):
#   flock /tmp/aekit-cpu.lock bash bench/record.sh [fmnist|photos|scaling|all]
# Writes bench/results/<name>{TAG}.{json,png,txt}; each .txt starts with the exact command and machine.
# FMNIST / PHOTOS name other model folders (e.g. same-architecture stand-ins), TAG suffixes the names.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/results
want=${1:-all}
FMNIST=${FMNIST:-models/fmnist-r4}
PHOTOS=${PHOTOS:-models/photos-r4}
TAG=${TAG:-}

rec() {  # name, then the aekit bench arguments
  local name=$1$TAG; shift
  local model=$1
  if [ ! -f "$model/manifest.json" ]; then echo "== $name: $model missing, skipped"; return; fi
  local cmd="aekit bench $* --json bench/results/$name.json"
  echo "== $name: $cmd"
  { echo "# $cmd"; echo "# $(date -u +%FT%TZ) on $(nproc) CPU cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load before: $(cut -d' ' -f1-3 /proc/loadavg)"; } > "bench/results/$name.txt"
  /usr/bin/time -v $cmd >> "bench/results/$name.txt" 2> >(tee "bench/results/$name.log" >&2)
  echo "   rc=$? -> bench/results/$name.{json,png,txt}"
}

if [[ $want == all || $want == fmnist ]]; then
  # Fashion-MNIST at its own 28x28: ORT and PyTorch eager, batch 1..256, plus file-to-file on 1,000 vs 10,000 files
  rec fmnist-r4-cpu $FMNIST --device cpu --backend ort-cpu,torch-eager --batch 1,8,64,256 \
      --images data/fmnist/test --seconds 1 --folder data/fmnist/test --folder-limit 1000,10000
fi
if [[ $want == all || $want == photos ]]; then
  # the photo model at 256x256: ORT and PyTorch eager, batch 1..32; torch.compile and fp16/bf16 at batch 8
  rec photos-r4-cpu $PHOTOS --device cpu --backend ort-cpu,torch-eager --batch 1,8,32 --size 256x256 \
      --images data/photos --seconds 1
  rec photos-r4-cpu-precisions $PHOTOS --device cpu --backend ort-cpu,torch-eager,torch-compile \
      --precision fp32,fp16,bf16 --batch 8 --size 256x256 --images data/photos --seconds 1 --no-jpeg
fi
if [[ $want == all || $want == scaling ]]; then
  # image-size scaling with memory: 256^2, 512^2, 1024^2 (ORT CPU)
  rec photos-r4-scaling $PHOTOS --device cpu --backend ort-cpu --batch 1,4,16 \
      --size 256x256,512x512,1024x1024 --images data/photos --seconds 1 --max-images 16
fi
exit 0
