#!/usr/bin/env bash
# Rebuild the reference models shipped in aekit/zoo/ (the model zoo) from data that installs here.
#   bash bench/train_zoo.sh                    # every model: train (resuming), export, evaluate, card
#   bash bench/train_zoo.sh fmnist-r4          # one of them: photos-r9 photos-r9-hq photos-r9-fast photos-r4 photos-r4-hq fmnist-r4 fmnist-r9 fmnist-detect
#   CARDS=0 bash bench/train_zoo.sh ...        # train and export only (models/zoo/NAME), no install or card
# An interrupted run continues from runs/zoo/NAME/last.pt (--resume); a finished one is not retrained.
# One torch thread per training (THREADS), niced: the recorded models were trained on a shared 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${THREADS:-1} OMP_WAIT_POLICY=PASSIVE
T="--threads ${THREADS:-1} --seed 0"
mkdir -p runs/zoo models/zoo

train() {  # NAME, then the aekit train arguments; resumes an interrupted run, skips a finished one
  local name=$1; shift
  local out=runs/zoo/$name
  [[ -f $out/done ]] && { echo "== $name: trained (rm $out/done to retrain)"; return; }
  local resume=""; [[ -f $out/last.pt ]] && resume="--resume"
  echo "== $name: aekit train $* $T --out $out $resume"
  nice -n 19 aekit train "$@" $T --out "$out" $resume
  touch "$out/done"
}

# RUN OUT STEPS [more refit-hyperprior args]: RUN/best.pt's hyperprior refitted into OUT (aekit refit-hyperprior)
# on the images of RDATA (default data/photos/train); resumes an interrupted refit, skips a finished one
refit() {
  local src=$1 out=$2 steps=$3; shift 3
  local resume=""; [[ -f $out/last.pt ]] && resume="--resume"
  [[ -f $out/best.pt ]] || nice -n 19 aekit refit-hyperprior "$src/best.pt" ${RDATA:-data/photos/train} \
    --out "$out" --steps "$steps" --lr 5e-4 --threads ${THREADS:-1} "$@" $resume
}

# CKPT OUT DATA STEPS MODEL...: a channel context (coder 6) trained on CKPT's frozen latents (aekit fit-context, resumes
# an interrupted one, skips a finished one), then added to each exported MODEL folder (aekit add-context; same model id).
# CTX_WIDTH: its hidden channels (default 96; the hq models' are 48, half the bytes: the zoo's 50 MB budget)
context() {
  local ckpt=$1 out=$2 data=$3 steps=$4; shift 4
  local resume=""; [[ -f $out/last.pt ]] && resume="--resume"
  [[ -f $out/context.pt ]] || nice -n 19 aekit fit-context "$ckpt" "$data" --out "$out" --steps "$steps" \
    --threads ${THREADS:-1} --seed 0 --width ${CTX_WIDTH:-96} --val-data "${data%/train}/test" $resume
  for m in "$@"; do nice -n 19 aekit add-context "$m" "$out/context.pt" --force; done
}

export_model() {  # NAME [more aekit export args]: runs/zoo/RUN/best.pt (RUN: default NAME) -> models/zoo/NAME -> aekit/zoo/NAME + card
  local name=$1; shift
  nice -n 19 aekit export "runs/zoo/${RUN:-$name}/best.pt" --out "models/zoo/$name" --force "$@"
  [[ ${CARDS:-1} == 1 ]] && nice -n 19 python -m aekit.bench.zoo build "$name"  # held-out evaluate, card.json
  return 0
}

want=${*:-photos-r9 photos-r9-hq photos-r9-fast photos-r4 photos-r4-hq fmnist-r4 fmnist-r9 fmnist-detect}
need() { [[ " $want " == *" $1 "* ]]; }

