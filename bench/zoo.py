"""Install an exported model into the zoo (aekit/zoo/NAME) and write its card from measured figures.

    python -m aekit.bench.zoo build fmnist-r4                        # models/zoo/fmnist-r4 -> aekit/zoo, card
    python -m aekit.bench.zoo build photos-r4 --from /work/models/photos-r4 --eval codec/results/photos-rd/results.json
    python -m aekit.bench.zoo readme                                 # the README's model table
    python -m aekit.bench.zoo verify [NAME...]                       # fresh evaluate within 0.2 dB of the cards
    python -m aekit.bench.zoo speed [NAME...]                        # (re)measure only the cards' speed sections
    python -m aekit.bench.zoo refresh [NAME...] [--eval RESULTS]     # cards after id-keeping changes (add-int8, coder)
bench/train_zoo.sh trains and exports; this copies the ONNX files and manifest (fp32 only), runs
`aekit evaluate` on the held-out set (unless --eval names an existing results.json), the local-defect
benchmark for the detector, a round trip for the test floor, and writes card.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aekit import zoo
from aekit.images import atomic_write_bytes
from aekit.export.manifest import load_manifest, save_manifest
from aekit.export.zoo import CARD_FORMAT, CARD_VERSION, folder_files, load_card, render, table

FMNIST_HELDOUT = Path("data/fmnist-zoo")  # test/ and cal/: 100 + 100 images per class of the test split
PHOTO_TRAIN = ("aekit data photos: chelsea, rocket, retina, hubble_deep_field, immunohistochemistry (scikit-image), "
               "china, flower (scikit-learn) and 9 mate-backgrounds nature photos (long side <= 1024)")
PHOTO_CMD = ("aekit train data/photos/train --arch gdn --ratio {r} --width 128 --out runs/photos-gdn-r{r} --size 192 "
             "--resize random-crop --repeat 16 --batch-size 8 --epochs 30 --time-budget 60 --lr 5e-4 --clip-grad 1.0 "
             "--rate-weight 0.01 --threads 1 --seed 0 && "
             "aekit train data/photos/train --arch gdn --ratio {r} --width 128 --out runs/photos-gdn-r{r}-s2 --size 192 "
             "--resize random-crop --repeat 16 --batch-size 8 --epochs 55 --time-budget 70 --lr 3e-4 --clip-grad 1.0 "
             "--rate-weight 0.01 --threads 1 --seed 0 --init-from runs/photos-gdn-r{r}/last.pt && "
             "aekit train data/photos/train --arch gdn-hp --ratio {r} --width 128 --out runs/photos-hp-r{r} --size 192 "
             "--resize random-crop --repeat 16 --batch-size 8 --epochs 40 --time-budget 45 --lr 2e-4 --freeze-epochs 10 "
             "--clip-grad 1.0 --rate-weight 0.01 --threads 1 --seed 0 --init-from runs/photos-gdn-r{r}-s2/last.pt && "
             "aekit train data/photos/train --arch gdn-hp --ratio {r} --width 128 --out runs/photos-hp-r{r}-s4 --size 192 "
             "--resize random-crop --repeat 16 --batch-size 8 --epochs 30 --time-budget 30 --lr 1e-4 --freeze-epochs 0 "
             "--clip-grad 1.0 --rate-weight 0.01 --threads 1 --seed 0 --init-from runs/photos-hp-r{r}/last.pt && "
             "aekit train data/photos/train --arch gdn-hp --ratio {r} --width 128 --out runs/photos-hp-r{r}-s5 --size 192 "
             "--resize random-crop --repeat 16 --batch-size 8 --epochs 34 --time-budget 25 --lr 1e-4 --freeze-epochs 8 "
             "--clip-grad 1.0 --rate-weight 0.01 --threads 1 --seed 0 --init-from runs/photos-hp-r{r}-s4/last.pt && "
             "aekit refit-hyperprior runs/photos-hp-r{r}-s5/best.pt data/photos/train --out runs/photos-hp-r{r}-s6 "
             "--steps 2000 --lr 5e-4 --threads 1")


def finetune_cmd(source_run: str, export: str, run: str, rate_weight: float, epochs: int, budget: int,
                 grid_scale: float = 0.0, refit_threads: int = 2, data: str = "data/photos/train",
                 repeat: int = 16) -> str:
    """The recipe of a gdn-hp photo transform trained on from an earlier one (sessions 13-18): its run exported,
    imported back to a checkpoint (the machine had lost the run folder), trained end to end at lr 5e-5 on `data`
    (on the grid --grid-scale enlarges, for a rescaled model) and its hyperprior refitted on the same images."""
    grid = f" --grid-scale {grid_scale:g}" if grid_scale else ""
    return (f"aekit export {source_run}/best.pt --out {export} && aekit import {export} --out {run}/imported.pt && "
            f"aekit train {data} --arch gdn-hp --channels 3 --ratio 9 --width 128 --size 192 --resize random-crop "
            f"--repeat {repeat} --batch-size 8 --epochs {epochs} --time-budget {budget} --lr 5e-5 --freeze-epochs 0 "
            f"--clip-grad 1.0 --rate-weight {rate_weight:g}{grid} --init-from {run}/imported.pt --threads 1 --seed 0 "
            f"--out {run}/ft && aekit refit-hyperprior {run}/ft/best.pt {data} --out {run}/rf "
            f"--steps 2000 --lr 5e-4 --threads {refit_threads}")


PHOTO_TRAIN_MORE = PHOTO_TRAIN + "; from stage 9 on also the 12 photographs among KDE Plasma's wallpapers (aekit data photos --more)"
PHOTO_TRAIN_HQ_S3 = PHOTO_TRAIN + "; in stage 3 also the 12 photographs among KDE Plasma's wallpapers (aekit data photos --more)"
PHOTO_MORE_CMD = ("aekit data photos data/photos-plus --more && "  # photos-r9's stages 9-10 (session 17)
                  "aekit train data/photos-plus/train --arch gdn-hp --channels 3 --ratio 9 --width 128 --size 192 "
                  "--resize random-crop --repeat 16 --batch-size 8 --epochs 10 --time-budget 50 --lr 5e-5 --freeze-epochs 0 "
                  "--clip-grad 1.0 --rate-weight 0.01 --init-from runs/r9n/rf/best.pt --threads 1 --seed 0 --out runs/r9p/ft && "
                  "aekit refit-hyperprior runs/r9p/ft/best.pt data/photos-plus/train --out runs/r9p/rf --steps 2000 --lr 5e-4 "
                  "--threads 2")

# photos-r9's channel context (coder 6, session 19), as recorded: on the import of the shipped stage-10 model (the
# same weights as runs/r9p/rf/best.pt), then added to the exported folder (same model id)
PHOTO_CONTEXT_CMD = ("aekit import photos-r9 --out runs/r4g3/imported.pt && aekit fit-context runs/r4g3/imported.pt "
                     "data/photos-plus/train --out runs/ctx-r9 --steps 3000 --threads 1 --val-data data/photos-plus/test && "
                     "aekit add-context models/r9p runs/ctx-r9/context.pt")

# coders 7 and 8 (session 20), the same for every photo model (the coder, not the model)
SPATIAL_LIMIT = ("Coders 7 and 8 (format version 7, since 2026-12-02): the neighbours already decoded predict each "
                 "element's mean (four interleaved passes, 24 per-image class parameters), on top of the hyperprior "
                 "(7) or a channel context (8); compress keeps the smallest of coders 3-8, zstd and raw. `aekit "
                 "compress --no-spatial-context` writes files that aekit before format version 7 reads.")

FM_CMD = ("aekit train data/fmnist/train --resize none --channels 1 --width 32 --batch-size 64 --max-images 10000 "
          "--epochs 8 --ratio {r} --threads 1 --seed 0 --out runs/zoo/{name}")
FM_RD_ARGS = ("data/fmnist/train --arch gdn --channels 1 --ratio {r} --factor {f} --width 64 --res-blocks {b} --resize none "
              "--batch-size 64 --lr 5e-4 --clip-grad 1.0 --rate-weight 0.0005 --threads 1 --seed 0 --out runs/zoo/fmnist-r{r}")
FM4 = FM_RD_ARGS.format(r=4, f=4, b=4)
FM4_S2 = FM4.replace("--lr 5e-4", "--lr 2e-4").replace("--out runs/zoo/fmnist-r4", "--out runs/zoo/fmnist-r4-s2")
FM_RD_CMD = (f"aekit train {FM4} --epochs 5 --stop-after 2 && aekit train {FM4} --epochs 12 --time-budget 100 --resume && "
             f"aekit train {FM4_S2} --epochs 8 --time-budget 62 --init-from runs/zoo/fmnist-r4/best.pt")
FM9_RD_CMD = f"aekit train {FM_RD_ARGS.format(r=9, f=6, b=2)} --epochs 22 --time-budget 45"
FM9_RD_LIMITS = ["Trained for 17 epochs (47 min on one shared core; the 45-minute budget stopped a 22-epoch cosine "
                 "schedule early) at one rate weight (0.0005): PSNR saturates near 25.8 dB from quality 9 up.",
                 "Every file is smaller than WebP's smallest (120 B, 1.23 bpp, 23.9 dB on this set): from 89 B (q7) "
                 "up the model is also better than that file; WebP has no setting at these sizes, and a 1/9 latent "
                 "of 8-bit symbols cannot pass about 1.3 bpp with the header.",
                 "28x28 gray images like Fashion-MNIST's (4 latent channels at H/6, the image padded to 30x30); "
                 "other gray images work but reconstruct worse (see the round trip).",
                 "Replaced the tanh-latent fmnist-r9 (model id 3f124d75dc64f0fb, 22.72 dB at 1.29 bpp on this set) on "
                 "2026-11-30: files written with that model decode only with its folder (git history of aekit/zoo/fmnist-r9)."]
FM_RD_LIMITS = ["Trained for 12 + 7 epochs (98 + 64 min on one shared core; the second cosine's 62-minute budget stopped "
                "it after 7 of 8 epochs) at one rate weight (0.0005): PSNR saturates near 29.8 dB, so the finest "
                "qualities buy little (q9 29.4 dB at 1.45 bpp, q12 29.8 dB at 1.81 bpp).",
                "Above WebP from WebP's smallest file (about 1.2 bpp) to its own finest quality (1.81 bpp, +0.35 dB "
                "there); WebP goes on to 4.6 bpp, and a 1/4 latent of 8-bit symbols cannot pass about 2.3 bpp with the "
                "header.",
                "Four residual units per stage (two before 2026-12-03) double the networks' work (151 GFLOP per "
                "megapixel each way, 77 before): +0.6 dB at the top qualities, but q1-q2 lost 0.1-0.7 dB at more bytes.",
                "28x28 gray images like Fashion-MNIST's (4 latent channels at H/4); other gray images work but "
                "reconstruct worse (see the round trip).",
                "Replaced on 2026-12-03 (session 27) its own first stage (model id fe4a89ac75ebcdd7, 12 epochs: 29.34 "
                "dB at 1.82 bpp, BD-rate vs WebP -26.0 % on this set), earlier that day "
                "the same design with two residual units per stage (model id 1ddd6f78fef35d93, "
                "24 epochs: 28.71 dB at 1.83 bpp, BD-rate vs WebP -25.1 % on this set), and on 2026-11-30 the "
                "tanh-latent fmnist-r4 (model id 4f325ab3ee4a3952, 24.62 dB at 2.14 bpp): files written with those "
                "models decode only with their folders (git history of aekit/zoo/fmnist-r4)."]

@dataclass
class Spec:
    task: str  # codec | detector
    summary: str
    data: str  # training data, one line
    split: str
    command: str
    run: str  # run folder (log.csv, config.json)
    heldout: str  # image folder of the held-out set
    heldout_name: str
    roundtrip: str  # image for the tested round trip (roundtrip_image)
    limits: list[str] = field(default_factory=list)
    trained_on: str = ""  # a few words for the model table
    export_args: str = ""  # more `aekit export` options than --out (and what ran after it), for the card
    rescaled: str = ""  # `aekit rescale` of this shipped model (its recipe and run), not trained itself


def stage3_cmd(name: str, rate_weight: float, budget: int, context_width: int, grid_scale: float = 1.5,
               context_steps: int = 2500, stage: str = "s3", imported: str = "") -> str:
    """Stage 3 of a photo model (photos-r4: session 28, photos-r4-hq and photos-r9-hq: session 29; photos-r9's stage
    12, run folders runs/zoo/photos-r9-s11*: session 29): the shipped model imported (a rescaled model imports as its
    source transform with grid_scale 1.5), trained on the 28 photos with a full cosine, refitted, its channel context
    fitted again. stage: the run folders' suffix; imported: the imported checkpoint (default runs/zoo/NAME-imported.pt).
    photos-r4's stage 4 (session 30) and photos-r4-hq's (session 31) are the same stage once more (stage="s4"), and
    photos-r4's stage 5 (session 31) once more again (stage="s5"); photos-r9's stage 13 (session 31) is stage="s13",
    its stage 14 (trained in session 31, shipped in session 32) stage="s14"; photos-r4's stage 6 and photos-r4-hq's
    stage 5 (session 32) "s6" and "s5"."""
    run, out = f"runs/zoo/{name}", f"runs/zoo/{name}-{stage}"
    imported = imported or f"{run}-imported.pt"
    grid = f" --grid-scale {grid_scale:g}" if grid_scale != 1 else ""
    return (f"aekit import {name} --out {imported} && aekit train data/photos-plus/train "
            "--arch gdn-hp --channels 3 --ratio 9 --width 128 --size 192 --resize random-crop --repeat 9 "
            f"--batch-size 8 --epochs 13 --time-budget {budget} --lr 5e-5 --freeze-epochs 0 --clip-grad 1.0 "
            f"--rate-weight {rate_weight:g}{grid} --init-from {imported} --threads 1 --seed 0 "
            f"--out {out} && aekit refit-hyperprior {out}/best.pt "
            f"data/photos-plus/train --out {out}-rf --steps 2000 --lr 5e-4 --threads 2 && "
            f"aekit fit-context {out}-rf/best.pt data/photos-plus/train --out {out}-ctx "
            f"--steps {context_steps} --threads 2 --seed 0 --width {context_width} --val-data data/photos-plus/test")

# Sources of rescaled zoo models that are not shipped themselves (recipe and run for the card's training section).
SOURCES: dict[str, Spec] = {
    "photos-r9-g15": Spec(
        "codec", "photos-r9's transform fine-tuned on crops enlarged 1.5x (the grid photos-r4 runs it on), then trained "
                 "on again from the shipped photos-r4 (stages 3 to 6)", PHOTO_TRAIN_MORE,
        "as photos-r9",
        finetune_cmd("runs/r9p/rf", "models/r9p", "runs/r4g3", 0.01, 45, 50, grid_scale=1.5,
                     data="data/photos-plus/train", repeat=9)  # photos-r9 stage 10 (session 18)
        + " && " + stage3_cmd("photos-r4", 0.01, 50, 96)
        + " && " + stage3_cmd("photos-r4", 0.01, 50, 96, stage="s4", imported="runs/zoo/photos-r4-s4-imported.pt")
        + " && " + stage3_cmd("photos-r4", 0.01, 50, 96, stage="s5", imported="runs/zoo/photos-r4-s5-imported.pt")
        + " && " + stage3_cmd("photos-r4", 0.01, 50, 96, stage="s6", imported="runs/zoo/photos-r4-s6-imported.pt"),
        "runs/zoo/photos-r4-s6-rf", "data/photos/test", "the 5 held-out photos of aekit data photos", "skimage:astronaut",
        export_args="&& aekit add-context models/zoo/photos-r9-g15 runs/zoo/photos-r4-s6-ctx/context.pt"),
    "photos-r9-hq-g15": Spec(
        "codec", "photos-r9-hq's transform fine-tuned on crops enlarged 1.5x (the grid photos-r4-hq runs it on), then "
                 "trained on again from the shipped photos-r4-hq (stages 3 to 5)",
        PHOTO_TRAIN_HQ_S3, "as photos-r9-hq; stage 3 validated on 3 of the 28 photos",
        finetune_cmd("runs/r9hqn/rf", "models/r9hqn", "runs/r4hq2", 0.0025, 45, 45, grid_scale=1.5)  # stage 2 (session 16)
        + " && " + stage3_cmd("photos-r4-hq", 0.0025, 45, 48)
        + " && " + stage3_cmd("photos-r4-hq", 0.0025, 45, 48, stage="s4",
                              imported="runs/zoo/photos-r4-hq-s4-imported.pt")
        + " && " + stage3_cmd("photos-r4-hq", 0.0025, 45, 48, stage="s5",
                              imported="runs/zoo/photos-r4-hq-s5-imported.pt"),
        "runs/zoo/photos-r4-hq-s5-rf", "data/photos/test", "the 5 held-out photos of aekit data photos", "skimage:astronaut",
        export_args="&& aekit add-context models/zoo/photos-r9-hq-g15 runs/zoo/photos-r4-hq-s5-ctx/context.pt"),
}

SPECS: dict[str, Spec] = {
    **{f"photos-r{r}": Spec(
        "codec", f"RGB photo codec, latent 1/{r} of the raw pixels: rate-distortion trained gdn transform (GDN/IGDN) "
                 "with a mean-scale hyperprior (gdn-hp: Balle 2018 + Minnen 2018's mean; integer Gaussian tables, "
                 "bit-exact integer hyper decoder), one step and threshold set per quality (--quality); the "
                 "hyperprior refitted on the frozen transforms at every quality step (aekit refit-hyperprior).",
        PHOTO_TRAIN_MORE, "held out by name: astronaut, coffee, LadyBird, Storm, GreenMeadow (aekit.datasets.PHOTO_TEST); "
                          "training validated on 3 of the 28 training photos (the seeded 10 % split; 2 of 16 up to "
                          "stage 8)",
        PHOTO_CMD.format(r=r) + " && " + finetune_cmd(f"runs/photos-hp-r{r}-s6", f"models/photos-r{r}-s6", "runs/r9n", 0.01,
                                                        30, 50) + " && "
        + PHOTO_MORE_CMD + " && " + PHOTO_CONTEXT_CMD + " && "
        + stage3_cmd("photos-r9", 0.01, 40, 96, grid_scale=1, context_steps=3000, stage="s11") + " && "
        + stage3_cmd("photos-r9", 0.01, 40, 96, grid_scale=1, context_steps=3000, stage="s13",
                     imported="runs/zoo/photos-r9-s13-imported.pt") + " && "
        + stage3_cmd("photos-r9", 0.01, 40, 96, grid_scale=1, context_steps=3000, stage="s14",
                     imported="runs/zoo/photos-r9-s14-imported.pt"),
        "runs/zoo/photos-r9-s14-rf", "data/photos/test",
        "the 5 held-out photos of aekit data photos", "skimage:astronaut",
        ["Trained on 28 photos (16 up to stage 8): figures on the 5 held-out photos are the honest ones; the bundled "
         "photos it trained on (marked by aekit demo) flatter it.",
         "Small and CPU-trained (10 training stages, about 250 epochs of 192-px random crops, one shared CPU "
         "thread, and four 2,000-step hyperprior refits; time above): it beats JPEG and, barely, WebP on the held-out "
         "photos (BD-rate above) but not AVIF, and it saturates at high rates (about 33 dB), where JPEG and the "
         "linear klt baseline reach higher PSNR (trained at one rate weight, 0.01).",
         "A channel context (coder 6, since 2026-12-02: 4 slices of 12 channels, channel_context.npz; aekit "
         "fit-context on the frozen latents, fitted again on stage 14's, 3,000 steps, 390 s on two threads) corrects "
         "the hyperprior's mean and scale from the slices decoded before; no trained spatial network (coders 5 and 7 "
         "adapt per image). On "
         "large flat regions zstd can still code the symbols smaller than the ANS stream (the coder keeps the "
         "smallest and raw).",
         SPATIAL_LIMIT,
         "fp32 ONNX; the tables in manifest.json and the hashes of hyper_encoder.onnx / hyper_decoder.npz pin every "
         "quality (the model id hashes them); channel_context.npz is pinned by its hash in the manifest and in every "
         "coder-6 file. Decoding runs the integer hyper decoder and context in numpy (float64 BLAS).",
         "Gray images are coded as RGB (replicated) and decoded back to gray: more bytes than a gray model would need.",
         "Replaced on 2026-12-04 (session 32) the same recipe without stage 14 (model id 69667b37d55c1871), which "
         "this one (13 more epochs from it on the 28 photos, a full cosine, refitted, its channel context fitted "
         "again; stage 14) beats by up to 0.04 dB at equal bytes on these photos (BD-rate -0.5 %); that one had "
         "replaced on 2026-12-03 the recipe without stage 13 (1896348a2f037ece; BD-rate -0.6 %), that one earlier "
         "that day the recipe without stage 12 (02d3ef3c29bbfe6d; BD-rate -1.0 %), that one on "
         "2026-12-02 the recipe "
         "without stages 9 and 10 (6f48305802d7aa0e, trained on the 16 photos only; BD-rate -2.6 %), and that one on "
         "2026-12-01 the recipe without stages 7 and 8 (ba27f75af0f30e5c). Files written with any of them decode only "
         "with its folder (git history of aekit/zoo/photos-r9)."]
        + (["Above about 0.24 bpp (32.8 dB) use photos-r9-hq (same ratio and format, trained at a lower rate weight): "
            "it reaches 35.1 dB at 0.49 bpp where this model stops at 33.2 dB; below that this model is better."]
           if r == 9 else []),
        "28 photos (aekit data photos --more, train split: 25 trained on, 3 validate)",
        export_args="&& aekit add-context models/zoo/photos-r9 runs/zoo/photos-r9-s14-ctx/context.pt && aekit add-int8 "
                    "models/zoo/photos-r9 --encoder --calib-data data/photos/train --int8-check-data data/photos/test")
      for r in (9,)},
    **{name: Spec(
        "codec", f"RGB photo codec{' for high rates' if hq else ''}, latent 1/4 of the raw pixels: "
                 f"{'photos-r9-hq' if hq else 'photos-r9'}'s networks fine-tuned for and run on "
                 "a grid 1.5x as fine (aekit rescale: bicubic resampling built into the encoder and decoder graphs, "
                 "48 channels at H/8 of the image, exactly 1/4), with its mean-scale hyperprior and integer tables "
                 f"refitted on that grid (gdn-hp; --quality as {'photos-r9-hq' if hq else 'photos-r9'}): aekit import "
                 f"{'photos-r9-hq' if hq else 'photos-r9'}, aekit train --grid-scale 1.5 ({8 if hq else 9} epochs), "
                 f"aekit refit-hyperprior (stage 2); then aekit import {name} and 13 more epochs on that grid, "
                 f"refitted again (stage 3; and once more from stage 3: stage 4; and from stage 4: stage 5{'' if hq else '; and from stage 5: stage 6'}).",
        PHOTO_TRAIN_HQ_S3 if hq else PHOTO_TRAIN_MORE,
        "held out by name: astronaut, coffee, LadyBird, Storm, GreenMeadow (aekit.datasets.PHOTO_TEST); "
        + ("training validated on 2 of the 16 training photos (the seeded 10 % split); stage 3 on 3 of the 28 "
           "(the same split of aekit data photos --more)" if hq else
           "training validated on 3 of the 28 training photos (the seeded 10 % split)"),
        "", "", "data/photos/test", "the 5 held-out photos of aekit data photos", "skimage:astronaut",
        [f"Trained on {16 if hq else 28} photos (as {'photos-r9-hq' if hq else 'photos-r9'}, then on the same photos "
         f"enlarged 1.5x{'; stage 3 on 28' if hq else ''}): figures on the 5 held-out photos are the honest ones.",
         "The 1/9 transform sees each image 1.5x enlarged, so compress and decompress run its networks on 2.25x the "
         "pixels (speed above). A transform trained from scratch at 1/4 might do better; the factor-16 one trained "
         "here saturated near 30 dB.",
         ("For high rates (photos-r9-hq's transform): from about 0.36 bpp (34.4 dB) up, where photos-r4 flattens; "
          "below that photos-r4 is the better model, by up to 1.2 dB." if hq else
          "Above about 0.36 bpp (34.4 dB) use photos-r4-hq (same ratio and format): it goes on to 37.8 dB where this "
          "model stops at 34.6 dB. Below about 0.23 bpp photos-r9 (1/9) gives 0.4-2.0 dB more at equal bytes "
          "(the most at the lowest rates)."),
         "Below WebP and AVIF on the held-out photos (BD-rate above).",
         ("A channel context (coder 6/8, since 2026-12-02: 48 hidden channels, channel_context.npz, 0.5 MB; fitted "
          "again on stage 5's frozen latents of the 28 photos on the 1.5x grid, 2,500 steps, 316 s on two threads, "
          "then aekit add-context; ideal bits on the held-out photos -6.9 to -8.2 % against the hyperprior alone) "
          "corrects the hyperprior from the channel slices decoded before: with coder 8 the files were 4-9 % smaller "
          "from q3 up than coder 5's when it was added (BD-rate -4.9 %, codec/RESULTS.md)."
          if hq else
          "A channel context (coder 6, since 2026-12-02: channel_context.npz, aekit fit-context on the "
          "1.5x grid's frozen latents, 2,500 steps) corrects the hyperprior from the channel slices "
          "decoded before: files 2-3 % smaller from q6 up, compress and decompress slower "
          "(aekit compress --no-channel-context keeps coder 5)."),
         SPATIAL_LIMIT,
         "int8 variants of both networks (aekit add-int8 on the rescaled graphs, resampling included; "
         "`aekit compress/decompress --int8`; figures above): its own, not the source's."
         + (" The latent is in 16 bits on both sides (the encoder's y, the decoder's y_hat): in 8 bits the decoder "
            "alone lost 0.30 dB, over the 0.3 dB limit." if hq else "")]
        + (["Replaced on 2026-12-01 photos-r9-hq rescaled without fine-tuning (model id ea66e7ef7dacbf5d), then the "
            "same grid fine-tune of photos-r9-hq's first refit (54ae0c1ba84011c5), which this one (from its second "
            "fine-tune) beats by 0.01-0.18 dB at equal bytes at every quality on these photos (BD-rate -1.3 %). The "
            "curve ends at 36.9 dB (0.83 bpp); the model without the grid fine-tune reached 37.1 dB (0.93 bpp). Files "
            "written with any of them decode only with its folder (git history of aekit/zoo/photos-r4-hq).",
            "Replaced on 2026-12-03 that model with a 13th quality (8316e7329d5d798b, stage 2), then 13 more epochs "
            "from it on the 28 photos (87955549998305e2, stage 3; BD-rate -3.0 %), then 13 more from stage 3 "
            "(614e16b3f7820384, stage 4; BD-rate -1.6 %), which this one (13 more epochs from stage 4, a full cosine, "
            "refitted, its channel context fitted again; stage 5) beats by 0.01-0.15 dB at equal bytes at every "
            "quality on these photos (BD-rate -1.2 %). Files written with those decode only with their folders.",
            "A 13th quality (step 0.5, aekit add-quality, since session 24; added again to stages 3 to 5): 37.81 "
            "dB at 0.96 bpp on the held-out photos. The klt baseline's three finest points (37.82-37.84 dB at 1.81-1.85 "
            "bpp) are 0.01-0.03 dB above it: 30 of its 33 points beaten (stage 3: 32; a step of 0.25 would overflow "
            "the 8-bit symbols). The 12-quality model's id is 45ed2772436a5f41; this folder decodes its files too "
            "(manifest: supersedes)."] if hq else
           ["Borders: within 1 dB of the interior at every quality (from 0.47 dB below to 0.53 dB above; "
            "codec/RESULTS.md).",
            "Replaced on 2026-12-01 the factor-16 photos-r4 (192 channels at H/16, model id 6abf8b05b7e9998c), then "
            "photos-r9 rescaled without fine-tuning (5b61c380e6b8b494), then the same grid fine-tune of photos-r9's "
            "stage 6 (9813318f28e74f87), then on 2026-12-02 that of stage 8 on the 16 photos (6a3954dd65bce934), "
            "then on 2026-12-03 that of stage 10 on 28 photos (da91c8e3a04f7b79, stage 2), then 13 more epochs from "
            "it (2bd865caed87b543, stage 3; BD-rate -2.3 %), then 13 more from stage 3 (2a3d3c774377b85d, stage 4; "
            "BD-rate -1.3 %), then 13 more from stage 4 (9cd84a1f17928aac, stage 5; BD-rate -1.3 %), which this one "
            "(13 more epochs from stage 5, a full cosine; stage 6) beats on these photos by BD-rate -0.6 % (-0.05 "
            "to +0.09 dB at equal bytes, q2-q12). Files written with any of "
            "them decode only with its folder (git history of aekit/zoo/photos-r4)."]),
        "28 photos (aekit data photos --more, train split: 25 trained on, 3 validate; 16 up to stage 2)" if hq else
        "28 photos (aekit data photos --more, train split: 25 trained on, 3 validate)", rescaled=src)
      for name, src, hq in (("photos-r4", "photos-r9-g15", False), ("photos-r4-hq", "photos-r9-hq-g15", True))},
    "photos-r9-hq": Spec(
        "codec", "RGB photo codec for high rates, latent 1/9 of the raw pixels: photos-r9's recipe to stage 5, then "
                 "fine-tuned end to end at a 4x lower rate weight (0.0025) and its hyperprior refitted (gdn-hp; "
                 "same file format, --quality as photos-r9); then aekit import photos-r9-hq and 13 more epochs on 28 "
                 "photos, refitted again (stage 3).",
        PHOTO_TRAIN_HQ_S3, "held out by name: astronaut, coffee, LadyBird, Storm, GreenMeadow (aekit.datasets.PHOTO_TEST); "
                           "training validated on 2 of the 16 training photos (the seeded 10 % split); stage 3 on 3 of "
                           "the 28 (the same split of aekit data photos --more)",
        PHOTO_CMD.format(r=9).rsplit(" && aekit refit-hyperprior", 1)[0] + " && "
        "aekit train data/photos/train --arch gdn-hp --ratio 9 --width 128 --out runs/photos-hq-r9 --size 192 "
        "--resize random-crop --repeat 16 --batch-size 8 --epochs 90 --time-budget 80 --lr 2e-4 --freeze-epochs 0 "
        "--clip-grad 1.0 --rate-weight 0.0025 --threads 1 --seed 0 --init-from runs/photos-hp-r9-s5/last.pt && "
        "aekit refit-hyperprior runs/photos-hq-r9/best.pt data/photos/train --out runs/photos-hq-r9-rf "
        "--steps 2000 --lr 5e-4 --threads 1 && " + finetune_cmd("runs/photos-hq-r9-rf", "models/photos-r9-hq-rf", "runs/r9hqn",
                                                      0.0025, 30, 40, refit_threads=1)
        + " && " + stage3_cmd("photos-r9-hq", 0.0025, 40, 48, grid_scale=1, context_steps=3000),
        "runs/zoo/photos-r9-hq-s3-rf", "data/photos/test", "the 5 held-out photos of aekit data photos", "skimage:astronaut",
        ["Trained on 16 photos, in stage 3 on 28: figures on the 5 held-out photos are the honest ones.",
         "For high rates (its default quality spends about twice photos-r9's bytes); at low rates photos-r9 is "
         "the better model (codec/RESULTS.md compares them).",
         "CPU-trained: the fine-tunes ran on one shared CPU thread within 80-, 40- and 40-minute budgets (time above).",
         "A channel context (coder 6/8, since 2026-12-02: 4 slices of 12 channels, 48 hidden channels, "
         "channel_context.npz, 0.5 MB; fitted again on stage 3's frozen latents of the 28 photos, 3,000 steps, 313 s "
         "on two threads, then aekit add-context; ideal bits on the held-out photos -5.5 to -7.4 % against the "
         "hyperprior alone) corrects the hyperprior from the slices decoded before: with coder 8 the files were 3-8 % "
         "smaller from q2 up than coder 5's when it was added (BD-rate -5.1 %, codec/RESULTS.md).",
         SPATIAL_LIMIT,
         "fp32 ONNX; the tables in manifest.json and the hashes of hyper_encoder.onnx / hyper_decoder.npz pin every "
         "quality (the model id hashes them); channel_context.npz is pinned by its hash in the manifest and in every "
         "coder-6/8 file.",
         "Replaced on 2026-12-01 the same recipe without the second fine-tune and refit (model id 674cf98f5f4ee67e; "
         "the second fine-tune beat it by 0.04-0.13 dB at equal bytes on these photos, BD-rate -1.5 %), then on 2026-12-03 "
         "that recipe (2ec402bfed4b5d69, stage 2), which this one (13 more epochs from it on the 28 photos, a full "
         "cosine, refitted, its channel context fitted again; stage 3) beats by up to 0.14 dB at equal bytes on these "
         "photos (BD-rate -1.6 %; level at q11-q12). Files written with either decode only with its folder (git "
         "history of aekit/zoo/photos-r9-hq)."],
        "28 photos (aekit data photos --more, train split: 25 trained on, 3 validate; 16 up to stage 2)",
        export_args="&& aekit add-int8 models/zoo/photos-r9-hq --calib-data data/photos/train --int8-check-data "
                    "data/photos/test && aekit add-context models/zoo/photos-r9-hq runs/zoo/photos-r9-hq-s3-ctx/context.pt"),
    "photos-r9-fast": Spec(
        "codec", "RGB photo codec for fast compress, latent 1/9 of the raw pixels: the decoder g_s of photos-r9's stage 6 "
                 "(photos-r9 until 2026-12-01), frozen (the same weights), behind a half-width analysis transform "
                 "(GDN, N = 64, distilled from that stage's g_a, then rate-distortion trained) and a half-width mean-scale hyperprior (h_a, h_s at N = 64, "
                 "refitted): 3x fewer encoder GFLOP and a 2-3x cheaper exact h_s. An int8 model: its int8 encoder "
                 "and decoder (static QDQ, calibrated on the training photos) are the model; fp32 fallbacks are not "
                 "shipped (zoo budget).",
        PHOTO_TRAIN, "held out by name: astronaut, coffee, LadyBird, Storm, GreenMeadow (aekit.datasets.PHOTO_TEST); "
                     "training validated on 2 of the 16 training photos (the seeded 10 % split)",
        PHOTO_CMD.format(r=9) + " && "
        "aekit train data/photos/train --arch gdn-hp --ratio 9 --width 128 --encoder-width 64 --hyper-width 64 "
        "--out runs/photos-fast-r9 --size 192 --resize random-crop --repeat 16 --batch-size 8 --epochs 150 "
        "--time-budget 75 --lr 4e-4 --freeze-epochs 0 --clip-grad 1.0 --rate-weight 0.01 --threads 1 --seed 0 "
        "--init-from runs/photos-hp-r9-s6/best.pt --freeze-decoder --distill-from runs/photos-hp-r9-s6/best.pt "
        "--distill-epochs 40 && aekit refit-hyperprior runs/photos-fast-r9/best.pt data/photos/train "
        "--out runs/photos-fast-r9-rf2 --steps 12000 --lr 5e-4 --threads 1 --reinit --val-data data/photos/train",
        "runs/photos-fast-r9-rf2", "data/photos/test", "the 5 held-out photos of aekit data photos", "skimage:astronaut",
        ["Trained on 16 photos: figures on the 5 held-out photos are the honest ones.",
         "Made for compress speed (issue 17): its files cost more bytes than photos-r9's at the same PSNR "
         "(BD-rate against photos-r9 above and in codec/RESULTS.md).",
         "int8 networks: encoder symbols and decoded pixels may differ slightly between CPUs (int8 kernels); every "
         "file still decodes everywhere (the integer hyper decoder picks the tables). --int8 changes nothing here.",
         "CPU-trained: one shared CPU thread within a 75-minute budget. Its hyperprior collapsed in that run (z the "
         "same everywhere: h_a's ReLUs stopped firing while the new g_a was still random), so it was retrained "
         "from a fresh init on the frozen transforms (aekit refit-hyperprior --reinit, 12,000 steps).",
         "The tables in manifest.json and the hashes of hyper_encoder.onnx (fp16-stored) / hyper_decoder.npz pin "
         "every quality (the model id hashes them).",
         SPATIAL_LIMIT],
        "16 photos (aekit data photos, train split: 14 trained on, 2 validate)",
        export_args="--int8 --int8-encoder --weights fp16 --calib-data data/photos/train "
                    "--int8-check-data data/photos/test"),
    "fmnist-r4": Spec(
        "codec", "Gray Fashion-MNIST codec, latent 1/4 of the raw pixels: rate-distortion trained gdn transform at H/4 "
                 "(4 channels, GDN/IGDN with four residual units after each) and a learned factorized prior "
                 "(integer tables; --quality).",
        "Fashion-MNIST train split (Debian dataset-fashion-mnist), all 60,000 images",
        "validated on a seeded 10 % of the train split; held out: the test split (the cards use 100 images per class)",
        FM_RD_CMD, "runs/zoo/fmnist-r4-s2", str(FMNIST_HELDOUT / "test"),
        "Fashion-MNIST test split, first 100 images per class", "skimage:camera:28", FM_RD_LIMITS,
        "Fashion-MNIST train, all", export_args="--weights fp16"),
    "fmnist-r9": Spec(
        "codec", "Gray Fashion-MNIST codec, latent 1/9 of the raw pixels: rate-distortion trained gdn transform at H/6 "
                 "(4 channels, GDN/IGDN with two residual units after each) and a learned factorized prior "
                 "(integer tables; --quality).",
        "Fashion-MNIST train split (Debian dataset-fashion-mnist), all 60,000 images",
        "validated on a seeded 10 % of the train split; held out: the test split (the cards use 100 images per class)",
        FM9_RD_CMD, "runs/zoo/fmnist-r9", str(FMNIST_HELDOUT / "test"),
        "Fashion-MNIST test split, first 100 images per class", "skimage:camera:28", FM9_RD_LIMITS,
        "Fashion-MNIST train, all"),
    "fmnist-detect": Spec(
        "detector", "Fashion-MNIST anomaly detector: one ratio-1/4 model shared by the 10 classes, trained not to copy "
                    "local defects (--noise defects:0.9), calibrated per class (score mse-top1, alpha 0.05).",
        "Fashion-MNIST train split (Debian dataset-fashion-mnist), seeded 10,000-image subset",
        "calibrated on images 100-199 of each test-split class, benchmarked on images 0-99 (never trained on)",
        FM_CMD.format(r=4, name="fmnist-detect") + " --noise defects:0.9", "runs/zoo/fmnist-detect",
        str(FMNIST_HELDOUT / "test"), "Fashion-MNIST test split, first 100 images per class", "skimage:camera:28",
        ["One shared model for all classes, short training (10,000 images, 8 epochs): per-class models of "
         "`aekit detector train-per-class` (80 epochs by default) detect local defects better (detector/RESULTS.md).",
         "Thresholds hold for images exchangeable with the calibration images (Fashion-MNIST test split); "
         "recalibrate on your own normals: `aekit calibrate` on a copy of the folder (it refuses the shipped one). "
         "The realised FPR is measured on 100 clean images per class: +-2 points of binomial noise per class.",
         "AUROC is for synthetic local defects (aekit bench-detect), not for real defects."],
        "Fashion-MNIST train, 10k subset, defects:0.9"),
}


def roundtrip_image(spec: str) -> np.ndarray:
    """'skimage:NAME' or 'skimage:NAME:SIDE' (box-downscaled square) -> uint8 (H, W, C)."""
    import skimage.data
    from PIL import Image

    _, name, *side = spec.split(":")
    arr = getattr(skimage.data, name)()
    if side:
        n = int(side[0])
        arr = np.asarray(Image.fromarray(arr).resize((n, n), Image.BOX))
    return arr[:, :, None] if arr.ndim == 2 else arr[:, :, :3]


def roundtrip_psnr(model_dir: Path, spec: str) -> float:
    """PSNR of one image through compress -> .ael bytes -> decompress with the model."""
    from aekit.codec.core import Codec, Decoder
    from aekit.metrics import psnr

    image = roundtrip_image(spec)
    codec = Codec(model_dir)
    mode = "L" if image.shape[2] == 1 else "RGB"
    x = np.repeat(image, 3, axis=2) if mode == "L" and codec.channels == 3 else image
    restored, _ = Decoder([model_dir]).decompress(codec.compress(x, mode))
    return psnr(image, restored)


def aekit(*argv: str) -> None:
    from aekit.cli import main

    print("$ aekit " + shlex.join(argv), flush=True)
    if main(list(argv)) != 0:
        raise SystemExit(f"aekit {argv[0]} failed")


def fmnist_heldout(n: int = 100) -> None:
    """data/fmnist-zoo/{test,cal}/CLASS: the first n and the next n images of each test-split class (copies)."""
    for cls in sorted(p.name for p in Path("data/fmnist/test").iterdir()):
        files = sorted(Path("data/fmnist/test", cls).glob("*.png"))
        for split, part in (("test", files[:n]), ("cal", files[n:2 * n])):
            (FMNIST_HELDOUT / split / cls).mkdir(parents=True, exist_ok=True)
            for f in part:
                if not (FMNIST_HELDOUT / split / cls / f.name).exists():
                    shutil.copy(f, FMNIST_HELDOUT / split / cls / f.name)


def heldout(results: dict[str, Any], m: dict[str, Any], source: str, path: str | None = None) -> dict[str, Any]:
    """The card's held-out section from an `aekit evaluate` results.json: this model's points vs JPEG/WebP/klt.
    path: only the rows of the model given as this -m argument (two folders of one id in one run: one with a
    channel context, one without)."""
    points = []
    for e in results["models"]:
        if e.get("model_id") != m["model_id"] or (path is not None and e.get("model") != path):
            continue
        label = f"q{e['quality']}" if e.get("quality") else f"L{e['levels']}"
        points.append({"label": label, "quality": e.get("quality"), "levels": e.get("levels"),
                       "mean_bytes": e["mean_bytes"], "bpp": e["bpp"], "psnr": e["psnr"], "msssim": e.get("msssim"),
                       "jpeg_psnr": (e.get("jpeg_at_equal_bytes") or {}).get("psnr"),
                       "webp_psnr": (e.get("webp_at_equal_bytes") or {}).get("psnr")})
    if not points:
        raise SystemExit(f"{source}: no results for model {m['model_id']}")
    points.sort(key=lambda p: p["bpp"])
    dq = (m.get("entropy") or {}).get("default_quality") if isinstance(m.get("entropy"), dict) else None
    default = next((p for p in points if dq and p["quality"] == dq), None) or next(
        (p for p in points if p["levels"] == m["latent"]["levels"]), points[-1])
    paths = {e["model"] for e in results["models"] if e.get("model_id") == m["model_id"]
             and (path is None or e.get("model") == path)}
    bd = next((b for b in results.get("bd", []) if b.get("model") in paths), {})
    return {"set": results.get("name") or results.get("data"), "images": results.get("images"), "results": source,
            "command": (results.get("config") or {}).get("command"), "points": points, "default": default,
            "bd": {k: {m: (x if x == x else None) for m, x in v.items()} for k, v in bd.items()  # NaN -> null
                   if isinstance(v, dict) and (v.get("bd_rate") is not None or v.get("bd_psnr") is not None)},
            "machine": results.get("machine")}


def detector_figures(d: Path, m: dict[str, Any], out: Path) -> dict[str, Any]:
    """Local-defect benchmark per class (aekit bench-detect's protocol, score mse-top1, alpha 0.05)."""
    from aekit.detector import defect_bench

    per = {}
    for cls in sorted(p.name for p in (FMNIST_HELDOUT / "test").iterdir()):
        path = out / "defects" / f"{cls}.json"
        res = json.loads(path.read_text()) if path.is_file() else {}
        if res.get("model_id") != m["model_id"]:  # measured for this model already: reuse
            test, cal = (defect_bench.load_folder(FMNIST_HELDOUT / s / cls, m["channels"]) for s in ("test", "cal"))
            res = {**defect_bench.run(d, test, cal, ["mse-top1"], alpha=0.05, cls=cls, seed=0, threads=1),
                   "model_id": m["model_id"]}
            atomic_write_bytes(path, (json.dumps(res, indent=1) + "\n").encode())
        r = res["results"][0]
        per[cls] = {k: round(r[k], 4) for k in ("image_auroc", "image_auroc_large", "fpr", "recall", "recall_large")}
    cal = m.get("calibration") or {}
    return {"benchmark": "aekit bench-detect protocol: one seeded synthetic local defect (2-8 px) on each of 100 "
                         "held-out images per class, calibrated on 100 others", "score": "mse-top1", "alpha": 0.05,
            "stored_calibration": {"score": cal.get("score"), "alpha": cal.get("alpha")},
            "auroc": round(float(np.mean([v["image_auroc"] for v in per.values()])), 4),
            "auroc_large": round(float(np.mean([v["image_auroc_large"] for v in per.values()])), 4),
            "fpr": round(float(np.mean([v["fpr"] for v in per.values()])), 4),
            "recall_large": round(float(np.mean([v["recall_large"] for v in per.values()])), 4),
            "per_class": per, "results": str(out / "defects")}


def evaluate_argv(name: str, m: dict[str, Any], out: Path | str, compare: list[str] | None = None) -> list[str]:
    """The held-out `aekit evaluate` of a card: every quality (rate-distortion) or four latent levels (tanh)."""
    spec = SPECS[name]
    argv = ["evaluate", spec.heldout, "-m", name, "-o", str(out), "--name", spec.heldout_name, "--device", "cpu"]
    if m["latent"].get("quantiser") != "integer":  # tanh models: a curve over latent levels
        argv += ["--levels", "256", "64", "32", "16"]
    for other in compare or []:  # e.g. the klt models: BD-rate against the linear transform
        argv += ["-m", other]
    return argv


def build(name: str, src: Path, eval_json: Path | None, compare: list[str] | None = None,
          path: str | None = None) -> Path:
    spec, dest = SPECS[name], zoo.ZOO_DIR / name
    m = load_manifest(src)
    if spec.task == "detector" and not m.get("calibration"):  # calibrate the exported folder, then ship it
        fmnist_heldout()
        aekit("calibrate", str(src), str(FMNIST_HELDOUT / "cal"), "--alpha", "0.05", "--threads", "1", "--device", "cpu")
        m = load_manifest(src)
    dest.mkdir(exist_ok=True)
    before = _network_hashes(dest)  # a re-ship with the same networks keeps their measured speed
    old_speed = load_card(name).get("speed") if before and (dest / zoo.CARD).is_file() else None
    for f in dest.iterdir():
        f.unlink()
    shipped = {k: v for k, v in m["files"].items()
               if k in ("encoder", "decoder", "hyper_encoder", "hyper_decoder", "encoder_int8", "decoder_int8",
                        "channel_context")}
    for f in [*shipped.values(), "manifest.json"] + (["calibration.npz"] if (src / "calibration.npz").is_file() else []):
        shutil.copy(src / f, dest / f)
    clean = dict(m)
    clean["files"] = shipped  # fp16 / --int8 export files are not shipped; an add-int8 decoder variant is
    save_manifest(dest, clean)
    m = load_manifest(dest)  # checks the id against the copied files
    out = Path("codec/results/zoo") / name
    if eval_json is None:
        if name.startswith("fmnist"):
            fmnist_heldout()
        argv = evaluate_argv(name, m, out, compare)
        aekit(*argv)
        eval_json = out / "results.json"
        results = json.loads(eval_json.read_text())  # in-process: record the evaluate command, not this one
        results["config"]["command"] = "aekit " + shlex.join(argv)
        atomic_write_bytes(eval_json, (json.dumps(results, indent=1) + "\n").encode())
    same = old_speed if before and _network_hashes(dest) == before else None
    card = make_card(name, spec, m, dest, json.loads(eval_json.read_text()), str(eval_json), same, path)
    if spec.task == "detector":
        card["detector"] = detector_figures(dest, m, out)
    (dest / zoo.CARD).write_text(json.dumps(card, indent=1) + "\n")
    print(render(card))
    return dest


def training(name: str, spec: Spec, m: dict[str, Any]) -> dict[str, Any]:
    """Recipe and what the run recorded: the manifest's training summary, the run's log.csv and config.json."""
    from aekit.machine import cpu_name

    tr = m.get("training") or {}
    run = Path(tr["checkpoint"]).parent if tr.get("checkpoint") else Path(spec.run)
    epochs, seconds = tr.get("epochs"), tr.get("train_time_s")
    if (run / "log.csv").is_file():  # the epochs actually run and their summed wall time
        lines = (run / "log.csv").read_text().splitlines()[1:]
        epochs, seconds = len(lines), round(sum(float(x.split(",")[-1]) for x in lines), 1)
    config = json.loads((run / "config.json").read_text())["train"] if (run / "config.json").is_file() else {}
    threads = config.get("threads", 1)
    stage1 = tr.get("init_from") or {}  # --init-from: the warm start's epochs and time count too
    if stage1 and epochs is not None and seconds is not None:
        epochs, seconds = epochs + int(stage1.get("epoch", 0)), round(seconds + float(stage1.get("train_time_s", 0.0)), 1)
    refit = {}
    if (run / "log.jsonl").is_file() and not (run / "log.csv").is_file():  # aekit refit-hyperprior's run
        rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
        refit = {"refit_hyperprior_steps": rows[-1].get("step"), "refit_hyperprior_time_s": rows[-1].get("time_s")}
        if seconds is not None and refit["refit_hyperprior_time_s"]:
            seconds = round(seconds + float(refit["refit_hyperprior_time_s"]), 1)
    src = (SPECS.get(spec.rescaled) or SOURCES[spec.rescaled]) if spec.rescaled else spec
    export = (f"aekit export {src.run}/best.pt --out models/zoo/{spec.rescaled or name}"
              + (f" {src.export_args}" if src.export_args else ""))
    if spec.rescaled:
        export += f" && aekit rescale models/zoo/{spec.rescaled} --ratio {m['ratio']} --out models/zoo/{name}"
    export += add_quality_cmd(name, m)
    return {"data": spec.data, "split": spec.split, "command": src.command,
            "export_command": export,
            "seed": config.get("seed", 0), "epochs": epochs, "time_s": seconds,
            "machine": f"{tr.get('device', 'cpu')}: {cpu_name()}, {threads} torch thread(s), 2 cores shared with "
                       "other trainings", "torch": tr.get("torch"), "n_train": tr.get("n_train"), "n_val": tr.get("n_val"),
            "best_val_psnr": tr.get("best_val_psnr") and round(tr["best_val_psnr"], 2),
            **{k: tr[k] for k in ("prior_refit_bpp", "rate_weight") if k in tr},
            **refit,
            "rebuild": f"bash bench/train_zoo.sh {name}"}


def _network_hashes(d: Path) -> dict[str, str]:
    """sha256 of a model folder's encoder.onnx and decoder.onnx ({} if either is missing)."""
    import hashlib

    files = [d / "encoder.onnx", d / "decoder.onnx"]
    if not all(f.is_file() for f in files):
        return {}
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def make_card(name: str, spec: Spec, m: dict[str, Any], dest: Path, results: dict[str, Any], source: str,
              speed: dict[str, Any] | None = None, path: str | None = None) -> dict[str, Any]:
    """The card; `speed`: the previous card's speed section, reused when encoder.onnx and decoder.onnx are
    byte-identical (a hyperprior refit changes only the hyper files), else measured here."""
    rt = roundtrip_psnr(dest, spec.roundtrip)
    default = heldout(results, m, source, path)["default"]
    if speed is not None:
        speed = {**speed, "at_default_quality": {k: default.get(k) for k in ("label", "psnr", "bpp")}}
        speed["measured_on"] = {**speed.get("measured_on", {}), "reused": "same encoder.onnx and decoder.onnx "
                                "(sha256) as the card this one replaced: the speed was measured on these networks"}
    return {"format": CARD_FORMAT, "version": CARD_VERSION, "name": name, "model_id": m["model_id"], "task": spec.task,
            "summary": spec.summary, "trained_on": spec.trained_on, "files": folder_files(dest),
            "model": {"arch": m.get("arch"), "ratio": m["ratio"], "channels": m["channels"], "factor": m["factor"],
                      "latent_channels": m["latent_channels"], "width": (m.get("model_config") or {}).get("width"),
                      **{k: (m.get("model_config") or {}).get(k) for k in ("encoder_width", "hyper_width")
                         if (m.get("model_config") or {}).get(k)}},
            "training": training(name, spec, m), "heldout": heldout(results, m, source, path),
            "roundtrip": {"image": spec.roundtrip, "psnr_db": round(rt, 2), "floor_db": float(np.floor(rt * 10) / 10 - 0.5)},
            "limits": spec.limits, "speed": speed or speed_section(dest, m, default), **int8_section(m)}


def int8_section(m: dict[str, Any]) -> dict[str, Any]:
    """The card's summary of a model's int8 variants (`aekit add-int8`), {} without them."""
    v = m.get("int8_variants")
    if not isinstance(v, dict):
        return {}
    return {"int8_variants": {"files": [m["files"][f"{p}_int8"] for p in v["parts"]], "use": v.get("use"),
                              "psnr_loss_db": v.get("psnr_loss_db"), "check_images": v.get("check_images"),
                              "check_data": v.get("check_data"), "speedup": v.get("speedup"),
                              "symbols_changed": v.get("symbols_changed"),
                              **({"encoder_fp32_nodes": v["encoder_fp32_nodes"]} if v.get("encoder_fp32_nodes") else {})}}


def add_quality_cmd(name: str, m: dict[str, Any]) -> str:
    """' && aekit add-quality models/zoo/NAME --step ...' for the qualities a model got after export (the ones past
    its first superseded model's), else ''."""
    sup = m.get("supersedes") or []
    if not sup:
        return ""
    steps = " ".join(f"--step {q['step']:g}" for q in m["entropy"]["qualities"][sup[0]["qualities"]:])
    return f" && aekit add-quality models/zoo/{name} {steps}"


def refresh(name: str, eval_json: Path | None = None, path: str | None = None) -> dict[str, Any]:
    """Bring a shipped model's card up to date with its folder after a change that keeps the model id
    (int8 variants added, tile contexts written, a new coder) or extends it (aekit add-quality: the card's id is one
    the folder supersedes): files, limits (SPECS) and the int8 summary, and with `eval_json` (an `aekit evaluate`
    results.json that includes this model id) the held-out figures."""
    d = zoo.ZOO_DIR / name
    card, m = load_card(name), load_manifest(d)
    if eval_json is not None:
        card["heldout"] = heldout(json.loads(Path(eval_json).read_text()), m, str(eval_json), path)
        if isinstance(card.get("speed"), dict):
            card["speed"]["at_default_quality"] = {k: card["heldout"]["default"].get(k) for k in ("label", "psnr", "bpp")}
    if card.get("model_id") in {e["model_id"] for e in m.get("supersedes") or []}:
        card["model_id"] = m["model_id"]  # aekit add-quality: the same networks with more qualities
        tr = card.get("training") or {}
        if isinstance(tr.get("export_command"), str):
            tr["export_command"] = tr["export_command"].split(" && aekit add-quality ")[0] + add_quality_cmd(name, m)
    if card.get("model_id") != m["model_id"]:
        raise SystemExit(f"{name}: the card is for model {card.get('model_id')}, the folder holds {m['model_id']}: "
                         "rebuild it (python -m aekit.bench.zoo build)")
    card.pop("int8_variants", None)
    card.update(files=folder_files(d), limits=SPECS[name].limits, **int8_section(m))
    (d / zoo.CARD).write_text(json.dumps(card, indent=1) + "\n")
    return card


def speed_section(d: Path, m: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    """The card's speed: GFLOP/MP (graph count) and 1-thread MP/s measured on this machine
    (aekit.export.speed.model_speed), next to the held-out PSNR/bpp at the default quality it buys."""
    from aekit.export.speed import model_speed

    sp = model_speed(d / m["files"]["encoder"], d / m["files"]["decoder"], m["channels"], m["latent_channels"],
                     m["factor"], seconds=3.0)
    sp["measured_on"]["machine_load"] = "2 shared cores; run under flock /work/runs/bench.lock when quiet"
    return {**sp, "at_default_quality": {k: default.get(k) for k in ("label", "psnr", "bpp")}}


def update_speed(name: str) -> dict[str, Any]:
    """Re-measure only the speed section of a shipped model's card (other fields untouched)."""
    d = zoo.path(name)
    if d is None:
        raise SystemExit(f"{name}: not a shipped model (have: {', '.join(zoo.names())})")
    card, m = load_card(name), load_manifest(d)
    card["speed"] = speed_section(d, m, card["heldout"]["default"])
    (d / zoo.CARD).write_text(json.dumps(card, indent=1) + "\n")
    return card["speed"]


def verify(name: str, tolerance_db: float = 0.2) -> list[str]:
    """Re-run `aekit evaluate` on the card's held-out set; the card's points must match within tolerance_db."""
    import tempfile

    card, spec = load_card(name), SPECS[name]
    if name.startswith("fmnist"):
        fmnist_heldout()
    with tempfile.TemporaryDirectory() as tmp:
        aekit(*evaluate_argv(name, load_manifest(zoo.path(name)), tmp))
        fresh = heldout(json.loads((Path(tmp) / "results.json").read_text()), load_manifest(zoo.path(name)), tmp)
    new = {p["label"]: p["psnr"] for p in fresh["points"]}
    return [f"{name} {p['label']}: card {p['psnr']:.2f} dB, fresh {new.get(p['label'], float('nan')):.2f} dB"
            for p in card["heldout"]["points"] if not abs(new.get(p["label"], -1e9) - p["psnr"]) <= tolerance_db]


def write_readme(path: Path = Path("README.md")) -> str:
    """Put the current model table between README's `<!-- zoo table` and `<!-- end zoo table -->` lines."""
    text = path.read_text()
    start = text.index("\n", text.index("<!-- zoo table")) + 1
    end = text.index("<!-- end zoo table -->")
    path.write_text(text[:start] + table(markdown=True) + "\n" + text[end:])
    return f"{path}: model table of {len(zoo.names())} models written"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m aekit.bench.zoo", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="install an exported model into aekit/zoo and write its card")
    b.add_argument("name", choices=sorted(SPECS))
    b.add_argument("--from", dest="src", type=Path, help="exported model folder (default: models/zoo/NAME)")
    b.add_argument("--eval", type=Path, help="an existing `aekit evaluate` results.json with this model (default: run it)")
    b.add_argument("--model-path", help="with --eval: only the rows of the model given as this -m argument")
    b.add_argument("--compare", action="append", default=[], help="more models for the held-out evaluation "
                   "(repeatable), e.g. the klt models: the card gets BD-rates against their envelope")
    r = sub.add_parser("readme", help="print the README's model table")
    r.add_argument("--write", action="store_true", help="replace the table in README.md (between its zoo-table markers)")
    v = sub.add_parser("verify", help="re-run the held-out evaluation: card figures within 0.2 dB (exit 1 if not)")
    v.add_argument("name", nargs="*", default=[], help="shipped models (default: all with a spec)")
    sp = sub.add_parser("speed", help="re-measure the cards' speed sections only (GFLOP/MP, 1-thread MP/s)")
    sp.add_argument("name", nargs="*", default=[], help="shipped models (default: all with a spec)")
    rf = sub.add_parser("refresh", help="update cards after a change that keeps the model id (files, int8 variants)")
    rf.add_argument("name", nargs="*", default=[], help="shipped models (default: all)")
    rf.add_argument("--eval", type=Path, help="an `aekit evaluate` results.json with these models' ids: "
                    "re-record their held-out figures from it")
    rf.add_argument("--model-path", help="with --eval: only the rows of the model given as this -m argument")
    args = ap.parse_args(argv)
    if args.cmd == "refresh":
        for n in args.name or zoo.names():
            card = refresh(n, args.eval, args.model_path)
            print(n, json.dumps(card["heldout"]["default"] if args.eval else card.get("int8_variants")))
        return 0
    if args.cmd == "speed":
        for n in args.name or [n for n in zoo.names() if n in SPECS]:
            print(n, json.dumps(update_speed(n)))
        return 0
    if args.cmd == "readme":
        print(write_readme() if args.write else table(markdown=True))
        return 0
    if args.cmd == "verify":
        bad = [b for n in (args.name or [n for n in zoo.names() if n in SPECS]) for b in verify(n)]
        print("\n".join(bad) or "card figures reproduced within 0.2 dB")
        return 1 if bad else 0
    build(args.name, args.src or Path("models/zoo") / args.name, args.eval, args.compare, args.model_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
