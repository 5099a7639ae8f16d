"""A learned channel-conditional context for a gdn-hp model's frozen latents (Minnen & Singh 2020).

    aekit fit-context runs/photos-r9-import/imported.pt data/photos-plus/train --out runs/ctx-r9
    aekit add-context models/photos-r9 runs/ctx-r9/context.pt        # integer weights into the model folder

Minnen & Singh, "Channel-wise autoregressive entropy models for learned image compression" (ICIP 2020):
ŷ's c_y channels are split into S equal slices coded one after the other, and slice k's Gaussian
parameters see the slices already decoded. Here the hyperprior's own (μ, ln σ) stay the base and a
small network per slice corrects them: slice k's network takes [μ, ln σ (all c_y channels), ŷ of
slices 0..k−1] (2·c_y + k·c_y/S channels) through three 3×3 convolutions with LeakyReLU of slope 1/4
(a power of two, so the codec evaluates it in exact integers: aekit.export.context) and outputs
(Δμ, Δ ln σ) for its c_y/S channels, added to the hyperprior's. The last layer starts at zero, so an
untrained context codes exactly as the hyperprior alone.

Training freezes g_a, h_a, h_s and z's prior: the latents y of the training images (at a few scales,
mirrored) are computed once, and only the context is trained on random crops, with a quality step Δ
drawn per batch from the codec's QUALITY_STEPS and ŷ = clip(round(y/Δ), ±127)·Δ and ẑ rounded exactly
as the codec rounds them. The loss is the codec's own rate of ŷ: −log2 of ŷ's bin under
N(μ + Δμ, (σ·e^{Δ ln σ})²) per latent element (ẑ's bits do not change). Images cannot change either:
only the bits fall. The result, RUN/context.pt, is what `aekit add-context` converts; RUN/last.pt holds
the optimiser state for `--resume`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import pickle
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from aekit.models.context import ChannelContext

log = logging.getLogger(__name__)

CONTEXT_SLOPE = 0.25  # LeakyReLU's negative slope: 2^-2, exact in the codec's integer evaluation (aekit.export.context)

CONTEXT_FORMAT = "aekit-channel-context"
HALF = 127  # ŷ symbols are clip(round(y/Δ), ±127)


@dataclass
class ContextConfig:
    checkpoint: str  # a gdn-hp checkpoint (aekit train / refit-hyperprior / import)
    data: str  # training image folder (never the held-out images)
    out: str  # run folder: context.pt, last.pt, log.jsonl
    slices: int = 4
    width: int = 96
    steps: int = 3000
    lr: float = 1e-3  # Adam, cosine-annealed to 0
    batch_size: int = 8
    crop: int = 32  # latent positions per crop side
    scales: tuple[float, ...] = (1.0, 0.7, 0.5)
    val_data: str | None = None
    log_every: int = 250
    seed: int = 0
    threads: int = 1
    resume: bool = False
    grid_scale: float = 0.0  # as aekit refit-hyperprior's


def _side(model: Any, y: "torch.Tensor", step: float) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor", float]:
    """The codec's ŷ, the hyperprior's (μ, ln σ) from its rounded ẑ, and ẑ's bits, for y (B, c_y, h, w)."""
    import torch

    y_hat = torch.clamp(torch.round(y / step), -HALF, HALF) * step
    z_hat = torch.clamp(torch.round(model.hyper_analysis(y_hat)), -HALF, HALF)
    mean, log_scale = model.gaussian_params(z_hat, *y.shape[-2:])
    return y_hat, mean, log_scale, float(-torch.log2(model.entropy.likelihood(z_hat)).sum())


