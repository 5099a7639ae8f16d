#!/usr/bin/env bash
# The linear baseline of issue 13: klt models (PCA patch transform, same latent shape as the shipped photo
# models; README "Codec quality") at three rate weights per ratio, whose union of curves is the "klt
# envelope" `aekit evaluate` reports BD-rate against. About a minute each on one CPU thread.
#   bash codec/train_klt.sh            # RUNS=runs MODELS=models DATA=data/photos
# Needs: aekit data photos $DATA. Writes $RUNS/photos-klt-r{4,9}-w{0.003,0.01,0.03} and exports each to $MODELS.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}; M=${MODELS:-models}; DATA=${DATA:-data/photos}
for r in 4 9; do
  for w in 0.003 0.01 0.03; do
    run="$RUNS/photos-klt-r$r-w$w"
    [ -f "$run/best.pt" ] || aekit train "$DATA/train" --arch klt --ratio "$r" --out "$run" --size 192 \
      --resize random-crop --repeat 16 --batch-size 8 --epochs 10 --lr 1e-3 --rate-weight "$w" \
      --threads 1 --seed 0
    [ -f "$M/photos-klt-r$r-w$w/manifest.json" ] || aekit export "$run/best.pt" --out "$M/photos-klt-r$r-w$w"
  done
done
