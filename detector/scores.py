"""Anomaly scores: per-pixel anomaly maps between an image and its reconstruction, and image scores (numpy only).

A score spec names a map and a reduction, components joined by '+': `mse` (mean squared error,
the mean of the raw map), `ssim-max` (max of the smoothed 1 - SSIM map), `msssim-top1` (mean of
the top 1 % of the smoothed multi-scale SSIM map), `feat` (encoder-feature patch memory bank) and
`knn` (whole-latent nearest normal images; both aekit.detector.features), `padim` / `patchcore` (pretrained-backbone features, aekit.detector.backbone),
`mse-max+feat` (normalised sum, calibrated as one score). Calibration
and screening compute maps with the same functions, so a score means the same at both times.
Maps are (B, H, W) float64, channels averaged. Higher = more anomalous.
"""

from __future__ import annotations

import numpy as np

from aekit import metrics

MAPS = ("mse", "ssim", "msssim")  # per-pixel maps: squared error, 1 - SSIM, 1 - SSIM averaged over 3 scales
REDUCERS = ("mean", "max", "top")  # image score: mean of the raw map, max / top-k % mean of the smoothed map
FEATURE = "feat"  # the encoder-feature patch score
KNN = "knn"  # the whole-latent nearest-neighbour score (wrong product, other class)
BACKBONE_PARTS = ("padim", "patchcore")  # pretrained-backbone feature scores (aekit.detector.backbone)
SCORES = ("mse", "ssim", "mse-max", "ssim-max", "msssim-max", "mse-top1", "ssim-top1", "feat", "knn",
          "mse+knn")  # examples offered in help; any valid spec is accepted
SMOOTH_SIGMA = 1.0  # Gaussian smoothing (px) of maps reduced by max / top-k: one noisy pixel is not a defect
# SSIM is aekit.metrics' (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, 8-bit range).


def components(spec: str) -> list[tuple[str, str]]:
    """'ssim-max+feat' -> [('ssim', 'max'), ('feat', '')]; 'mse' -> [('mse', 'mean')]; ValueError if invalid."""
    out = []
    for part in spec.split("+"):
        name, _, red = part.strip().partition("-")
        if (name in (FEATURE, KNN) or name in BACKBONE_PARTS) and not red:
            out.append((name, ""))
            continue
        red = red or "mean"
        top_ok = red.startswith("top") and _top_fraction(red) is not None
        if name not in MAPS or not (red in ("mean", "max") or top_ok):
            raise ValueError(f"unknown score {spec!r}: each '+'-joined part is feat, knn, padim, patchcore or MAP[-REDUCER] with MAP one of "
                             f"{', '.join(MAPS)} and REDUCER mean, max or topP (mean of the top P % of pixels), "
                             f"e.g. {', '.join(SCORES[:6])}")
        out.append((name, red))
    if len(set(out)) != len(out):
        raise ValueError(f"score {spec!r} repeats a part")
    return out


def _top_fraction(red: str) -> float | None:
    try:
        p = float(red[3:])
    except ValueError:
        return None
    return p / 100.0 if 0 < p <= 100 else None


def check_score(name: str) -> str:
    components(name)
    return name


def mse_map(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W, C) pair -> squared error on the [0, 1] pixel scale, (B, H, W)."""
    d = (x.astype(np.float64) - x_hat.astype(np.float64)) / 255.0
    return np.mean(d * d, axis=3)


def gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    """Normalised 1-D Gaussian taps (2 radius + 1,) float64."""
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _blur(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter over axes 1, 2 of (B, H, W, C), edge-mirrored as scipy.ndimage (same size)."""
    r = len(k) // 2
    p = np.pad(a, ((0, 0), (r, r), (r, r), (0, 0)), mode="symmetric")
    h, w = a.shape[1:3]
    rows = sum(k[i] * p[:, i : i + h] for i in range(len(k)))  # (B, H, W + 2r, C)
    return sum(k[i] * rows[:, :, i : i + w] for i in range(len(k)))  # (B, H, W, C)