def ideal_bpp(model: Any, ctx: "ChannelContext | None", ys: list["torch.Tensor"], px: int,
              steps: tuple[float, ...]) -> dict[str, dict[str, float]]:
    """Ideal code length (bits per image pixel, ŷ and ẑ) of latents ys at each Δ: the hyperprior alone and with ctx."""
    import torch

    from aekit.entropy_models import gaussian_likelihood

    out = {}
    with torch.no_grad():
        for step in steps:
            b0 = b1 = zb = 0.0
            for y in ys:
                y_hat, mean, log_scale, z = _side(model, y[None], step)
                zb += z
                b0 += float(-torch.log2(gaussian_likelihood(y_hat, log_scale, step, mean)).sum())
                if ctx is not None:
                    m2, l2 = ctx(y_hat, mean, log_scale)
                    b1 += float(-torch.log2(gaussian_likelihood(y_hat, l2, step, m2)).sum())
            row = {"hyperprior": round((b0 + zb) / px, 5)}
            if ctx is not None:
                row.update(context=round((b1 + zb) / px, 5), change_pct=round(100 * (b1 - b0) / (b0 + zb), 2))
            out[str(step)] = row
    return out


def fit_context(cfg: ContextConfig) -> Path:
    """Train a ChannelContext on cfg.checkpoint's frozen latents; returns out/context.pt.

    context.pt holds {"format", "config" (channels, slices, width, slope), "state_dict", "fit" (this config,
    time, validation bits)}. Raises ValueError for a checkpoint that is not gdn-hp or a slice count that does
    not divide c_y, and aekit.checkpoint.CheckpointError for an unreadable checkpoint."""
    import torch

    from aekit.checkpoint import load_model
    from aekit.entropy_models import QUALITY_STEPS, gaussian_likelihood
    from aekit.hyperfit import _images, _rng_list, _rng_state, latent_cache
    from aekit.models.context import ChannelContext

    torch.set_num_threads(max(1, cfg.threads))
    out = Path(cfg.out)
    model, ckpt = load_model(cfg.checkpoint)
    if ckpt["model_config"].get("arch") != "gdn-hp":
        raise ValueError(f"{cfg.checkpoint}: arch {ckpt['model_config'].get('arch')!r} has no hyperprior (needs gdn-hp)")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    ctx = ChannelContext(model.latent_channels, cfg.slices, cfg.width)
    out.mkdir(parents=True, exist_ok=True)
    opt = torch.optim.Adam(ctx.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    rng = random.Random(cfg.seed)
    start, before_s = 0, 0.0
    if cfg.resume and (out / "last.pt").is_file():
        last = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
        ctx.load_state_dict(last["state_dict"])
        opt.load_state_dict(last["optimizer"])
        sched.load_state_dict(last["scheduler"])
        start, before_s = int(last["step"]), float(last["time_s"])
        rng.setstate(_rng_state(last["rng"]))
        torch.set_rng_state(last["rng_torch"])
        log.info("resumed %s at step %d", out / "last.pt", start)
    channels = int(ckpt["model_config"].get("channels", 3))
    grid = cfg.grid_scale or float((ckpt.get("summary") or {}).get("grid_scale")
                                   or (ckpt.get("train_config") or {}).get("grid_scale") or 1.0)
    t0 = time.perf_counter()
    ys = latent_cache(model, _images(cfg.data, channels), tuple(s * grid for s in cfg.scales))
    val_images = _images(cfg.val_data, channels) if cfg.val_data else []
    val = latent_cache(model, val_images, (grid,), mirror=False)
    val_px = sum(a.shape[0] * a.shape[1] for a in val_images)
    del val_images
    log.info("latents of %d training crops cached in %.1f s", len(ys), time.perf_counter() - t0)
    val_steps = (4.0, 2.0, 1.0)
    c, run_loss, n = cfg.crop, 0.0, 0
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
        with torch.no_grad():
            y_hat, mean, log_scale, _ = _side(model, y, step)
        m2, l2 = ctx(y_hat, mean, log_scale)
        loss = -torch.log2(gaussian_likelihood(y_hat, l2, step, m2)).sum() / y.numel()  # bits per latent element
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ctx.parameters(), 1.0)
        opt.step()
        sched.step()
        run_loss, n = run_loss + float(loss.detach()), n + 1
        if (it + 1) % cfg.log_every == 0 or it + 1 == cfg.steps:
            row = {"step": it + 1, "train_bits_per_element": round(run_loss / n, 5), "lr": sched.get_last_lr()[0],
                   "time_s": round(before_s + time.perf_counter() - t0, 1)}
            log.info("step %d  train %.4f bits/element", it + 1, row["train_bits_per_element"])
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            run_loss, n = 0.0, 0
            _atomic_save(out / "last.pt", {"state_dict": ctx.state_dict(), "optimizer": opt.state_dict(),
                                           "scheduler": sched.state_dict(), "step": it + 1, "time_s": row["time_s"],
                                           "rng": _rng_list(rng.getstate()), "rng_torch": torch.get_rng_state()})
    ctx.eval()
    fit = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    fit["time_s"] = round(before_s + time.perf_counter() - t0, 1)
    if val:
        fit["val_bpp"] = ideal_bpp(model, ctx, val, val_px, val_steps)
        log.info("validation bpp (ideal): %s", fit["val_bpp"])
    _atomic_save(out / "context.pt", {"format": CONTEXT_FORMAT, "config": {**ctx.config(), "slope": CONTEXT_SLOPE},
                                      "state_dict": ctx.state_dict(), "fit": fit})
    log.info("channel context -> %s", out / "context.pt")
    return out / "context.pt"


