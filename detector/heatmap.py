"""Anomaly-map pictures: [image | reconstruction | map over image] for flagged images (--heatmaps), and
[image | map over image | colour scale] + the raw float map as .npy for every image (--maps).

The colour scale is fixed per class (the calibration's 99.9th percentile of per-pixel errors
on normal images = full red), so colours compare across images of one class.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
from PIL import Image

from aekit.images import save_image

# blue -> cyan -> green -> yellow -> red, sampled into a 256-entry lookup table
_STOPS = np.array([[0, 0, 128], [0, 160, 255], [0, 200, 80], [255, 220, 0], [220, 0, 0]], dtype=np.float64)
LUT = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_STOPS)), _STOPS[:, c]) for c in range(3)],
               axis=1).round().astype(np.uint8)  # (256, 3)
MIN_PANEL_SIDE = 224  # small images (e.g. 28x28) are enlarged (nearest) to be readable
PNG_LEVEL = 1  # zlib level of the --maps panels: flat colour blocks compress well at the fastest level


def to_rgb(im: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 1|3) -> (H, W, 3)."""
    return np.repeat(im, 3, axis=2) if im.shape[2] == 1 else im


def overlay(image: np.ndarray, error_map: np.ndarray, scale: float) -> np.ndarray:
    """uint8 (H, W, C) and (H, W) errors -> uint8 (H, W, 3): the map coloured, blended by its strength."""
    v = np.clip(error_map / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(error_map)
    heat = LUT[np.rint(v * 255).astype(np.int64)].astype(np.float64)  # (H, W, 3)
    a = (0.25 + 0.6 * v)[:, :, None]  # stronger errors cover more of the image
    base = to_rgb(image).astype(np.float64)
    return np.clip(np.rint(base * (1 - a) + heat * a), 0, 255).astype(np.uint8)


def panel(image: np.ndarray, recon: np.ndarray, error_map: np.ndarray, scale: float) -> np.ndarray:
    """[image | reconstruction | overlay] side by side, enlarged when small: uint8 (H', 3W', 3)."""
    strip = np.concatenate([to_rgb(image), to_rgb(recon), overlay(image, error_map, scale)], axis=1)
    k = max(1, -(-MIN_PANEL_SIDE // min(image.shape[:2])))
    if k > 1:
        strip = np.asarray(Image.fromarray(strip).resize((strip.shape[1] * k, strip.shape[0] * k), Image.NEAREST))
    return strip


def write_heatmap(path: str | Path, image: np.ndarray, recon: np.ndarray, error_map: np.ndarray, scale: float) -> Path:
    return save_image(panel(image, recon, error_map, scale), path)


@functools.lru_cache(maxsize=256)
def colour_bar(height: int, scale: float, width: int = 64) -> np.ndarray:
    """A vertical colour scale (top = `scale`, the class's full red; bottom = 0) with its values: (height, width, 3).

    Drawn once per (height, scale), i.e. once per class and image size (read-only)."""
    from PIL import ImageDraw

    bar = np.full((height, width, 3), 255, np.uint8)
    ramp = LUT[np.linspace(255, 0, height).round().astype(np.int64)]  # (height, 3)
    bar[:, 4:18] = ramp[:, None, :]
    im = Image.fromarray(bar)
    draw = ImageDraw.Draw(im)
    draw.text((21, 0), f"{scale:.3g}", fill=(0, 0, 0))
    draw.text((21, height // 2 - 5), f"{scale / 2:.3g}", fill=(0, 0, 0))
    draw.text((21, height - 11), "0", fill=(0, 0, 0))
    out = np.asarray(im)
    out.flags.writeable = False
    return out


def map_panel(image: np.ndarray, anomaly_map: np.ndarray, scale: float) -> np.ndarray:
    """[image | map over image | colour scale], enlarged when small: uint8 (H', 2W' + 64, 3)."""
    strip = np.concatenate([to_rgb(image), overlay(image, anomaly_map, scale)], axis=1)
    k = max(1, -(-MIN_PANEL_SIDE // min(image.shape[:2])))
    if k > 1:
        strip = np.asarray(Image.fromarray(strip).resize((strip.shape[1] * k, strip.shape[0] * k), Image.NEAREST))
    return np.concatenate([strip, colour_bar(strip.shape[0], float(scale))], axis=1)


def png_bytes(rgb: np.ndarray, level: int = PNG_LEVEL) -> bytes:
    """uint8 (H, W, 3) -> PNG bytes at zlib level `level` (lossless at every level)."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


@functools.lru_cache(maxsize=64)
def _npy_header(shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue()  # magic, version 1.0, padded dict


def npy_bytes(a: np.ndarray) -> bytes:
    """float32 little-endian .npy bytes of a map (what np.save writes; header built once per shape)."""
    a = np.ascontiguousarray(a, dtype="<f4")
    return _npy_header(a.shape) + a.tobytes()


def map_files(image: np.ndarray, anomaly_map: np.ndarray, scale: float) -> dict[str, bytes]:
    """{'.png': the map_panel as PNG bytes, '.npy': the raw float32 (H, W) map as .npy bytes}: what
    write_map writes, as bytes (a Ray actor renders them; the driver writes them)."""
    return {".png": png_bytes(map_panel(image, anomaly_map, scale)), ".npy": npy_bytes(anomaly_map)}


def write_map(stem: str | Path, image: np.ndarray, anomaly_map: np.ndarray, scale: float) -> list[Path]:
    """STEM.png (overlay with colour scale) and STEM.npy (the raw float32 map, (H, W)), written atomically."""
    return write_map_files(stem, map_files(image, anomaly_map, scale))


def write_map_files(stem: str | Path, files: dict[str, bytes]) -> list[Path]:
    """Write map_files() output as STEM.png and STEM.npy (atomically); returns the paths."""
    from aekit.images import atomic_write_bytes

    return [atomic_write_bytes(Path(stem).with_suffix(suffix), data) for suffix, data in sorted(files.items(),
                                                                                                 key=lambda kv: kv[0] != ".png")]
