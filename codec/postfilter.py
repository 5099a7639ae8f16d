"""The post-filter of format version 8: a per-image linear correction of the decoded pixels (numpy only).

The encoder decodes its own symbols, fits a small point-symmetric diamond filter with cross-colour and bias taps to
the original by least squares (a Wiener filter, as the adaptive loop filter of H.266/VVC: Karczewicz et al., "VVC
in-loop filters", IEEE TCSVT 2021), and stores its integer taps in the file when the PSNR it buys is worth its bytes.
The decoder applies them in integers, so given the same decoded pixels every machine gets the same output.
Byte layout and the exact rule: codec/FORMAT.md, "Post-filter".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

MAX_RADIUS = 3  # diamond |dy| + |dx| <= R
FRAC_BITS = 10  # taps in units of 2^-F
F_RANGE = (1, 15)  # F the reader accepts
SLOPE_DB_PER_DOUBLING = 3.0  # PSNR the shipped photo models gain per doubling of bytes (their RD curves): a filter of
# s bytes on a B-byte file is kept when it gains more than 3·log2(1 + s/B) dB
FIT_BAND_PIXELS = 1 << 16  # pixels per band of the normal equations (bounds the feature matrix to 2^16 × 16 float64, 8 MB)
FIT_MAX_PIXELS = 1 << 22  # the encoder fits a filter to all pixels up to this size; larger images' pixels go before
# coding, so it keeps windows of about FIT_WINDOW_PX² pixels, FIT_MAX_PIXELS in all, and fits to those (codec/core.py);
# 256² keeps each window's decoder call small (its arena adds to what the coder holds: peak RSS, issue 17)
FIT_WINDOW_PX = 256


def pairs(radius: int) -> list[tuple[int, int]]:
    """The diamond's point-symmetric pairs (dy, dx) ~ (−dy, −dx), |dy| + |dx| <= radius, one of each pair (dy > 0,
    or dy = 0 and dx > 0), ordered by |dy| + |dx|, then dy, then dx: a smaller radius's pairs are a prefix."""
    out = [(dy, dx) for dy in range(0, radius + 1) for dx in range(-radius, radius + 1)
           if 0 < abs(dy) + abs(dx) <= radius and (dy > 0 or dx > 0)]
    return sorted(out, key=lambda p: (abs(p[0]) + abs(p[1]), p[0], p[1]))


def n_taps(radius: int, channels: int) -> int:
    """Taps per output channel: centre, one per pair, one per other channel, bias."""
    return 1 + len(pairs(radius)) + (channels - 1) + 1


@dataclass(frozen=True)
class PostFilter:
    """Integer taps w (int16 (C, n_taps)) in units of 2^-frac for a diamond of `radius` over C = 1 or 3 channels."""

    radius: int
    frac: int
    taps: np.ndarray  # int16 (C, n)

    @property
    def channels(self) -> int:
        return int(self.taps.shape[0])

    def to_bytes(self) -> bytes:
        """The file's block: u8 C, u8 R, u8 F, then C·n int16 little-endian taps, channel by channel."""
        return bytes([self.channels, self.radius, self.frac]) + self.taps.astype("<i2").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> tuple["PostFilter", int]:
        """(filter, bytes used) from the start of data; ValueError naming the problem when malformed."""
        if len(data) < 3:
            raise ValueError("post-filter block cut off (fewer than 3 bytes)")
        c, r, f = data[0], data[1], data[2]
        if c not in (1, 3) or not 0 <= r <= MAX_RADIUS or not F_RANGE[0] <= f <= F_RANGE[1]:
            raise ValueError(f"post-filter with {c} channels, radius {r} or {f} fraction bits "
                             f"(1 or 3 channels, radius 0..{MAX_RADIUS}, {F_RANGE[0]}..{F_RANGE[1]} bits)")
        n = c * n_taps(r, c)
        if len(data) < 3 + 2 * n:
            raise ValueError(f"post-filter block cut off ({len(data) - 3} of {2 * n} tap bytes)")
        taps = np.frombuffer(data[3:3 + 2 * n], dtype="<i2").astype(np.int16).reshape(c, -1)
        return cls(r, f, taps), 3 + 2 * n