# Fashion-MNIST (Debian's dataset-fashion-mnist). fmnist-detect: a seeded 10,000-image subset of the train split,
# 8 epochs (about 5 min of one core), validated on a 10 % split of it; the test split stays held out for the cards.
FM="data/fmnist/train --resize none --channels 1 --width 32 --batch-size 64 --max-images 10000 --epochs 8"
if need fmnist-r4 || need fmnist-r9 || need fmnist-detect; then
  [[ -d data/fmnist/test ]] || aekit data fashion-mnist data/fmnist
fi
# fmnist-r4: a rate-distortion gdn model at H/4 (4 channels: 7 x 7 positions on a 28² image; at the default H/16
# a 28² image is 2 x 2) with four residual units after each GDN/IGDN (two until 2026-12-03: +0.6 dB at the top
# qualities for twice the network work), trained on all 54,000 training images, exported with fp16-stored weights.
# Started for 5 epochs and paused after 2 (--stop-after), then resumed for 12 in all (the cosine schedule stretched
# from epoch 3). The recorded run (98 min, one shared core) was interrupted once more: its epoch 3 ran under
# --epochs 20 before the --epochs 12 resume (bench/results/training/fmnist-r4-rb4.csv). It was still improving, so
# stage 2 (since session 27) trains on from its best.pt with a fresh optimiser and a second cosine from lr 2e-4, 8
# epochs within a 62-minute budget (recorded: the budget stopped it after 7, best.pt = epoch 7;
# bench/results/training/fmnist-r4-s2.csv): +0.48 dB validation PSNR at the same estimated rate.
FMRD="data/fmnist/train --arch gdn --channels 1 --ratio 4 --factor 4 --width 64 --res-blocks 2 --resize none --batch-size 64 --lr 5e-4 --clip-grad 1.0 --rate-weight 0.0005"
FMRD4=${FMRD/--res-blocks 2/--res-blocks 4}
if need fmnist-r4; then
  [[ -f runs/zoo/fmnist-r4/last.pt || -f runs/zoo/fmnist-r4/done ]] \
    || nice -n 19 aekit train $FMRD4 --epochs 5 --stop-after 2 $T --out runs/zoo/fmnist-r4
  train fmnist-r4 $FMRD4 --epochs 12 --time-budget 100
  [[ -f runs/zoo/fmnist-r4-s2/last.pt ]] || init="--init-from runs/zoo/fmnist-r4/best.pt"
  train fmnist-r4-s2 ${FMRD4/--lr 5e-4/--lr 2e-4} --epochs 8 --time-budget 62 ${init:-}; unset init
  RUN=fmnist-r4-s2 export_model fmnist-r4 --weights fp16
fi
# fmnist-r9: the same design at 1/9, H/6 (4 channels: 5 x 5 positions on a 28² image padded to 30²), one run
# of at most 22 epochs within a 45-minute budget.
need fmnist-r9 && { train fmnist-r9 ${FMRD/--ratio 4 --factor 4/--ratio 9 --factor 6} --epochs 22 --time-budget 45;
                    export_model fmnist-r9; }
# The detector: one shared ratio-1/4 model trained not to copy local defects (README: Detector).
need fmnist-detect && { train fmnist-detect $FM --ratio 4 --noise defects:0.9; export_model fmnist-detect; }

# Photos (aekit data photos: the bundled photos + Debian's mate backgrounds, fixed held-out split):
# the rate-distortion gdn models, the lead's recipe (codec issue).
PH="data/photos/train --arch gdn --width 128 --size 192 --resize random-crop --repeat 16 --batch-size 8 --epochs 30 --time-budget 60 --lr 5e-4 --clip-grad 1.0 --rate-weight 0.01"
if need photos-r4 || need photos-r4-hq || need photos-r9 || need photos-r9-hq || need photos-r9-fast; then
  [[ -d data/photos/test ]] || aekit data photos data/photos
fi
# photos-r9's stages 9-10 and photos-r4's grid fine-tune train on 28 photos: the same set plus the 12 photographs among
# Plasma's wallpapers
if need photos-r9 || need photos-r4; then
  [[ -d data/photos-plus/test ]] || aekit data photos data/photos-plus --more
