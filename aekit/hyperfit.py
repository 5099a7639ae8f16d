"""Refit a gdn-hp model's hyperprior on its frozen transforms, at the codec's own quantisation.

    aekit refit-hyperprior runs/photos-hp-r9-s5/best.pt data/photos/train --out runs/photos-hp-r9-rf

Why: end-to-end training fits the hyperprior (h_a, h_s and the factorized prior of z) at one step
(Δ = 1) to y plus uniform noise (Ballé et al. 2018's relaxation), while the codec codes
ŷ = round(y / Δ)·Δ at every quality step Δ of aekit.entropy_models.QUALITY_STEPS. With the
transforms frozen, y of every training image is fixed: it is computed once (the images at a few
scales and mirrored) and the hyperprior alone is trained on random crops of those latents, with a Δ
drawn per batch from the quality steps and ŷ rounded exactly as the codec rounds it. The rate term
is the codec's cost: −log2 of ŷ's bin under N(μ, σ²) from h_s(ẑ) (gaussian_likelihood) plus −log2
p(ẑ) under the factorized prior (ẑ = z + U(−½, ½) while training). Distortion cannot change: g_a
and g_s are not touched, so at every quality the decoded images are the same and only the bits fall
(the "Codec quality" section of the README gives the measured saving).

The result is an ordinary checkpoint (best.pt, last.pt in --out) for `aekit export`; last.pt holds
the optimiser and step for `--resume`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class RefitConfig:
    checkpoint: str  # a gdn-hp checkpoint (best.pt or last.pt of aekit train)
    data: str  # training image folder (never the held-out images)
    out: str  # run folder: best.pt, last.pt, log.jsonl
    steps: int = 3000  # optimiser steps
    lr: float = 5e-4  # Adam, cosine-annealed to 0 over the steps
    batch_size: int = 8  # latent crops per step
    crop: int = 32  # latent positions per crop side (32 at 1/9 is 384 image pixels)
    scales: tuple[float, ...] = (1.0, 0.7, 0.5)  # image scales whose latents are cached (each also mirrored)
    val_data: str | None = None  # optional folder: its bits per pixel are logged (ideal code length)
    log_every: int = 250
    seed: int = 0
    threads: int = 1
    resume: bool = False
    reinit: bool = False  # start h_a, h_s and z's prior afresh (seeded) instead of from the checkpoint's
    grid_scale: float = 0.0  # every cached image scale (and the val images') times this; 0: the checkpoint's own
    # training grid (`aekit train --grid-scale`: its summary's, or its train_config's if it was stopped early; else 1)


def _images(folder: str, channels: int) -> list[np.ndarray]:
    """uint8 (H, W, channels) arrays of every image under folder (aekit's channel rule)."""
    from aekit.images import load_for_channels, scan_folder

    samples, _, _ = scan_folder(folder)
    if not samples:
        raise ValueError(f"{folder}: no images")
    return [load_for_channels(s.path, channels)[0] for s in samples]


def latent_cache(model: Any, images: list[np.ndarray], scales: tuple[float, ...], mirror: bool = True) -> list[Any]:
    """Frozen g_a's y (c_y, h, w) float32 tensors of each image at each scale (and mirrored)."""
    import torch
    from PIL import Image

    from aekit.images import to_model_input

    out = []
    with torch.no_grad():
        for arr in images:
            for s in scales:
                a = arr
                if s != 1.0:
                    im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
                    im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.LANCZOS)
                    a = np.asarray(im).reshape(im.height, im.width, arr.shape[2])
                x = torch.from_numpy(to_model_input(a[None]))
                for flip in ((False, True) if mirror else (False,)):
                    xx = torch.flip(x, [3]) if flip else x
                    out.append(model.encode(model.pad(xx))[0].contiguous())
    return out


def codec_bits(model: Any, ys: list[Any], step: float, half: int = 127) -> float:
    """Total bits of the codec's ŷ at quality step Δ (and its ẑ) over latents ys (model.step_bits)."""
    import torch

    with torch.no_grad():
        return float(sum(model.step_bits(y[None], step, half)[1] for y in ys))


