"""The JPEG and WebP baselines every comparison in aekit uses: codec evaluate and the bench.

    data = encode(image, "JPEG", 50); back = decode(data, image.shape[2])   # uint8 (H, W, C)
One setting per format, Pillow only: JPEG baseline with optimised Huffman tables (Pillow's 4:2:0
chroma for RGB), WebP lossy at method 6 (slowest, smallest files), AVIF (libavif, 4:2:0, speed 4)
where Pillow has it. Sizes are whole files, and are
compared with whole .ael files (header included), never with a bare payload.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

FORMATS = ("JPEG", "WEBP", "AVIF")


def available() -> tuple[str, ...]:
    """The baseline formats this Pillow can write (AVIF needs Pillow >= 11.3 built with libavif)."""
    from PIL import features

    return tuple(f for f in FORMATS if f != "AVIF" or features.check("avif"))


def options(fmt: str, quality: int) -> dict[str, int | bool]:
    """Pillow save options of the baseline format at quality 1..100."""
    if fmt == "JPEG":
        return {"quality": int(quality), "optimize": True}
    if fmt == "WEBP":
        return {"quality": int(quality), "method": 6}
    if fmt == "AVIF":  # libavif via Pillow: 4:2:0, speed 4 (slower, smaller than the default 6)
        return {"quality": int(quality), "speed": 4, "subsampling": "4:2:0"}
    raise ValueError(f"baseline format {fmt!r}: expected one of {FORMATS}")


def encode(img: np.ndarray, fmt: str, quality: int) -> bytes:
    """uint8 (H, W, 1|3) -> the whole file's bytes."""
    buf = io.BytesIO()
    Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(buf, format=fmt, **options(fmt, quality))
    return buf.getvalue()


def decode(data: bytes, channels: int) -> np.ndarray:
    """File bytes -> uint8 (H, W, channels)."""
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    return arr[:, :, None] if arr.ndim == 2 else arr


def roundtrip(img: np.ndarray, fmt: str, quality: int) -> tuple[int, np.ndarray]:
    """uint8 (H, W, C) -> (file bytes, decoded (H, W, C))."""
    data = encode(img, fmt, quality)
    return len(data), decode(data, img.shape[2])