fi
# Stage 2 trains on from stage 1's last weights with a fresh cosine schedule at a lower peak lr
# (--init-from): stage 1 was still improving when its schedule ran out.
PH2="data/photos/train --arch gdn --width 128 --size 192 --resize random-crop --repeat 16 --batch-size 8 --epochs 55 --time-budget 70 --lr 3e-4 --clip-grad 1.0 --rate-weight 0.01"
# Stage 3 adds the mean-scale hyperprior (--arch gdn-hp) on stage 2's transforms: 10 epochs train the
# new hyperprior with the transforms frozen (--freeze-epochs), then 30 train everything (hyperprior lr 5x);
# stage 4 trains on for 30 epochs at lr 1e-4, stage 5 34 more (the first 8 with the transforms frozen).
# Stage 6 (aekit refit-hyperprior) retrains only h_a, h_s and z's prior on cached latents of the frozen
# transforms, at the codec's rounding and every quality step: same decoded images, fewer bits.
# (The recorded stages 3 and 4 ran earlier code: stage 3 without the mean (commit 9c0172c), stage 4 with
# the mean but h_a on |y| (e032bf9); stage 5 retrained the hyperprior on the signed y: codec/RESULTS.md.)
PH3="data/photos/train --arch gdn-hp --width 128 --size 192 --resize random-crop --repeat 16 --batch-size 8 --epochs 40 --time-budget 45 --lr 2e-4 --freeze-epochs 10 --clip-grad 1.0 --rate-weight 0.01"
PH4="data/photos/train --arch gdn-hp --width 128 --size 192 --resize random-crop --repeat 16 --batch-size 8 --epochs 30 --time-budget 30 --lr 1e-4 --freeze-epochs 0 --clip-grad 1.0 --rate-weight 0.01"
PH5="data/photos/train --arch gdn-hp --width 128 --size 192 --resize random-crop --repeat 16 --batch-size 8 --epochs 34 --time-budget 25 --lr 1e-4 --freeze-epochs 8 --clip-grad 1.0 --rate-weight 0.01"
# (photos-r4 was this recipe at --ratio 4, 192 channels at H/16, until 2026-12-01: it saturated near 30 dB and
# was replaced by photos-r9 rescaled, below.) The loop keeps the ratio variable for a 1/4 transform of its own.
for r in 9; do
  need photos-r9 || need photos-r9-hq || need photos-r9-fast || need photos-r4 || need photos-r4-hq || continue
  train photos-r$r $PH --ratio $r
  [[ -f runs/zoo/photos-r$r-s2/last.pt ]] || init="--init-from runs/zoo/photos-r$r/last.pt"
  train photos-r$r-s2 $PH2 --ratio $r ${init:-}; unset init
  [[ -f runs/zoo/photos-r$r-hp/last.pt ]] || init="--init-from runs/zoo/photos-r$r-s2/last.pt"
  train photos-r$r-hp $PH3 --ratio $r ${init:-}; unset init
  [[ -f runs/zoo/photos-r$r-hp-s4/last.pt ]] || init="--init-from runs/zoo/photos-r$r-hp/last.pt"
  train photos-r$r-hp-s4 $PH4 --ratio $r ${init:-}; unset init
  [[ -f runs/zoo/photos-r$r-hp-s5/last.pt ]] || init="--init-from runs/zoo/photos-r$r-hp-s4/last.pt"
  train photos-r$r-hp-s5 $PH5 --ratio $r ${init:-}; unset init
  # stage 6: the hyperprior alone, refitted on stage 5's frozen transforms at every quality step (same images, fewer bits)
  rf=runs/zoo/photos-r$r-hp-s6
  refit runs/zoo/photos-r$r-hp-s5 $rf 2000
  if need photos-r$r || need photos-r4; then  # photos-r4's transform starts from stage 10 (since session 18)
    # stage 7: stage 6 trained on end to end at lr 5e-5 (50-minute budget; recorded: 19 epochs, best.pt = epoch 15), then
    # stage 8 refits its hyperprior. The recorded run started from `aekit import` of stage 6's export (model
    # ba27f75af0f30e5c, photos-r9 until 2026-12-01): the same weights as stage 6's best.pt.
    [[ -f runs/zoo/photos-r$r-hp-s7/last.pt ]] || init="--init-from $rf/best.pt"
    train photos-r$r-hp-s7 data/photos/train --arch gdn-hp --channels 3 --ratio $r --width 128 --size 192 \
      --resize random-crop --repeat 16 --batch-size 8 --epochs 30 --time-budget 50 --lr 5e-5 --freeze-epochs 0 \
      --clip-grad 1.0 --rate-weight 0.01 ${init:-}; unset init
    rf8=runs/zoo/photos-r$r-hp-s8
    refit runs/zoo/photos-r$r-hp-s7 $rf8 2000
    # stage 9: stage 8 trained on at lr 5e-5 on the 28 photos of `aekit data photos --more` (a 10-epoch cosine,
    # 50-minute budget; recorded: 10 epochs, 46 min, best.pt = epoch 10), then stage 10 refits its
    # hyperprior on the same photos.
    [[ -f runs/zoo/photos-r$r-hp-s9/last.pt ]] || init="--init-from $rf8/best.pt"
    train photos-r$r-hp-s9 data/photos-plus/train --arch gdn-hp --channels 3 --ratio $r --width 128 --size 192 \
      --resize random-crop --repeat 16 --batch-size 8 --epochs 10 --time-budget 50 --lr 5e-5 --freeze-epochs 0 \
      --clip-grad 1.0 --rate-weight 0.01 ${init:-}; unset init
    rf10=runs/zoo/photos-r$r-hp-s10
    RDATA=data/photos-plus/train refit runs/zoo/photos-r$r-hp-s9 $rf10 2000
    # stage 10's export (photos-r9 until session 30, with stage 11's channel context): photos-r4's transform starts
    # from it. (Stage 11, that channel context, 3,000 steps on stage 10's frozen latents, is not rebuilt: stage 12
    # fits its own.)
    nice -n 19 aekit export $rf10/best.pt --out models/zoo/photos-r$r-s10 --force
  fi
  if need photos-r$r; then
    # stage 12 (run folders photos-r9-s11*; session 29, shipped in session 30): trained on from stage 10 on the 28
    # photos, a full cosine from lr 5e-5 over 13 epochs (recorded: 13 epochs, 967 s, best.pt = epoch 13), refitted,
    # and its channel context (Minnen & Singh 2020; coder 6/8) fitted on its frozen latents, 3,000 steps. Recorded:
    # the import of the shipped stage-10 photos-r9 (the same weights as that export), one thread for the training,
    # two for the refit (231 s) and the context (420 s).
    [[ -f runs/zoo/photos-r$r-s11/last.pt ]] || { nice -n 19 aekit import models/zoo/photos-r$r-s10 --force \
      --out runs/zoo/photos-r$r-imported.pt; init="--init-from runs/zoo/photos-r$r-imported.pt"; }
    train photos-r$r-s11 data/photos-plus/train --arch gdn-hp --channels 3 --ratio $r --width 128 --size 192 \
      --resize random-crop --repeat 9 --batch-size 8 --epochs 13 --time-budget 40 --lr 5e-5 --freeze-epochs 0 \
      --clip-grad 1.0 --rate-weight 0.01 ${init:-}; unset init
    rf12=runs/zoo/photos-r$r-s11-rf
    RDATA=data/photos-plus/train refit runs/zoo/photos-r$r-s11 $rf12 2000
    nice -n 19 aekit export $rf12/best.pt --out models/zoo/photos-r$r-s12 --force
    context $rf12/best.pt runs/zoo/photos-r$r-s11-ctx data/photos-plus/train 3000 models/zoo/photos-r$r-s12
    # stages 13 and 14 (run folders photos-r9-s13*, photos-r9-s14*): the same once more from the stage before, each
    # exported (stage 13 as models/zoo/photos-r9-s13, stage 14 as the shipped photos-r9) with its channel context.
    # Recorded: stage 13 (session 31): the import of the shipped stage-12 photos-r9 (1896348a2f037ece: the same
    # weights as that export), 13 epochs, 653 s on one thread, best.pt = epoch 12; the refit (201 s) and the context
    # (375 s) on two. Stage 14 (trained in session 31, shipped in session 32): the import of the shipped stage-13
    # photos-r9 (69667b37d55c1871), 13 epochs, 643 s, best.pt = epoch 11; the refit (208 s) and the context (390 s).
    prev=s12
    for st in s13 s14; do
      out=models/zoo/photos-r$r-$st; [[ $st == s14 ]] && out=models/zoo/photos-r$r
      [[ -f runs/zoo/photos-r$r-$st/last.pt ]] || { nice -n 19 aekit import models/zoo/photos-r$r-$prev --force \
        --out runs/zoo/photos-r$r-$st-imported.pt; init="--init-from runs/zoo/photos-r$r-$st-imported.pt"; }
      train photos-r$r-$st data/photos-plus/train --arch gdn-hp --channels 3 --ratio $r --width 128 --size 192 \
        --resize random-crop --repeat 9 --batch-size 8 --epochs 13 --time-budget 40 --lr 5e-5 --freeze-epochs 0 \
        --clip-grad 1.0 --rate-weight 0.01 ${init:-}; unset init
      rf=runs/zoo/photos-r$r-$st-rf
      RDATA=data/photos-plus/train refit runs/zoo/photos-r$r-$st $rf 2000
      nice -n 19 aekit export $rf/best.pt --out $out --force
      context $rf/best.pt runs/zoo/photos-r$r-$st-ctx data/photos-plus/train 3000 $out
      prev=$st
    done
    # int8 variants of both networks (aekit compress/decompress --int8: the same model id, 2.0-2.4x faster networks;
    # the latent in 16 bits on both sides: stage 12's encoder lost 0.50 dB with y in 8, stage 13's pair failed in 8)
    nice -n 19 aekit add-int8 models/zoo/photos-r$r --encoder --calib-data data/photos/train \
      --int8-check-data data/photos/test
    [[ ${CARDS:-1} == 1 ]] && nice -n 19 python -m aekit.bench.zoo build photos-r$r
  fi