def _features(x: np.ndarray, top: int, rows: int, c: int, radius: int) -> np.ndarray:
    """float64 features (n, rows·W) of channel c for image rows top .. top + rows of x (uint8 (H, W, C)), one row
    per tap, neighbours outside x replaced by the nearest edge pixel: x_c − 128, x_c(p + d) + x_c(p − d) −
    2·x_c(p) per pair, x_k − x_c per other channel k, 1 (FORMAT.md's features; integers, exact in float64)."""
    h, w, ch = x.shape
    r = radius
    lo, hi = max(0, top - r), min(h, top + rows + r)
    band = np.pad(x[lo:hi, :, c].astype(np.float64), ((r - (top - lo), r - (hi - top - rows)), (r, r)), mode="edge")
    centre = band[r:r + rows, r:r + w]
    out = np.empty((n_taps(radius, ch), rows, w))
    np.subtract(centre, 128, out=out[0])
    for i, (dy, dx) in enumerate(pairs(radius), 1):
        np.add(band[r + dy:r + dy + rows, r + dx:r + dx + w], band[r - dy:r - dy + rows, r - dx:r - dx + w], out=out[i])
        out[i] -= 2 * centre
    i = 1 + len(pairs(radius))
    for k in range(ch):
        if k != c:
            np.subtract(x[top:top + rows, :, k], centre, out=out[i])
            i += 1
    out[i] = 1
    return out.reshape(len(out), -1)


