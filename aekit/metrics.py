"""Image quality metrics in numpy (no torch), the one definition every package reports.

PSNR: per image on uint8 pixels (peak 255), averaged over images ("per-image mean"); identical
images count as PSNR_CAP (100 dB) so means stay finite. The codec, its evaluation, the bench,
the server and training's validation log all report this number (training rounds its decoded
float images to uint8 first, as the codec does; see `psnr_torch`).

MS-SSIM follows Wang et al. 2003 as implemented by pytorch-msssim (Gaussian window 11,
sigma 1.5, K = (0.01, 0.03), 'valid' filtering, 2x2 average pooling with zero padding of
odd sizes, the standard five weights); tests/test_metrics.py checks it against pytorch-msssim.
Images too small for five scales (the window must fit the coarsest scale, e.g. 28x28
Fashion-MNIST) use as many scales as fit, with the leading weights renormalised;
`msssim_scales` says how many (one scale is plain SSIM).
"""

from __future__ import annotations

import numpy as np

WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
WIN, SIGMA, K1, K2 = 11, 1.5, 0.01, 0.03


PSNR_CAP = 100.0  # dB reported for identical images


def psnr_batch(a: np.ndarray, b: np.ndarray, cap: float = PSNR_CAP) -> np.ndarray:
    """uint8 (N, H, W, C) pairs -> PSNR dB (N,), one per image, capped for identical images."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mse = (d * d).reshape(len(d), -1).mean(1)
    with np.errstate(divide="ignore"):
        return np.minimum(10 * np.log10(255.0**2 / mse), cap)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR dB of one uint8 image pair of equal shape (PSNR_CAP when identical)."""
    return float(psnr_batch(np.asarray(a)[None], np.asarray(b)[None])[0])


def mean_psnr(pairs) -> float:
    """The per-image mean PSNR over (original, reconstruction) uint8 pairs: what aekit reports."""
    return float(np.mean([psnr(a, b) for a, b in pairs]))


def psnr_torch(x_hat, x):
    """Per-image PSNR (B,) of model outputs in [-1, 1] against inputs in [-1, 1], both tensors.

    Both sides are rounded to uint8 exactly as `aekit.images.from_model_output` does, so the
    figure training logs is the one the codec reports. Tensor methods only: no torch import here.
    """
    def u8(t):
        return ((t.detach().float() + 1) * 127.5).round().clamp(0, 255)

    mse = ((u8(x_hat).double() - u8(x).double()) ** 2).flatten(1).mean(1)
    return (10 * (255.0**2 / mse).log10()).clamp(max=PSNR_CAP)


def msssim_scales(height: int, width: int) -> int:
    """Scales that fit: the window must fit inside the coarsest scale (5 for >= 176 px)."""
    side, k = min(height, width), 0
    while k < 5 and side >= WIN:
        k, side = k + 1, (side + side % 2) // 2
    return k


def _window() -> np.ndarray:
    x = np.arange(WIN) - WIN // 2
    g = np.exp(-(x**2) / (2 * SIGMA**2))
    return g / g.sum()


def _filter(x: np.ndarray) -> np.ndarray:
    """Separable 'valid' Gaussian filter over the last two axes of (N, C, H, W)."""
    g, r = _window(), WIN // 2
    try:
        from scipy.ndimage import correlate1d  # C loops; the crop below makes it 'valid'
    except ImportError:  # numpy only: shifted sums (slower)
        h, w = x.shape[-2] - WIN + 1, x.shape[-1] - WIN + 1
        x = sum(g[k] * x[..., k:k + h, :] for k in range(WIN))
        return sum(g[k] * x[..., k:k + w] for k in range(WIN))
    x = correlate1d(x, g, axis=-2, mode="constant")[..., r:-r, :]
    return correlate1d(x, g, axis=-1, mode="constant")[..., r:-r]


def _ssim_maps(x: np.ndarray, y: np.ndarray, filt=None) -> tuple[np.ndarray, np.ndarray]:
    """Local (ssim, cs) maps of float64 arrays on the 8-bit scale, filtered over the last two axes
    by filt (default: the 'valid' Gaussian window). The one SSIM formula (Wang et al. 2004)."""
    filt = filt or _filter
    c1, c2 = (K1 * 255) ** 2, (K2 * 255) ** 2
    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx * mx, filt(y * y) - my * my, filt(x * y) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    return ((2 * mx * my + c1) / (mx * mx + my * my + c1)) * cs, cs


def _ssim(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W) float64 -> (ssim, cs), each (N, C), averaged over the valid window."""
    ssim, cs = _ssim_maps(x, y)
    return ssim.mean((-2, -1)), cs.mean((-2, -1))


def _filter_same(x: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter over the last two axes, same size, edges mirrored ('d c b a | a b c d',
    scipy.ndimage's 'reflect', as scikit-image's SSIM filters)."""
    g, r = _window(), WIN // 2
    try:
        from scipy.ndimage import correlate1d
    except ImportError:  # numpy only: shifted sums over a mirrored pad
        pad = [(0, 0)] * (x.ndim - 2) + [(r, r), (r, r)]
        p = np.pad(x, pad, mode="symmetric")
        h, w = x.shape[-2:]
        p = sum(g[k] * p[..., k:k + h, :] for k in range(WIN))
        return sum(g[k] * p[..., k:k + w] for k in range(WIN))
    return correlate1d(correlate1d(x, g, axis=-2, mode="reflect"), g, axis=-1, mode="reflect")


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Local SSIM of uint8 (N, H, W, C) pairs: float64 (N, H, W, C) in [-1, 1], 1 = identical.

    The same window and constants as msssim_batch, filtered at full size with mirrored edges,
    so it equals scikit-image's `structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=255, full=True)` map channel by channel (tested).
    The detector's SSIM anomaly maps are 1 - this."""
    x = np.asarray(a, dtype=np.float64).transpose(0, 3, 1, 2)  # (N, C, H, W)
    y = np.asarray(b, dtype=np.float64).transpose(0, 3, 1, 2)
    return _ssim_maps(x, y, _filter_same)[0].transpose(0, 2, 3, 1)