done
# photos-r9-hq: stage 5 of photos-r9 fine-tuned end to end at a 4x lower rate weight (80-minute budget), then
# its hyperprior refitted: the high-rate model (photos-r9's curve flattens near 32 dB).
if need photos-r9-hq || need photos-r4-hq; then
  [[ -f runs/zoo/photos-r9-hq/last.pt ]] || init="--init-from runs/zoo/photos-r9-hp-s5/last.pt"
  train photos-r9-hq data/photos/train --arch gdn-hp --ratio 9 --width 128 --size 192 --resize random-crop --repeat 16 \
    --batch-size 8 --epochs 90 --time-budget 80 --lr 2e-4 --freeze-epochs 0 --clip-grad 1.0 --rate-weight 0.0025 ${init:-}
  unset init
  rf=runs/zoo/photos-r9-hq-rf
  refit runs/zoo/photos-r9-hq $rf 2000
  # trained on end to end at lr 5e-5 (40-minute budget; recorded: 14 epochs, best.pt = epoch 6), hyperprior refitted
  # again. The recorded run started from `aekit import` of this refit's export (model 674cf98f5f4ee67e, photos-r9-hq
  # until 2026-12-01): the same weights as $rf/best.pt.
  [[ -f runs/zoo/photos-r9-hq-s2/last.pt ]] || init="--init-from $rf/best.pt"
  train photos-r9-hq-s2 data/photos/train --arch gdn-hp --channels 3 --ratio 9 --width 128 --size 192 \
    --resize random-crop --repeat 16 --batch-size 8 --epochs 30 --time-budget 40 --lr 5e-5 --freeze-epochs 0 \
    --clip-grad 1.0 --rate-weight 0.0025 ${init:-}; unset init
  rf2=runs/zoo/photos-r9-hq-s2-rf
  refit runs/zoo/photos-r9-hq-s2 $rf2 2000
  # stage 2's export (photos-r9-hq until session 29): photos-r4-hq's transform starts from it (since session 16)
  nice -n 19 aekit export $rf2/best.pt --out models/zoo/photos-r9-hq-s2 --force
  [[ -d data/photos-plus/test ]] || aekit data photos data/photos-plus --more
  if need photos-r9-hq; then
    # stage 3 (session 29): trained on from stage 2 on the 28 photos, a full cosine from lr 5e-5 over 13 epochs, and
    # refitted again. Recorded: the import of the shipped photos-r9-hq (the same weights as that export), one thread
    # for the training, two for the refit and the channel context.
    [[ -f runs/zoo/photos-r9-hq-s3/last.pt ]] || { nice -n 19 aekit import models/zoo/photos-r9-hq-s2 --force \
      --out runs/zoo/photos-r9-hq-s2-imported.pt; init="--init-from runs/zoo/photos-r9-hq-s2-imported.pt"; }
    train photos-r9-hq-s3 data/photos-plus/train --arch gdn-hp --channels 3 --ratio 9 --width 128 --size 192 \
      --resize random-crop --repeat 9 --batch-size 8 --epochs 13 --time-budget 40 --lr 5e-5 --freeze-epochs 0 \
      --clip-grad 1.0 --rate-weight 0.0025 ${init:-}; unset init
    rf3=runs/zoo/photos-r9-hq-s3-rf
    RDATA=data/photos-plus/train refit runs/zoo/photos-r9-hq-s3 $rf3 2000
    nice -n 19 aekit export $rf3/best.pt --out models/zoo/photos-r9-hq --force
    # an int8 decoder only: with the int8 encoder too it lost 0.54 dB on the held-out photos (refused at 0.3; 0.39 dB
    # after the second fine-tune)
    nice -n 19 aekit add-int8 models/zoo/photos-r9-hq --calib-data data/photos/train --int8-check-data data/photos/test
    # its channel context (coder 6/8): 48 hidden channels, 3,000 steps on the 28 photos' frozen latents of stage 3
    # (recorded: runs/zoo/photos-r9-hq-s3-ctx on this refit, two threads; session 20's on stage 2 took 40 min on one)
    CTX_WIDTH=48 context $rf3/best.pt runs/zoo/photos-r9-hq-s3-ctx data/photos-plus/train 3000 \
      models/zoo/photos-r9-hq
    [[ ${CARDS:-1} == 1 ]] && nice -n 19 python -m aekit.bench.zoo build photos-r9-hq
  fi