def load_context(path: str | Path) -> tuple["ChannelContext", dict[str, Any]]:
    """RUN/context.pt -> (ChannelContext in eval mode, the saved dict). ValueError if it is not one."""
    import torch

    from aekit.models.context import ChannelContext

    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(d, dict) or d.get("format") != CONTEXT_FORMAT:
            raise ValueError("not a channel context (aekit fit-context's context.pt)")
        cfg = d["config"]
        if float(cfg.get("slope", CONTEXT_SLOPE)) != CONTEXT_SLOPE:
            raise ValueError(f"LeakyReLU slope {cfg.get('slope')} (the codec evaluates {CONTEXT_SLOPE})")
        ctx = ChannelContext(int(cfg["channels"]), int(cfg["slices"]), int(cfg["width"]))
        ctx.load_state_dict(d["state_dict"])
    except pickle.UnpicklingError:
        raise ValueError(f"{path}: not a channel context (aekit fit-context's context.pt)") from None
    except (OSError, RuntimeError, KeyError, TypeError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
    return ctx.eval(), d


def _atomic_save(path: Path, obj: dict[str, Any]) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def register(sub: argparse._SubParsersAction) -> None:
    d = ContextConfig("", "", "")
    p = sub.add_parser("fit-context", help="train a channel-conditional context for a gdn-hp model's frozen latents "
                       "(fewer bits, same images; `aekit add-context` ships it)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, description="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("checkpoint", help="gdn-hp checkpoint (RUN/best.pt, or `aekit import MODEL`'s)")
    p.add_argument("data", help="training image folder (never held-out images)")
    p.add_argument("--out", required=True, help="run folder: context.pt (for aekit add-context), last.pt, log.jsonl")
    p.add_argument("--slices", type=int, default=d.slices, help="channel slices S (divides c_y)")
    p.add_argument("--width", type=int, default=d.width, help="hidden channels of each slice's network")
    p.add_argument("--steps", type=int, default=d.steps, help="optimiser steps")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (cosine to 0)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="latent crops per step")
    p.add_argument("--crop", type=int, default=d.crop, help="latent positions per crop side")
    p.add_argument("--val-data", help="folder whose ideal bits per pixel are reported at the end")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--grid-scale", type=float, default=0.0, help="as refit-hyperprior's (0: the checkpoint's own)")
    p.set_defaults(func=cmd_fit_context)


def cmd_fit_context(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: no spinning threads
    if args.steps < 1 or args.batch_size < 1 or args.crop < 4 or not math.isfinite(args.lr) or args.lr <= 0:
        raise ValueError("--steps and --batch-size must be >= 1, --crop >= 4 and --lr > 0")
    if args.grid_scale and not 0.25 <= args.grid_scale <= 4:
        raise ValueError(f"--grid-scale {args.grid_scale:g}: between 0.25 and 4 (0: the checkpoint's own)")
    fit_context(ContextConfig(args.checkpoint, args.data, args.out, slices=args.slices, width=args.width,
                              steps=args.steps, lr=args.lr, batch_size=args.batch_size, crop=args.crop,
                              val_data=args.val_data, seed=args.seed, threads=args.threads, resume=args.resume,
                              grid_scale=args.grid_scale))
    return 0
