"""Seeded synthetic local defects with ground-truth masks, for the defect benchmark (numpy only).

    images, masks, kinds, sizes = make_defects(normal_images, seed=0)
Each image gets one defect placed on the object (a bright pixel region, or anywhere on a
texture): a dark or bright square, a round spot, a thin scratch, a patch of noise, or a patch
cut from elsewhere in the image (CutPaste). Sizes are in pixels of a 28-px image and scale with
the image side. Only defects that visibly change the image are kept (placement is retried).
"""

from __future__ import annotations

import numpy as np

KINDS = ("square", "spot", "scratch", "noise", "cutpaste")
SIZES = (2, 4, 6, 8)  # defect side (px at 28 px; scaled by min(H, W) / 28)
MIN_CHANGE = 24.0  # mean absolute change (0..255) inside the mask for a defect to count as visible


def _region(kind: str, h: int, w: int, cy: int, cx: int, s: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean (H, W) footprint of a defect of side s centred near (cy, cx)."""
    yy, xx = np.mgrid[:h, :w]
    if kind == "spot":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= (s / 2) ** 2
    if kind == "scratch":  # a 1-px line of length 3 s through the centre
        a = rng.uniform(0, np.pi)
        t = np.linspace(-1.5 * s, 1.5 * s, 12 * s)
        m = np.zeros((h, w), bool)
        m[np.clip(np.rint(cy + t * np.sin(a)).astype(int), 0, h - 1),
          np.clip(np.rint(cx + t * np.cos(a)).astype(int), 0, w - 1)] = True
        return m
    y0, x0 = int(np.clip(cy - s // 2, 0, h - s)), int(np.clip(cx - s // 2, 0, w - s))
    m = np.zeros((h, w), bool)
    m[y0 : y0 + s, x0 : x0 + s] = True
    return m


def _paint(kind: str, im: np.ndarray, m: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """The image (H, W, C) uint8 with the footprint m painted as a defect of this kind."""
    out = im.copy()
    if kind in ("square", "spot", "scratch"):
        mean = float(im[m].mean())
        out[m] = 0 if mean > 127 else 255  # dark on bright parts, bright on dark ones
    elif kind == "noise":
        out[m] = rng.integers(0, 256, size=(int(m.sum()), im.shape[2]), dtype=np.uint8)
    else:  # cutpaste: the same footprint's content from elsewhere in the image
        h, w = m.shape
        ys, xs = np.nonzero(m)
        dy, dx = rng.integers(-ys.min(), h - ys.max()), rng.integers(-xs.min(), w - xs.max())
        out[ys, xs] = im[ys + dy, xs + dx]
    return out


def make_defects(images: np.ndarray, seed: int = 0, kinds: tuple[str, ...] = KINDS,
                 sizes: tuple[int, ...] = SIZES, object_level: int | None = 20
                 ) -> tuple[np.ndarray, np.ndarray, list[str], list[int]]:
    """uint8 (N, H, W, C) normal images -> (defective images, masks (N, H, W) bool, kind and size of each).

    Kinds and sizes cycle over the images (balanced); positions are seeded. object_level: centres
    are drawn among pixels brighter than this (the object on a dark background); None: anywhere."""
    rng = np.random.default_rng([seed, 16])
    n, h, w, _ = images.shape
    scale = min(h, w) / 28.0
    out, masks, ks, ss = images.copy(), np.zeros((n, h, w), bool), [], []
    for i in range(n):
        kind, size = kinds[i % len(kinds)], sizes[(i // len(kinds)) % len(sizes)]
        s = max(1, int(round(size * scale)))
        gray = images[i].mean(axis=2)
        cand = np.argwhere(gray > object_level) if object_level is not None else np.zeros((0, 2))
        for _ in range(20):
            cy, cx = cand[rng.integers(len(cand))] if len(cand) else (rng.integers(h), rng.integers(w))
            m = _region(kind, h, w, int(cy), int(cx), s, rng)
            d = _paint(kind, images[i], m, s, rng)
            if np.abs(d.astype(np.int16) - images[i])[m].mean() >= MIN_CHANGE:
                break
        out[i], masks[i] = d, m
        ks.append(kind)
        ss.append(size)
    return out, masks, ks, ss