def _band_rows(h: int, w: int) -> int:
    return max(1, min(h, FIT_BAND_PIXELS // max(1, w)))


def apply(x_hat: np.ndarray, flt: PostFilter) -> np.ndarray:
    """uint8 (H, W, C) decoded pixels -> uint8 (H, W, C) filtered: per channel c,
    out = clip(x̂_c + ((Σ w_i·f_i + 2^(F−1)) >> F), 0, 255) with the integer features of `_features` (edge pixels
    repeated outside the image). ValueError when the filter's channels are not the image's."""
    h, w, ch = x_hat.shape
    if flt.channels != ch:
        raise ValueError(f"post-filter for {flt.channels} channels on a {ch}-channel image")
    out = np.empty_like(x_hat)
    step = _band_rows(h, w)
    for top in range(0, h, step):
        rows = min(step, h - top)
        _apply_band(x_hat, top, rows, flt, out[top:top + rows])
    return out


def _apply_band(x: np.ndarray, top: int, rows: int, flt: PostFilter, dst: np.ndarray) -> None:
    """Rows top .. top + rows of x filtered into dst; rows of x outside them are real neighbours, rows beyond x's
    ends are the edge (replicated). Summed tap by tap in int32: every term is below 2^15 · 510 and at most 16 of
    them, so no sum overflows and the result is exact."""
    h, w, ch = x.shape
    r = flt.radius
    lo, hi = max(0, top - r), min(h, top + rows + r)
    pad = ((r - (top - lo), r - (hi - top - rows)), (r, r))
    for c in range(ch):
        band = np.pad(x[lo:hi, :, c].astype(np.int32), pad, mode="edge")
        centre = band[r:r + rows, r:r + w]
        taps = [int(v) for v in flt.taps[c]]
        acc = np.full((rows, w), taps[-1] + (1 << (flt.frac - 1)), np.int32)  # bias and the rounding offset
        acc += taps[0] * (centre - 128)
        for t, (dy, dx) in zip(taps[1:], pairs(r)):
            if t:
                acc += t * (band[r + dy:r + dy + rows, r + dx:r + dx + w] + band[r - dy:r - dy + rows, r - dx:r - dx + w]
                            - 2 * centre)
        others = [k for k in range(ch) if k != c]
        for t, k in zip(taps[1 + len(pairs(r)):-1], others):
            if t:
                acc += t * (x[top:top + rows, :, k].astype(np.int32) - centre)
        dst[..., c] = np.clip(centre + (acc >> flt.frac), 0, 255)


def apply_rows(bands: Iterator[np.ndarray], flt: PostFilter) -> Iterator[np.ndarray]:
    """Row bands (rows, W, C) of a decoded image, top to bottom -> the same rows filtered, exactly as `apply` on
    the whole image gives them: rows are held back until the `radius` rows below them have arrived."""
    r = flt.radius
    held, start = None, 0  # unfiltered rows; its first `start` rows are context above (already given out)
    for band in bands:
        held = band if held is None else np.concatenate([held, band])
        ready = held.shape[0] - r  # rows of held with r real rows below them
        if ready > start:
            out = np.empty((ready - start,) + held.shape[1:], np.uint8)
            _apply_band(held, start, ready - start, flt, out)
            yield out
            keep = max(0, ready - r)  # keep r rows of context above the next rows (or all, from the image top)
            held, start = held[keep:], ready - keep
    if held is not None and held.shape[0] > start:  # the last rows: the image's bottom edge below them
        out = np.empty((held.shape[0] - start,) + held.shape[1:], np.uint8)
        _apply_band(held, start, held.shape[0] - start, flt, out)
        yield out


def choose(x: np.ndarray, x_hat: np.ndarray, file_bytes: int) -> tuple[PostFilter | None, float]:
    """Original and decoded uint8 (H, W, C), the file's bytes without a filter -> (the filter to store, or None;
    its PSNR gain in dB). Least squares (a Wiener filter) for every radius 0..MAX_RADIUS from one set of normal
    equations accumulated in bands (bounded memory); the radius with the best gain after the price of its bytes
    (`worth`'s slope) is rounded to 2^-F (F = FRAC_BITS, fewer where a tap would not fit an int16: `frac_bits`), applied
    with the integer rule and kept if it still pays."""
    return choose_windows([Window(x, x_hat)], file_bytes)


@dataclass(frozen=True)
class Window:
    """A part of an image to fit the filter on: original x and decoded x_hat, uint8 (h, w, C) each, of which only
    the inner box — `margin` = (top, bottom, left, right) pixels in from each side — is fitted and measured; the
    margin gives the inner pixels their real neighbours (the whole image: no margin, its edges replicated)."""

    x: np.ndarray
    x_hat: np.ndarray
    margin: tuple[int, int, int, int] = (0, 0, 0, 0)

    def inner(self, a: np.ndarray) -> np.ndarray:
        t, b, l, r = self.margin
        return a[t:a.shape[0] - b, l:a.shape[1] - r]


def choose_windows(windows: list[Window], file_bytes: int) -> tuple[PostFilter | None, float]:
    """`choose` on the inner boxes of several windows of one image together (the encoder's sample of an image too
    large to keep whole, Codec.fit_input): one set of normal equations over all of them, the gain measured on them
    with the integer rule and held against the whole file's bytes. (None, 0.0) without windows."""
    if not windows:
        return None, 0.0
    ch = windows[0].x.shape[2]
    n = n_taps(MAX_RADIUS, ch)
    n_pairs = len(pairs(MAX_RADIUS))
    gs, bs, e0 = np.zeros((ch, n, n)), np.zeros((ch, n)), 0.0
    for win in windows:
        x, x_hat = win.x, win.x_hat
        h, w = x.shape[:2]
        t0, b0, l0, r0 = win.margin
        step = _band_rows(h, w)
        for c in range(ch):
            for top in range(t0, h - b0, step):
                rows = min(step, h - b0 - top)
                a = _features(x_hat, top, rows, c, MAX_RADIUS).reshape(n, rows, w)[:, :, l0:w - r0].reshape(n, -1)
                t = (x[top:top + rows, l0:w - r0, c].astype(np.float64) - x_hat[top:top + rows, l0:w - r0, c]).reshape(-1)
                gs[c] += a @ a.T
                bs[c] += a @ t
                e0 += float(t @ t)
    if e0 == 0:
        return None, 0.0
    best, best_j = None, 0.0
    for r in range(MAX_RADIUS + 1):
        idx = np.r_[0, 1:1 + len(pairs(r)), 1 + n_pairs:n]
        taps, reduction = np.zeros((ch, len(idx))), 0.0
        for c in range(ch):
            g, b = gs[c][np.ix_(idx, idx)], bs[c][idx]
            taps[c] = np.linalg.solve(g + 1e-9 * np.trace(g) / len(idx) * np.eye(len(idx)), b)
            reduction += float(taps[c] @ b)  # SSE − SSE after = 2bᵀw − wᵀGw = bᵀw at the solution
        gain = 10 * np.log10(e0 / max(e0 - reduction, 1e-12))
        size = 3 + 2 * taps.size
        j = gain - SLOPE_DB_PER_DOUBLING * float(np.log2(1 + size / max(1, file_bytes)))
        if j > best_j:
            best, best_j = quantise(r, taps), j
    if best is None:
        return None, 0.0
    gain = gain_db(sum(_sse(win.inner(win.x), win.inner(win.x_hat)) for win in windows),
                   sum(_sse(win.inner(win.x), win.inner(apply(win.x_hat, best))) for win in windows))
    return (best, gain) if worth(gain, len(best.to_bytes()), file_bytes) else (None, 0.0)


def frac_bits(taps: np.ndarray) -> int:
    """The fraction bits F for float taps: FRAC_BITS, or fewer where a tap would not fit an int16 at FRAC_BITS (a
    large bias or colour correction at coarse steps: Fashion-MNIST or photos at 0.01 bpp), down to F_RANGE[0]."""
    peak = float(np.max(np.abs(taps))) if taps.size else 0.0
    f = FRAC_BITS
    while f > F_RANGE[0] and np.rint(peak * (1 << f)) > 32767:
        f -= 1
    return f


def quantise(radius: int, taps: np.ndarray) -> PostFilter:
    """Float taps (C, n) -> the filter with integer taps at frac_bits(taps) fraction bits (clipped to int16 only
    where even F_RANGE[0] bits cannot hold them)."""
    f = frac_bits(taps)
    return PostFilter(radius, f, np.clip(np.rint(taps * (1 << f)), -32768, 32767).astype(np.int16))


def _sse(x: np.ndarray, y: np.ndarray) -> int:
    """Sum of squared differences of two uint8 arrays (H, W, C), exact, in row bands of FIT_BAND_PIXELS (a
    whole-image float64 copy of a 4-Mpx photo would hold 100 MB per operand while serve codes two at once)."""
    h, w = x.shape[:2]
    step = _band_rows(h, w)
    total = 0
    for top in range(0, h, step):
        d = (x[top:top + step].astype(np.int64) - y[top:top + step]).ravel()
        total += int(d @ d)
    return total


def gain_db(e_before: int, e_after: int) -> float:
    """PSNR gain in dB of a filter that takes the sum of squared errors from e_before to e_after (+inf when it
    leaves none of them, 0.0 when there were none)."""
    if e_after == 0:
        return float("inf") if e_before > 0 else 0.0
    return float(10 * np.log10(max(e_before, 1e-12) / e_after))


def worth(gain_db: float, filter_bytes: int, file_bytes: int) -> bool:
    """Keep a filter of filter_bytes on a file of file_bytes when it gains more than SLOPE_DB_PER_DOUBLING dB per
    doubling of the bytes it adds."""
    return gain_db > SLOPE_DB_PER_DOUBLING * float(np.log2(1 + filter_bytes / max(1, file_bytes)))
