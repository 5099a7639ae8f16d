"""Anomaly scores: per-pixel error maps between an image and its reconstruction (numpy only).

Calibration and screening both call `error_maps` on uint8 images, so a score means the
same thing at both times. Maps are (B, H, W) float64, channels averaged; a score is the
mean of its map. Higher = more anomalous.
"""

from __future__ import annotations

import numpy as np

SCORES = ("mse", "ssim")  # score names accepted by calibrate/screen/evaluate
# SSIM as Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, 8-bit range.
SSIM_SIGMA, SSIM_RADIUS = 1.5, 5
SSIM_C1, SSIM_C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def check_score(name: str) -> str:
    if name not in SCORES:
        raise ValueError(f"unknown score {name!r} (expected one of {', '.join(SCORES)}; "
                         "a perceptual score needs VGG features in ONNX and is not available)")
    return name


def mse_map(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W, C) pair -> squared error on the [0, 1] pixel scale, (B, H, W)."""
    d = (x.astype(np.float64) - x_hat.astype(np.float64)) / 255.0
    return np.mean(d * d, axis=3)


def gaussian_kernel(sigma: float = SSIM_SIGMA, radius: int = SSIM_RADIUS) -> np.ndarray:
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
    """Local SSIM of uint8 (B, H, W, C) pairs, (B, H, W, C) in [-1, 1]; 1 = identical."""
    k = gaussian_kernel()
    a, b = x.astype(np.float64), x_hat.astype(np.float64)
    mu_a, mu_b = _blur(a, k), _blur(b, k)
    var_a = _blur(a * a, k) - mu_a**2
    var_b = _blur(b * b, k) - mu_b**2
    cov = _blur(a * b, k) - mu_a * mu_b
    num = (2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2)
    return num / den


def ssim_map(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """1 - local SSIM, channels averaged: (B, H, W) in [0, 2]; 0 = identical."""
    return np.mean(1.0 - ssim_index_map(x, x_hat), axis=3)


def error_maps(x: np.ndarray, x_hat: np.ndarray, score: str) -> np.ndarray:
    """The per-pixel error map of `score` for uint8 (B, H, W, C) images: (B, H, W)."""
    if x.shape != x_hat.shape:
        raise ValueError(f"image and reconstruction shapes differ: {x.shape} vs {x_hat.shape}")
    return mse_map(x, x_hat) if check_score(score) == "mse" else ssim_map(x, x_hat)


def reduce_maps(maps: np.ndarray) -> np.ndarray:
    """(B, H, W) maps -> (B,) scores: the mean error over the image."""
    return maps.reshape(len(maps), -1).mean(axis=1)