fi
# The 1/4 models' transforms: photos-r9's and photos-r9-hq's (aekit import of the exports above) fine-tuned on the
# training crops enlarged 1.5x (--grid-scale 1.5: the grid aekit rescale runs them on), each at its own rate weight,
# their hyperpriors then refitted on that grid (refit-hyperprior reads the grid from the checkpoint). Not shipped
# themselves. photos-r9-g15: from the stage-10 photos-r9 on its 28 photos, 9 crops of each an epoch (about as many
# crops as 16 of each of 16 photos; since session 18; recorded: 50-minute budget, 9 epochs, best.pt = epoch 9).
# photos-r9-hq-g15: from photos-r9-hq's stage 2 on the 16 photos (since session 16; recorded: 45 minutes, 8 epochs,
# best.pt = epoch 6 by validation loss).
for spec in "photos-r4 photos-r9 0.01 50 photos-plus 9 photos-r9-s10" \
            "photos-r4-hq photos-r9-hq 0.0025 45 photos 16 photos-r9-hq-s2"; do
  read -r name src rw budget data repeat from <<< "$spec"
  need $name || continue
  g=$src-g15
  [[ -f runs/zoo/$g/last.pt ]] || { nice -n 19 aekit import models/zoo/$from --force \
    --out runs/zoo/$from-imported.pt; init="--init-from runs/zoo/$from-imported.pt"; }
  train $g data/$data/train --arch gdn-hp --channels 3 --ratio 9 --width 128 --size 192 --resize random-crop \
    --repeat $repeat --batch-size 8 --epochs 45 --time-budget $budget --lr 5e-5 --freeze-epochs 0 --clip-grad 1.0 \
    --rate-weight $rw --grid-scale 1.5 ${init:-}
  unset init
  rf=runs/zoo/$g-rf
  RDATA=data/$data/train refit runs/zoo/$g $rf 2000
  nice -n 19 aekit export $rf/best.pt --out models/zoo/$g --force
  # stage 3: that transform trained on from where it stopped, a full cosine from lr 5e-5 over 13 epochs on the 28
  # photos (9 crops of each an epoch), and refitted again. Recorded: the import of the shipped model (`aekit import
  # photos-r4`: the same weights as this export, with grid_scale 1.5), 13 epochs on one thread (photos-r4: session 28,
  # 42 min, replacing da91c8e3a04f7b79; photos-r4-hq: session 29, replacing 8316e7329d5d798b), the refit on two.
  # stage 4 (photos-r4: session 30; photos-r4-hq: session 31): stage 3's recipe once more, from stage 3. Recorded:
  # the import of the shipped stage-3 model (photos-r4 2bd865caed87b543, photos-r4-hq 87955549998305e2: the same
  # weights as its export, with grid_scale 1.5), 13 epochs on one thread (31 min each; best.pt = epoch 13 and 12),
  # the refit and the channel context on two. stage 5 (photos-r4, session 31): once more, from the shipped stage 4
  # (2a3d3c774377b85d; 13 epochs, 34 min beside another run, best.pt = epoch 13). stage 6 (photos-r4, session 32):
  # once more, from the shipped stage 5 (9cd84a1f17928aac; 13 epochs, 30 min beside some tests, best.pt = epoch 13). stage 5
  # (photos-r4-hq, session 32): once more, from the shipped stage 4 (614e16b3f7820384; 13 epochs, 30 min alone,
  # best.pt = epoch 12).
  stages="s3 s4 s5"; [[ $name == photos-r4 ]] && stages="s3 s4 s5 s6"
  for st in $stages; do
    imp=runs/zoo/$name-imported.pt; [[ $st == s3 ]] || imp=runs/zoo/$name-$st-imported.pt
    [[ -f runs/zoo/$name-$st/last.pt ]] || { nice -n 19 aekit import models/zoo/$g --force --out $imp
                                             init="--init-from $imp"; }
    train $name-$st data/photos-plus/train --arch gdn-hp --channels 3 --ratio 9 --width 128 --size 192 \
      --resize random-crop --repeat 9 --batch-size 8 --epochs 13 --time-budget $budget --lr 5e-5 \
      --freeze-epochs 0 --clip-grad 1.0 --rate-weight $rw --grid-scale 1.5 ${init:-}
    unset init
    rf=runs/zoo/$name-$st-rf
    RDATA=data/photos-plus/train refit runs/zoo/$name-$st $rf 2000
    nice -n 19 aekit export $rf/best.pt --out models/zoo/$g --force
  done
  # the channel context (coder 6/8) on the 1.5x grid's latents of the last stage, 2,500 steps; aekit rescale below
  # carries it (recorded: runs/zoo/photos-r4-s6-ctx and runs/zoo/photos-r4-hq-s5-ctx on those refits, two threads;
  # photos-r4-hq's with 48 hidden channels)
  width=96; [[ $name == photos-r4-hq ]] && width=48
  CTX_WIDTH=$width context $rf/best.pt runs/zoo/$name-$st-ctx data/photos-plus/train 2500 models/zoo/$g
