#!/usr/bin/env bash
# Rate-distortion evidence of the photo codec models on the held-out photos (issue 13):
# the shipped gdn-hp models (stage 6: hyperprior refitted), the same before the refit (stage 5) and the
# factorized-prior gdn models they were warm-started from (every quality)
# against JPEG, WebP, AVIF and the klt envelope, per ratio.
#   bash codec/record_photos_rd.sh            # RUNS=runs MODELS=models DATA=data/photos
# Needs: aekit data photos $DATA; runs/photos-hp-r{4,9}-s6 and -s5, runs/photos-gdn-r{4,9}-s2 (stage 2) and
# runs/photos-klt-r{4,9}-w* (codec/train_klt.sh); exports them to $MODELS, then evaluates.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}; M=${MODELS:-models}; DATA=${DATA:-data/photos}
for run in "$RUNS"/photos-hp-r4-s6 "$RUNS"/photos-hp-r9-s6 "$RUNS"/photos-hp-r4-s5 "$RUNS"/photos-hp-r9-s5 \
           "$RUNS"/photos-gdn-r4-s2 "$RUNS"/photos-gdn-r9-s2 "$RUNS"/photos-klt-r*-w*; do
  [ -f "$run/best.pt" ] || continue
  name=$(basename "$run"); name=${name/photos-gdn-/photos-}; name=${name%-s2}; name=${name%-s6}
  [ -f "$M/$name/manifest.json" ] || aekit export "$run/best.pt" --out "$M/$name"
done
for r in 4 9; do
  klt=(); for k in "$M"/photos-klt-r$r-w*; do [ -d "$k" ] && klt+=(-m "$k"); done
  aekit evaluate "$DATA/test" -m "$M/photos-hp-r$r" -m "$M/photos-hp-r$r-s5" -m "$M/photos-r$r" "${klt[@]}" --tile 256 \
    -o codec/results/photos-rd-r$r --name "held-out photos (5: astronaut, coffee, LadyBird, Storm, GreenMeadow), ratio 1/$r"
done