def ssim_index_map(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """Local SSIM of uint8 (B, H, W, C) pairs, (B, H, W, C) in [-1, 1]; 1 = identical (aekit.metrics.ssim_map)."""
    return metrics.ssim_map(x, x_hat)


def ssim_map(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """1 - local SSIM, channels averaged: (B, H, W) in [0, 2]; 0 = identical."""
    return np.mean(1.0 - ssim_index_map(x, x_hat), axis=3)


def msssim_map(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """1 - SSIM averaged over scales 1, 1/2, 1/4 (2x2 mean-pooled, upsampled back): (B, H, W)."""
    h, w = x.shape[1:3]
    a, b, maps = x.astype(np.float64), x_hat.astype(np.float64), []
    for s in (1, 2, 4):
        if min(h, w) // s < 7:
            break
        m = np.mean(1.0 - ssim_index_map(a, b), axis=3)  # SSIM maths on float pairs of the same 8-bit scale
        maps.append(upsample(m, h, w))
        a, b = _pool2(a), _pool2(b)
    return np.mean(maps, axis=0)


def _pool2(a: np.ndarray) -> np.ndarray:
    """2x2 mean pooling of (B, H, W, C) (odd edges dropped)."""
    h, w = a.shape[1] // 2 * 2, a.shape[2] // 2 * 2
    a = a[:, :h, :w]
    return 0.25 * (a[:, 0::2, 0::2] + a[:, 1::2, 0::2] + a[:, 0::2, 1::2] + a[:, 1::2, 1::2])


def upsample(m: np.ndarray, h: int, w: int) -> np.ndarray:
    """(B, h', w') -> (B, h, w) by nearest neighbour (each cell covers H/h' x W/w' pixels)."""
    rows = np.minimum((np.arange(h) * m.shape[1]) // h, m.shape[1] - 1)
    cols = np.minimum((np.arange(w) * m.shape[2]) // w, m.shape[2] - 1)
    return m[:, rows][:, :, cols]


def error_maps(x: np.ndarray, x_hat: np.ndarray, score: str) -> np.ndarray:
    """The per-pixel map of a map kind (or of a score spec's first map) for uint8 (B, H, W, C): (B, H, W)."""
    if x.shape != x_hat.shape:
        raise ValueError(f"image and reconstruction shapes differ: {x.shape} vs {x_hat.shape}")
    kind = score if score in MAPS else next((m for m, _ in components(score) if m in MAPS), "mse")
    return {"mse": mse_map, "ssim": ssim_map, "msssim": msssim_map}[kind](x, x_hat)


def smooth(maps: np.ndarray, sigma: float = SMOOTH_SIGMA) -> np.ndarray:
    """Gaussian-smoothed (B, H, W) maps (radius 3 sigma, mirrored edges); sigma 0: unchanged."""
    if sigma <= 0:
        return maps
    k = gaussian_kernel(sigma, max(1, int(round(3 * sigma))))
    return _blur(maps[..., None], k)[..., 0]


def reduce_maps(maps: np.ndarray, reducer: str = "mean") -> np.ndarray:
    """(B, H, W) maps -> (B,) scores: mean, max, or topP (mean of the P % highest pixels)."""
    flat = maps.reshape(len(maps), -1)
    if reducer == "mean":
        return flat.mean(axis=1)
    if reducer == "max":
        return flat.max(axis=1)
    k = max(1, int(round(flat.shape[1] * _top_fraction(reducer))))
    return np.mean(np.partition(flat, flat.shape[1] - k, axis=1)[:, -k:], axis=1)


def image_scores(maps: np.ndarray, reducer: str, sigma: float = SMOOTH_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """(scores (B,), the map the score reads (B, H, W)): the raw map for mean, the smoothed one otherwise."""
    m = maps if reducer == "mean" else smooth(maps, sigma)
    return reduce_maps(m, reducer), m