done
# photos-r4 and photos-r4-hq: those two transforms on a grid 1.5x as fine (aekit rescale: 48 channels at H/8 of the
# image, exactly 1/4; bicubic resampling in the graphs, the same tables).
for name in photos-r4 photos-r4-hq; do
  need $name || continue
  [[ -d models/photos-klt-r4-w0.03 ]] || bash codec/train_klt.sh  # the linear baseline they are compared with
  src=photos-r9-hq-g15; [[ $name == photos-r4 ]] && src=photos-r9-g15
  nice -n 19 aekit rescale models/zoo/$src --ratio 4 --out models/zoo/$name --force --check-data data/photos/train
  # its own int8 variants (rescale does not carry the source's: they were checked on other graphs)
  nice -n 19 aekit add-int8 models/zoo/$name --encoder --calib-data data/photos/train --int8-check-data data/photos/test
  # photos-r4-hq: a 13th quality (step 0.5, session 24) past the export's finest (0.75): up to 37.9 dB, above the
  # klt's finest points (a new model id; the folder still decodes the 12-quality model's files: shipped, 82670443a70af481)
  [[ $name == photos-r4-hq ]] && nice -n 19 aekit add-quality models/zoo/$name --step 0.5 --images data/photos/train
  [[ ${CARDS:-1} == 1 ]] && nice -n 19 python -m aekit.bench.zoo build $name \
    --compare models/photos-klt-r4-w0.003 --compare models/photos-klt-r4-w0.01 --compare models/photos-klt-r4-w0.03
