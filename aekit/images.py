"""Image files in, arrays out: folder scanning, decoding and the pixel conventions.

Torch-free, so the ONNX runtime (codec, detector) shares exactly the decoding,
padding and normalisation used at training time.
"""

from __future__ import annotations

import io
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# A decoded image above this many pixels is refused before its pixels are read
# (decompression bombs); large real images are handled by tiling downstream.
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own hard limit (2 x MAX_IMAGE_PIXELS)


class ImageError(Exception):
    """A file that cannot be used as an image; the message names the file and the reason."""


@dataclass(frozen=True)
class Sample:
    path: Path  # absolute path of the image file
    label: str  # class name ("" for a flat folder)
    rel: Path  # path relative to the scanned root (mirrors outputs)


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def scan_folder(root: str | Path) -> tuple[list[Sample], list[str], list[Path]]:
    """Image files under root, their class names and the non-image files skipped.

    ImageFolder convention: if root holds subfolders with images, each first-level
    subfolder is a class (images deeper down belong to that class) and images lying
    directly in root are an error; otherwise root is one flat, unlabelled folder.
    Returns (samples sorted by path, class names sorted, skipped non-image files).
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder")
    if root.is_file():
        if not is_image_name(root):
            raise ImageError(f"{root}: not an image file (expected one of {', '.join(IMAGE_EXTENSIONS)})")
        return [Sample(root.resolve(), "", Path(root.name))], [], []
    files, skipped = _walk(root)
    if not files:
        raise ImageError(f"{root}: no image files found ({len(skipped)} other files)")
    top_level = [p for p in files if p.parent == root]
    nested = [p for p in files if p.parent != root]
    if nested and top_level:
        raise ImageError(
            f"{root}: mixes images at the top level ({top_level[0].name}, ...) with class "
            f"subfolders; put every image in a class subfolder or use a flat folder"
        )
    samples = []
    for p in files:
        rel = p.relative_to(root)
        label = rel.parts[0] if nested else ""
        samples.append(Sample(p.resolve(), label, rel))
    classes = sorted({s.label for s in samples if s.label})
    return samples, classes, skipped


def _walk(root: Path) -> tuple[list[Path], list[Path]]:
    files, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            (files if is_image_name(p) else skipped).append(p)
    return files, skipped


class NamedBytes(io.BytesIO):
    """File contents already in memory (e.g. read from object storage) that print as their source.

    load_image() accepts one in place of a path, so error messages still name the file.
    """

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:  # Pillow's messages repr the file object: word them as for a path
        return repr(self.name)


def load_image(
    path: str | Path | NamedBytes,
    channels: int,
    *,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, str]:
    """Decode an image file to a uint8 array (H, W, channels) and a note on conversion.

    EXIF orientation is applied. Modes are converted deliberately: palette and
    alpha images are composited on white, 16/32-bit integer images are scaled to
    8 bits, CMYK/YCbCr/LAB go to RGB. With strict=True a colour image is refused by a
    gray model and vice versa (a codec must not silently drop colour); otherwise it is
    converted and the note says so. Raises ImageError naming the file.
    """
    if isinstance(path, NamedBytes):
        path.seek(0)  # may be decoded more than once (e.g. RGB, then gray)
    else:
        path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(f"{path}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
            im = ImageOps.exif_transpose(im)
            arr, note = _to_array(im, channels, strict, path)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: refused as a decompression bomb ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{path}: cannot decode image ({e})") from None
    if min(arr.shape[:2]) < 1:
        raise ImageError(f"{path}: empty image")
    return arr, note


def _to_array(im: Image.Image, channels: int, strict: bool, path: Path) -> tuple[np.ndarray, str]:
    mode, notes = im.mode, []
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")
        notes.append(f"{mode} scaled to 8 bits")
    elif mode == "F":
        raise ImageError(f"{path}: floating-point images (mode F) are not supported; save as 8/16-bit")
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        notes.append("palette expanded")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im.convert("RGBA")).convert("RGB" if im.mode != "LA" else "L")
        notes.append("alpha composited on white")
    if im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
        notes.append(f"{mode} converted to RGB")
    if im.mode == "1":
        im = im.convert("L")
    src_channels = 1 if im.mode == "L" else 3
    if im.mode not in ("L", "RGB"):
        raise ImageError(f"{path}: unsupported image mode {im.mode}")
    if src_channels != channels:
        if strict:
            kind = {1: "grayscale", 3: "RGB"}
            raise ImageError(
                f"{path}: {kind[src_channels]} image but the model takes {channels}-channel "
                f"({kind[channels]}) images"
            )
        im = im.convert("L" if channels == 1 else "RGB")
        notes.append(f"{'RGB' if src_channels == 3 else 'grayscale'} converted to {im.mode}")
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr), "; ".join(notes)


def pad_to_multiple(x: np.ndarray, factor: int) -> np.ndarray:
    """Pad (..., H, W) bottom/right by edge replication up to multiples of factor.

    The same rule as aekit.models (torch 'replicate' padding); crop back with [:H, :W].
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % factor, (-w) % factor
    if ph == 0 and pw == 0:
        return x
    pad = [(0, 0)] * (x.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(x, pad, mode="edge")


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W, C) -> float32 (B, C, H, W) in [-1, 1]: x / 127.5 - 1."""
    x = images.astype(np.float32).transpose(0, 3, 1, 2)
    return x * np.float32(1 / 127.5) - np.float32(1.0)


def from_model_output(x: np.ndarray) -> np.ndarray:
    """float (B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C), rounded and clipped."""
    y = (np.asarray(x, dtype=np.float32) + np.float32(1.0)) * np.float32(127.5)
    return np.clip(np.rint(y), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


# Files written through a temp name get the permissions a plain open() would give.
FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is renamed over `path`, else removed.

    Readers never see a partial file, and an interrupted job leaves only a hidden
    '.NAME.*.part' file that the next run ignores.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_image(arr: np.ndarray, path: str | Path) -> Path:
    """Write uint8 (H, W, C) atomically, in the format of the path's suffix (PNG if unknown)."""
    im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    with atomic_output(path) as tmp:
        im.save(tmp, format=fmt)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write bytes to path via a temp file in the same folder and an atomic rename."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 arrays of equal shape (inf when identical)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