def refit_hyperprior(cfg: RefitConfig) -> Path:
    """Train h_a, h_s and z's prior of cfg.checkpoint on cached latents; returns out/best.pt.

    Raises ValueError for a checkpoint that is not gdn-hp, an --out that is the checkpoint's own folder
    or a folder without images, and
    aekit.checkpoint.CheckpointError for an unreadable checkpoint."""
    import torch

    from aekit.checkpoint import load_model
    from aekit.entropy_models import QUALITY_STEPS, gaussian_likelihood
    from aekit.entropy_models import bits as entropy_bits

    torch.set_num_threads(max(1, cfg.threads))
    out = Path(cfg.out)
    if Path(cfg.checkpoint).resolve().parent == out.resolve():
        raise ValueError(f"{cfg.out}: the checkpoint's own run folder; give a new --out (the source run is never overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    model, ckpt = load_model(cfg.checkpoint)
    arch = ckpt["model_config"].get("arch")
    if arch != "gdn-hp":
        raise ValueError(f"{cfg.checkpoint}: arch {arch!r} has no hyperprior to refit (needs gdn-hp)")
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.reinit:  # a fresh hyperprior, as a new gdn-hp of this config starts (a collapsed one cannot recover:
        from aekit.config import ModelConfig  # ReLUs that never fire get no gradient)
        from aekit.models import build_model

        torch.manual_seed(cfg.seed)
        fresh = build_model(ModelConfig.from_dict(ckpt["model_config"])).state_dict()
        state = model.state_dict()
        state.update({k: v for k, v in fresh.items() if k.startswith(("hyper_encoder.", "hyper_decoder.", "entropy."))})
        model.load_state_dict(state)
    params = [*model.hyper_parameters(), *model.entropy_parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    start, before_s = 0, 0.0  # before_s: seconds spent before a --resume (time_s counts the whole refit)
    if cfg.resume and (out / "last.pt").is_file():
        last = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(last["state_dict"])
        opt.load_state_dict(last["refit"]["optimizer"])
        sched.load_state_dict(last["refit"]["scheduler"])
        start = int(last["refit"]["step"])
        before_s = float(last["refit"].get("time_s", 0.0))
        rng.setstate(_rng_state(last["refit"]["rng"]))
        torch.set_rng_state(last["refit"]["rng_torch"])
        log.info("resumed %s at step %d", out / "last.pt", start)
    channels = int(ckpt["model_config"].get("channels", 3))
    t0 = time.perf_counter()
    # an interrupted run's best.pt has no summary yet: its train_config holds the same --grid-scale
    grid = cfg.grid_scale or float((ckpt.get("summary") or {}).get("grid_scale")
                                   or (ckpt.get("train_config") or {}).get("grid_scale") or 1.0)
    if grid != 1.0:
        log.info("latents of the images resampled by %g (the transform's grid: a model for aekit rescale)", grid)
    ys = latent_cache(model, _images(cfg.data, channels), tuple(s * grid for s in cfg.scales))
    val_images = _images(cfg.val_data, channels) if cfg.val_data else []
    val = latent_cache(model, val_images, (grid,), mirror=False)
    val_px = sum(a.shape[0] * a.shape[1] for a in val_images)  # bpp per image pixel, as the codec reports
    del val_images
    log.info("latents of %d training crops cached in %.1f s", len(ys), time.perf_counter() - t0)

    def val_bpp() -> dict[str, float]:
        model.eval()
        r = {str(d): round(codec_bits(model, val, d) / val_px, 5) for d in (1.0, 1.5, 2.0, 4.0)} if val else {}
        model.train()
        return r

    if start == 0 and val:
        log.info("before: validation bpp at steps %s", val_bpp())
    half, c = 127, cfg.crop
    model.train()
    run_loss, n = 0.0, 0
    for it in range(start, cfg.steps):
        step = rng.choice(QUALITY_STEPS)
        crops = []
        for _ in range(cfg.batch_size):
            y = rng.choice(ys)
            h, w = y.shape[1:]
            i, j = rng.randrange(max(1, h - c + 1)), rng.randrange(max(1, w - c + 1))
            crops.append(y[:, i:i + c, j:j + c])
        hh, ww = min(t.shape[1] for t in crops), min(t.shape[2] for t in crops)
        y = torch.stack([t[:, :hh, :ww] for t in crops])
        y_hat = torch.clamp(torch.round(y / step), -half, half) * step  # the codec's ŷ at this quality
        z = model.hyper_analysis(y_hat)
        z_hat = z + torch.empty_like(z).uniform_(-0.5, 0.5)
        mean, log_scale = model.gaussian_params(z_hat, hh, ww)
        bits = entropy_bits(gaussian_likelihood(y_hat, log_scale, step, mean)) + entropy_bits(model.entropy.likelihood(z_hat))
        loss = bits / y.numel()  # bits per latent element
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        run_loss, n = run_loss + float(loss.detach()), n + 1
        if (it + 1) % cfg.log_every == 0 or it + 1 == cfg.steps:
            row = {"step": it + 1, "train_bits_per_element": round(run_loss / n, 5), "lr": sched.get_last_lr()[0],
                   "val_bpp": val_bpp(), "time_s": round(before_s + time.perf_counter() - t0, 1)}
            log.info("step %d  train %.4f bits/element%s", it + 1, row["train_bits_per_element"],
                     f"  val bpp {row['val_bpp']}" if val else "")
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            run_loss, n = 0.0, 0
            _save(out / "last.pt", ckpt, model, cfg, {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                                      "step": it + 1, "time_s": row["time_s"],
                                                      "rng": _rng_list(rng.getstate()),
                                                      "rng_torch": torch.get_rng_state()})
    model.eval()
    _save(out / "best.pt", ckpt, model, cfg, None)
    log.info("refitted hyperprior -> %s", out / "best.pt")
    return out / "best.pt"


def _save(path: Path, ckpt: dict[str, Any], model: Any, cfg: RefitConfig, state: dict[str, Any] | None) -> None:
    from aekit.checkpoint import save_checkpoint

    c = dict(ckpt)
    c["state_dict"] = model.state_dict()
    c.pop("optimizer", None)  # the end-to-end run's optimiser does not apply to these weights
    c["refit_hyperprior"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    if state is not None:
        c["refit"] = state
    else:
        c.pop("refit", None)
    save_checkpoint(path, c)


def _rng_list(state: tuple) -> list:
    return [state[0], list(state[1]), state[2]]


def _rng_state(s: list) -> tuple:
    return (s[0], tuple(s[1]), s[2])


def register(sub: argparse._SubParsersAction) -> None:
    d = RefitConfig("", "", "")
    p = sub.add_parser("refit-hyperprior", help="retrain a gdn-hp model's hyperprior on its frozen transforms "
                       "at the codec's quality steps (fewer bits, same images)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, description="\n\n".join(__doc__.split("\n\n")[2:]))
    p.add_argument("checkpoint", help="gdn-hp checkpoint (RUN/best.pt)")
    p.add_argument("data", help="training image folder (the run's own; never held-out images)")
    p.add_argument("--out", required=True, help="run folder: best.pt (for aekit export), last.pt, log.jsonl")
    p.add_argument("--steps", type=int, default=d.steps, help="optimiser steps")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (cosine to 0)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="latent crops per step")
    p.add_argument("--crop", type=int, default=d.crop, help="latent positions per crop side")
    p.add_argument("--val-data", help="folder whose bits per pixel are logged")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--grid-scale", type=float, default=0.0, help="cache the latents of the images resampled by "
                   "this factor (times each augmentation scale): the grid a rescaled model runs the transform on "
                   "(0: the checkpoint's own --grid-scale, else 1)")
    p.add_argument("--reinit", action="store_true", help="start h_a, h_s and z's prior afresh (seeded) instead of "
                   "from the checkpoint's: for a hyperprior that collapsed (z the same everywhere)")
    p.set_defaults(func=cmd_refit)


def cmd_refit(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: no spinning threads (issue 17)
    if args.steps < 1 or args.batch_size < 1 or args.crop < 4 or not math.isfinite(args.lr) or args.lr <= 0:
        raise ValueError("--steps and --batch-size must be >= 1, --crop >= 4 and --lr > 0")
    if args.grid_scale and not 0.25 <= args.grid_scale <= 4:
        raise ValueError(f"--grid-scale {args.grid_scale:g}: between 0.25 and 4 (0: the checkpoint's own)")
    refit_hyperprior(RefitConfig(args.checkpoint, args.data, args.out, steps=args.steps, lr=args.lr,
                                 batch_size=args.batch_size, crop=args.crop, val_data=args.val_data,
                                 seed=args.seed, threads=args.threads, resume=args.resume, reinit=args.reinit,
                                 grid_scale=args.grid_scale))
    return 0