def _pool(x: np.ndarray) -> np.ndarray:
    """2x2 average pooling, odd sizes zero-padded on both sides (torch avg_pool2d, padding=s%2)."""
    ph, pw = x.shape[-2] % 2, x.shape[-1] % 2
    x = np.pad(x, [(0, 0), (0, 0), (ph, ph), (pw, pw)])
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :h, :w]
    return 0.25 * (x[..., 0::2, 0::2] + x[..., 1::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 1::2])


def msssim_batch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) pairs -> MS-SSIM (N,), mean over channels; NaN if under 11 px."""
    k = msssim_scales(a.shape[1], a.shape[2])
    if k == 0:
        return np.full(len(a), np.nan)
    w = WEIGHTS[:k] / WEIGHTS[:k].sum()
    x = a.astype(np.float64).transpose(0, 3, 1, 2)
    y = b.astype(np.float64).transpose(0, 3, 1, 2)
    terms = []
    for i in range(k):
        ssim, cs = _ssim(x, y)
        terms.append(np.maximum(ssim if i == k - 1 else cs, 0.0))
        if i < k - 1:
            x, y = _pool(x), _pool(y)
    val = np.prod([t ** wi for t, wi in zip(terms, w)], axis=0)  # (N, C)
    return val.mean(1)


# -- codec fidelity beyond PSNR: colour and borders (issue: washed-out chroma, edge stripes) --

def chroma_ratio(a: np.ndarray, b: np.ndarray) -> float | None:
    """Mean chroma magnitude of b over that of a, uint8 (H, W, 3) each; None for gray images.

    Chroma = |(Cb, Cr)| of ITU-R BT.601 YCbCr (the JPEG convention), so 1.0 keeps saturation,
    below 1 washes colour out. None when a has no colour (mean chroma under 1 grey level).
    """
    if a.shape[-1] != 3:
        return None

    def chroma(x: np.ndarray) -> float:
        r, g, bl = (x[..., i].astype(np.float64) for i in range(3))
        cb = -0.168736 * r - 0.331264 * g + 0.5 * bl
        cr = 0.5 * r - 0.418688 * g - 0.081312 * bl
        return float(np.sqrt(cb * cb + cr * cr).mean())

    ca = chroma(a)
    return chroma(b) / ca if ca >= 1.0 else None


def border_interior_psnr(a: np.ndarray, b: np.ndarray, band: int) -> tuple[float, float]:
    """PSNR (dB) of the outer band of `band` pixels on all four sides, and of the rest.

    uint8 (H, W, C) pairs. A codec that pads (edge replication to a multiple of its factor f)
    or whose receptive field sees zero padding shows its artefacts in the band; band = f.
    """
    h, w = a.shape[:2]
    band = max(1, min(band, (min(h, w) - 1) // 2))
    inner = np.zeros((h, w), dtype=bool)
    inner[band:h - band, band:w - band] = True
    d = (a.astype(np.float64) - b.astype(np.float64)) ** 2  # (H, W, C)

    def p(mask: np.ndarray) -> float:
        mse = float(d[mask].mean()) if mask.any() else 0.0
        return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * np.log10(255.0**2 / mse))

    return p(~inner), p(inner)


def bd_metrics(anchor: list[tuple[float, float]], test: list[tuple[float, float]]) -> dict[str, float | str | None]:
    """Bjøntegaard deltas of a test RD curve against an anchor, via the `bjontegaard` package.

    anchor, test: (bpp, PSNR dB) points, at least 4 each. Returns {"bd_rate": % bits saved
    (< 0: test needs fewer bits at equal PSNR), "bd_psnr": dB gained at equal rate}, each over
    the overlapping range (Akima interpolation, VCEG-M33's method as modernised by the package);
    None with a "why" when the curves do not overlap enough or have too few points.
    """
    import bjontegaard as bd

    out: dict[str, float | str | None] = {"bd_rate": None, "bd_psnr": None, "why": None}
    a, t = sorted(set(anchor)), sorted(set(test))
    if len(a) < 4 or len(t) < 4:
        out["why"] = f"need 4 points per curve (anchor {len(a)}, test {len(t)})"
        return out
    ra, da = zip(*a)
    rt, dt = zip(*t)
    for key, fn in (("bd_rate", bd.bd_rate), ("bd_psnr", bd.bd_psnr)):
        try:
            v = float(fn(list(ra), list(da), list(rt), list(dt), method="akima",
                         require_matching_points=False, min_overlap=0.0))
        except (ValueError, AssertionError, ZeroDivisionError) as e:
            out["why"] = f"{key}: {e}"
            continue
        if np.isfinite(v):
            out[key] = v
        else:  # the package returns nan when the curves share no PSNR (rate) range
            out["why"] = f"{key}: the curves do not overlap"
    return out
