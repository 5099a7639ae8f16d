#!/usr/bin/env bash
# Regenerate the codec evidence in codec/results/ from the reference models in models/.
#   flock /tmp/aekit-cpu.lock bash codec/record_results.sh          # about 25 min on 2 CPU cores
#   MODELS=/path/to/models bash codec/record_results.sh fmnist       # one part: fmnist | photos | throughput | large
# Needs models/{fmnist-r4,fmnist-r9,photos-r4,photos-r9} (bench/train_models.sh) and data/ (aekit data ...).
set -euo pipefail
cd "$(dirname "$0")/.."
M=${MODELS:-models}
want=${1:-all}
out=codec/results

if [[ $want == all || $want == fmnist ]]; then
  aekit evaluate data/fmnist/test -m "$M/fmnist-r4" -m "$M/fmnist-r9" --levels 256 64 32 16 8 \
    -o $out/fmnist --name "Fashion-MNIST test (10,000 images)"
fi
if [[ $want == all || $want == photos ]]; then
  # In-sample: the photos models train on random crops of these same 16 photos.
  aekit evaluate data/photos -m "$M/photos-r4" -m "$M/photos-r9" --levels 256 32 16 8 4 --tile 128 \
    -o $out/photos --name "16 photos (in-sample)"
fi
if [[ $want == all || $want == throughput ]]; then
  for r in 4 9; do
    python -m aekit.bench.codec_throughput data/fmnist/test -m "$M/fmnist-r$r" --sizes 1000 10000 \
      --out $out/throughput_fmnist-r$r.json
  done
fi
if [[ $want == all || $want == large ]]; then
  # A 28 Mpx image: tiled (default) vs forced full resolution; peak memory and identity of the outputs.
  tmp=$(mktemp -d)
  python -c "from PIL import Image; Image.open('data/photos/camera.png').convert('L').resize((6144, 4608), Image.BICUBIC).save('$tmp/big.png')"
  for mode in tiled full; do
    extra=(); [[ $mode == full ]] && extra=(--full-res-max-pixels 100000000)
    /usr/bin/time -v aekit compress "$tmp/big.png" -m "$M/fmnist-r4" -o "$tmp/$mode.ael" --no-progress "${extra[@]}" \
      2>&1 | grep -E "^compressed|Maximum resident" | sed "s/^/$mode compress: /"
    /usr/bin/time -v aekit decompress "$tmp/$mode.ael" -o "$tmp/$mode.png" -m "$M/fmnist-r4" --no-progress "${extra[@]}" \
      2>&1 | grep -E "^decompressed|Maximum resident" | sed "s/^/$mode decompress: /"
  done
  cmp "$tmp/tiled.png" "$tmp/full.png" && echo "tiled and full-resolution decodes are identical"
  rm -rf "$tmp"
fi
