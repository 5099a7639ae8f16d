"""New images from a trained model: VAE samples from the prior, and latent interpolation.

    aekit sample runs/vae/best.pt -n 64 -o grid.png
    aekit interpolate runs/vae/best.pt a.png b.png --steps 8 -o strip.png
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from aekit.checkpoint import CheckpointError, load_model
from aekit.images import from_model_output, load_image, save_image, to_model_input


def resolve_checkpoint(model: str | Path) -> Path:
    """A checkpoint file, or a run folder holding best.pt."""
    path = Path(model)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{model}: no checkpoint (expected a .pt file or a run folder with best.pt)")
    return path


def training_size(ckpt: dict) -> int:
    """The side length the model was trained at (what sampling should generate)."""
    sides = [h.get("size") for h in ckpt.get("history", []) if h.get("size")]
    if sides:  # the side its epochs really trained on (size 0 = "the images' own size" is resolved there)
        return int(sides[-1])
    return int(ckpt.get("train_config", {}).get("data_cfg", {}).get("size", 64) or 64)


def tile(images: np.ndarray, cols: int | None = None, gap: int = 2) -> np.ndarray:
    """uint8 (N, H, W, C) -> one (rows*(H+gap)-gap, cols*(W+gap)-gap, C) grid, white gaps."""
    n, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, c), 255, np.uint8)
    for i, im in enumerate(images):
        r, k = divmod(i, cols)
        grid[r * (h + gap):r * (h + gap) + h, k * (w + gap):k * (w + gap) + w] = im
    return grid


def sample(model: str | Path, n: int, out: str | Path, size: int | None = None, seed: int = 0) -> Path:
    """Decode n draws from a VAE's prior into a grid PNG at `out`; returns the path."""
    path = resolve_checkpoint(model)
    ae, ckpt = load_model(path)
    if not hasattr(ae, "sample"):
        raise CheckpointError(f"{path}: arch {ae.cfg.arch!r} has no prior to sample from "
                              "(train with --arch vae)")
    if n < 1:
        raise ValueError(f"-n must be at least 1, got {n}")
    side = size or training_size(ckpt)
    x = ae.sample(n, side, side, torch.Generator().manual_seed(seed))  # (n, C, side, side)
    return save_image(tile(from_model_output(x.numpy())), out)


def interpolate(model: str | Path, a: str | Path, b: str | Path, out: str | Path, steps: int = 8) -> Path:
    """Decode `steps` latents on the line between two images' (mean) latents into a strip:
    a, its reconstruction ... b's reconstruction, b. Both images must share one size."""
    path = resolve_checkpoint(model)
    ae, _ = load_model(path)
    if steps < 2:
        raise ValueError(f"--steps must be at least 2, got {steps}")
    ims = [load_image(p, ae.cfg.channels)[0] for p in (a, b)]
    if ims[0].shape != ims[1].shape:
        raise ValueError(f"{a} is {ims[0].shape[1]}x{ims[0].shape[0]} but {b} is "
                         f"{ims[1].shape[1]}x{ims[1].shape[0]}: interpolation needs one size")
    h, w = ims[0].shape[:2]
    with torch.no_grad():
        x = torch.from_numpy(to_model_input(np.stack(ims)))  # (2, C, H, W)
        y = ae.encode(ae.pad(x))  # (2, c_y, h', w')
        t = torch.linspace(0, 1, steps).view(-1, 1, 1, 1)
        y_t = (1 - t) * y[:1] + t * y[1:]  # (steps, c_y, h', w')
        x_t = ae.decode(ae.quantise(y_t))[..., :h, :w]
    frames = np.concatenate([ims[:1], from_model_output(x_t.numpy()), ims[1:]])
    return save_image(tile(frames, cols=len(frames)), out)
