#!/usr/bin/env bash
# The klt envelope with the post-filter (session 22), and the shipped photo models' standing against it.
# Evaluates the klt baselines (codec/train_klt.sh) on the held-out photos per ratio, then compares the shipped
# models' recorded curves (codec/results/photos-rd-fbits-r{9,4}/results.json, session 26: same format version,
# same held-out photos, the post-filter's taps unclipped; session 21's photos-rd-postfilter-r{9,4} before) with that
# envelope: BD-rate / BD-PSNR (codec/evaluate.py's rule) and how many klt points
# some shipped model beats (fewer bits and more PSNR). Writes codec/results/photos-rd-postfilter-klt-r{9,4}/ and
# vs-models.md there. About 10 min a ratio on one CPU thread.
#   bash codec/record_klt.sh            # MODELS=models DATA=data/photos
set -euo pipefail
cd "$(dirname "$0")/.."
M=${MODELS:-models}; DATA=${DATA:-data/photos}
for r in 9 4; do
  out=codec/results/photos-rd-postfilter-klt-r$r
  [ -f "$out/results.json" ] || aekit evaluate "$DATA/test" -m "$M/photos-klt-r$r-w0.003" -m "$M/photos-klt-r$r-w0.01" \
    -m "$M/photos-klt-r$r-w0.03" --device cpu -o "$out" \
    --name "held-out photos (5: astronaut, coffee, LadyBird, Storm, GreenMeadow), ratio 1/$r, klt baseline with the post-filter (format version 8)"
  python -m aekit.codec.vs_klt "$out/results.json" "codec/results/photos-rd-fbits-r$r/results.json" "$out/vs-models.md"
done
