"""The bench's inputs: real images from a folder, fitted to the swept sizes, and batches of them.

    imgs = [fit(im, 256, 256) for im in load_images(image_folder(cfg, manifest), 3, 32)]
Content-dependent stages (entropy coding, JPEG) walk through the distinct images with Cycle.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from aekit.bench.schema import BenchConfig


def parse_size(text: str) -> tuple[int, int]:
    """'256x256' or '256' -> (256, 256)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        h, w = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, 0)
    except ValueError:
        h = w = 0
    if h <= 0 or w <= 0:
        raise ValueError(f"size {text!r}: expected HxW with positive integers, e.g. 256x256")
    return h, w


def image_folder(cfg: BenchConfig, manifest: dict[str, Any]) -> Path:
    cands = [cfg.images] if cfg.images else [manifest.get("training", {}).get(k) for k in ("val_data", "data")]
    for c in cands:
        if c and Path(c).exists():
            return Path(c)
    if cfg.images:
        raise FileNotFoundError(f"--images {cfg.images}: no such folder")
    raise ValueError(f"{manifest['_dir']}: its training images are not on this machine; pass --images FOLDER")


def load_images(folder: Path, channels: int, n: int) -> list[np.ndarray]:
    """Up to n real images spread over the folder (every k-th file), uint8 (H, W, C)."""
    from aekit.images import ImageError, load_image, scan_folder

    samples, _, _ = scan_folder(folder)
    step = max(1, len(samples) // n)
    out = []
    for s in samples[::step]:
        try:
            out.append(load_image(s.path, channels)[0])
        except ImageError:
            continue
        if len(out) == n:
            break
    if not out:
        raise ValueError(f"{folder}: no readable images")
    return out


def fit(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Centre-crop to the aspect ratio of (h, w), then resize (bicubic) to exactly h x w."""
    from PIL import Image

    ih, iw = img.shape[:2]
    if (ih, iw) == (h, w):
        return img
    scale = min(ih / h, iw / w)
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = (ih - ch) // 2, (iw - cw) // 2
    crop = img[top:top + ch, left:left + cw]
    pil = Image.fromarray(crop[:, :, 0] if crop.shape[2] == 1 else crop).resize((w, h), Image.BICUBIC)
    arr = np.asarray(pil)
    return arr[:, :, None] if arr.ndim == 2 else arr


def tile(items: np.ndarray, batch: int) -> np.ndarray:
    """A batch of `batch` items cycling through the distinct ones (B, ...)."""
    idx = np.arange(batch) % len(items)
    return np.ascontiguousarray(items[idx])


class Cycle:
    """Index batches that walk through the distinct items, wrapping around: content-dependent
    stages (entropy coding, JPEG) then see every image whatever the batch size."""

    def __init__(self, n: int, batch: int):
        self.n, self.batch, self.k = n, batch, 0

    def next(self) -> np.ndarray:
        idx = (self.k * self.batch + np.arange(self.batch)) % self.n
        self.k += 1
        return idx