done
# photos-r9-fast (issue 17, compress speed): photos-r9's decoder g_s frozen behind a new half-width g_a
# (--encoder-width 64) and hyperprior (--hyper-width 64); g_a learns photos-r9's latents (--distill-from) for
# 40 epochs while the rate-distortion loss trains it, 150 epochs in all; the hyperprior refitted afresh; exported
# int8 (encoder and decoder are the model, calibrated on the training photos) with fp16-stored fallbacks.
if need photos-r9-fast; then
  [[ -f runs/zoo/photos-r9-fast/last.pt ]] || init="--init-from runs/zoo/photos-r9-hp-s6/best.pt"
  train photos-r9-fast data/photos/train --arch gdn-hp --ratio 9 --width 128 --encoder-width 64 --hyper-width 64 \
    --size 192 --resize random-crop --repeat 16 --batch-size 8 --epochs 150 --time-budget 75 --lr 4e-4 \
    --freeze-epochs 0 --clip-grad 1.0 --rate-weight 0.01 --freeze-decoder \
    --distill-from runs/zoo/photos-r9-hp-s6/best.pt --distill-epochs 40 ${init:-}
  unset init
  rf=runs/zoo/photos-r9-fast-rf
  # --reinit: the hyperprior trained beside a random new g_a collapsed (z the same everywhere); a fresh one
  # fitted on the frozen transforms' latents works
  refit runs/zoo/photos-r9-fast $rf 12000 --reinit --val-data data/photos/train
  nice -n 19 aekit export $rf/best.pt --out models/zoo/photos-r9-fast --force --int8 --int8-encoder --weights fp16 \
    --calib-data data/photos/train --int8-check-data data/photos/test
  [[ ${CARDS:-1} == 1 ]] && nice -n 19 python -m aekit.bench.zoo build photos-r9-fast --compare photos-r9
fi
echo "== installed in aekit/zoo/ with their cards; README table: python -m aekit.bench.zoo readme"
