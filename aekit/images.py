"""Image files in, arrays out: folder scanning, decoding and the pixel conventions.

Torch-free, so the ONNX runtime (codec, detector) shares exactly the decoding,
padding and normalisation used at training time.
"""

from __future__ import annotations

import io
import os
import re
import logging
import stat
import struct
import tempfile
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# A decoded image above this many pixels is refused before its pixels are read
# (decompression bombs); large real images are handled by tiling downstream.
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own hard limit (2 x MAX_IMAGE_PIXELS)


class ImageError(Exception):
    """A file that cannot be used as an image; the message names the file and the reason."""


class EmptySourceError(ImageError):
    """A source folder with no image file at all (nor an unusable image entry): folder jobs that code or
    screen what arrives treat it as a warning (exit 0), jobs that need images (training, calibration) as
    an error."""


class ImageLimitError(ImageError):
    """An image refused by a size limit (pixels, decompression bomb): the input is too big, not broken."""


def display(path: str | Path) -> str:
    """A path as printable text: bytes of a non-UTF-8 file name shown as \\xNN escapes."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def entry_problem(path: Path) -> str | None:
    """Why a directory entry cannot be read as a file (None when it can).

    Checked before anything opens it: a file name that is not valid UTF-8 (it could not be
    printed or recorded faithfully), a symbolic link that loops or points nowhere, and
    anything that is not a regular file (a FIFO would block the reader forever).
    """
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8; rename the file"
    try:
        st = path.stat()
    except OSError as e:
        if path.is_symlink():
            return f"symbolic link that cannot be followed ({e.strerror or e})"
        return f"cannot read ({e.strerror or e})"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return None


@dataclass(frozen=True)
class Sample:
    path: Path  # absolute path of the image file
    label: str  # class name ("" for a flat folder)
    rel: Path  # path relative to the scanned root (mirrors outputs)


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def warn(message: str) -> None:
    """Default reporter of skipped entries: one warning line (the aekit.images logger)."""
    log.warning("%s", message)


def scan_folder(root: str | Path, report: Callable[[str], None] = warn,
                ) -> tuple[list[Sample], list[str], list[Path]]:
    """Image files under root, their class names and the non-image files skipped.

    ImageFolder convention: if root holds subfolders with images, each first-level
    subfolder is a class (images deeper down belong to that class) and images lying
    directly in root are an error; otherwise root is one flat, unlabelled folder.
    Image-named entries that cannot be read as files (see entry_problem: links that loop
    or dangle, non-UTF-8 names, FIFOs) are left out, each reported as one line through
    `report`. Returns (samples sorted by path, class names sorted, skipped non-image files).
    Raises FileNotFoundError (no such path), EmptySourceError (a folder without any image
    entry) or ImageError (only unusable image entries; images both at the top level and in
    class subfolders; a single file that is not a usable image).
    """
    root = Path(root)
    if not root.exists() and not root.is_symlink():
        raise FileNotFoundError(f"{display(root)}: no such file or folder")
    if not root.is_dir():
        if not is_image_name(root):
            raise ImageError(f"{display(root)}: not an image file (expected one of {', '.join(IMAGE_EXTENSIONS)})")
        if problem := entry_problem(root):
            raise ImageError(f"{display(root)}: {problem}")
        return [Sample(Path(os.path.abspath(root)), "", Path(root.name))], [], []
    files, skipped, unusable = [], [], 0
    for p in iter_files(root):
        if not is_image_name(p):
            skipped.append(p)
        elif problem := entry_problem(p):
            unusable += 1
            report(f"skipped {display(p)}: {problem}")
        else:
            files.append(p)
    if not files:
        bad = f"{unusable} unusable image entries (named above), " if unusable else ""
        error = ImageError if unusable else EmptySourceError  # unusable entries are failures, not nothing
        raise error(f"{display(root)}: no image files found ({bad}{len(skipped)} other "
                    f"file{'' if len(skipped) == 1 else 's'} ignored)")
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
        samples.append(Sample(Path(os.path.realpath(p)), label, rel))
    classes = sorted({s.label for s in samples if s.label})
    return samples, classes, skipped


def iter_files(root: Path) -> Iterator[Path]:
    """Every non-hidden file entry under root, sorted; links to folders are not followed.

    The one folder walker of the package (training, screening, features and the codec's
    folder jobs); hidden names include our own '.NAME.*.part' temp files.
    """
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


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
    lazy_above: int = 0,
) -> tuple[np.ndarray | LazyPixels, str]:
    """Decode an image file to a uint8 array (H, W, channels) and a note on conversion.

    EXIF orientation is applied when it can be read (unreadable EXIF is ignored and noted:
    the pixels are fine). Modes are converted deliberately: palette and alpha images are
    composited on white, 16-bit integer images are scaled to 8 bits by their declared
    depth, 32-bit integer and float images are refused, CMYK/YCbCr/LAB go to RGB. Files
    with several frames (multi-page TIFF, APNG, animated WebP) are refused; the primary
    image of a JPEG with extra MPO pictures is used. With strict=True a colour image is
    refused by a gray model and vice versa (a codec must not silently drop colour);
    otherwise it is converted and the note says so (channels=0: 1 or 3 as stored). Every failure, whatever Pillow raised,
    is one ImageError naming the file (ImageLimitError for the size limits).

    lazy_above: an image of more pixels than this (0: never) comes back as a LazyPixels, which keeps
    Pillow's decoded image and copies out only the regions asked for (a tiled codec's compress of a
    178 Mpx photo then holds Pillow's 712 MB and no 534 MB copy next to it; issue 17).
    """
    if isinstance(path, NamedBytes):
        path.seek(0)  # may be decoded more than once (e.g. RGB, then gray)
        name = path.name
    else:
        path = Path(path)
        name = display(path)
        if problem := entry_problem(path):
            raise ImageError(f"{name}: {problem}")
    try:
        with Image.open(path) as im:
            _check_pixels(name, *im.size, max_pixels)
            frames = getattr(im, "n_frames", 1)
            if frames > 1 and im.format != "MPO":  # MPO: a JPEG photo plus previews/depth maps
                raise ImageError(f"{name}: {im.format} file with {frames} frames (animated or multi-page); "
                                 "aekit reads single images, so save the frame you want as its own file")
            bits = _integer_depth(im)  # before _orient: a transposed copy forgets its file's tags
            im.load()
            core = im.im  # the decoded pixels; closing the file below drops the Image object's hold on them
            out, notes = _orient(im)
            out, note = _to_mode(out, channels, strict, name, bits)
            if lazy_above and out.size[0] * out.size[1] > lazy_above:
                if out is im:  # still the opened file's image: keep its decoded core past the close
                    out = im._new(core)
                arr = LazyPixels(out)
            else:
                arr = _pixels(out)
                arr = np.ascontiguousarray(arr[:, :, None] if arr.ndim == 2 else arr)
            del out, core
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageLimitError(f"{name}: refused as a decompression bomb ({e})") from None
    except MemoryError:
        raise ImageLimitError(f"{name}: not enough memory to decode this image") from None
    except Exception as e:  # Pillow's plugins raise many types (struct.error, IndexError, ...) on bad files
        raise ImageError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from None
    if min(arr.shape[:2]) < 1:
        raise ImageError(f"{name}: empty image")
    return arr, "; ".join(n for n in (*notes, note) if n)


# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose)
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def _orient(im: Image.Image) -> tuple[Image.Image, list[str]]:
    """Apply the EXIF orientation; malformed EXIF is ignored with a note, never fatal.

    Only the orientation tag is read (ImageOps.exif_transpose also re-serialises the
    whole EXIF block, which raises on many malformed-but-harmless tags).
    """
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception as e:
        return im, [f"EXIF unreadable, orientation ignored ({type(e).__name__})"]
    method = _ORIENTATION.get(orientation) if isinstance(orientation, int) else None
    if method is None:
        return im, [] if orientation in (1, None) else [f"EXIF orientation {orientation!r} ignored"]
    im.load()
    return im.transpose(method), []


def _integer_depth(im: Image.Image) -> int:
    """Bits per sample an integer-mode (I, I;16*) image declares: TIFF's BitsPerSample, else 16 or 32."""
    bits = getattr(im, "tag_v2", {}).get(258) if im.format == "TIFF" else None
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    if isinstance(bits, int) and 1 <= bits <= 32:
        return bits
    if im.mode.startswith("I;16") or im.format == "PNG":  # PNG stores at most 16 bits a sample
        return 16
    return 32


def _to_mode(im: Image.Image, channels: int, strict: bool, path: str, bits: int = 16) -> tuple[Image.Image, str]:
    """Any Pillow image -> an L or RGB image by aekit's conversion rules (see load_image) and a note."""
    mode, notes = im.mode, []
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        if bits > 16:  # no honest way to map 2^32 levels: a fixed scale crushes, a per-image one lies
            lo, hi = (a.min(), a.max()) if a.size else (0, 0)
            raise ImageError(f"{path}: {bits}-bit integer image (values {lo:.0f}..{hi:.0f}); aekit reads 8- and "
                             "16-bit images, so convert it to 16 bits with the scaling you want")
        top = float(2**bits - 1)
        if a.size and (a.min() < 0 or a.max() > top):
            raise ImageError(f"{path}: values {a.min():.0f}..{a.max():.0f} outside the declared {bits}-bit range")
        im = Image.fromarray(np.round(a * (255.0 / top)).astype(np.uint8), "L")
        notes.append(f"{bits}-bit {mode} scaled to 8 bits (x 255/{top:.0f})")
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
    if channels and src_channels != channels:  # channels 0: as stored (1 or 3)
        if strict:
            kind = {1: "grayscale", 3: "RGB"}
            raise ImageError(
                f"{path}: {kind[src_channels]} image but the model takes {channels}-channel "
                f"({kind[channels]}) images"
            )
        im = im.convert("L" if channels == 1 else "RGB")
        notes.append(f"{'RGB' if src_channels == 3 else 'grayscale'} converted to {im.mode}")
    return im, "; ".join(notes)


PIXEL_BAND = 1 << 22  # pixels per band when a large image's pixels are copied out of Pillow


def _pixels(im: Image.Image) -> np.ndarray:
    """An L or RGB Pillow image -> uint8 (H, W) or (H, W, 3), copied out in bands of PIXEL_BAND pixels.

    np.asarray(im) goes through im.tobytes(), which holds the encoded chunks and their joined copy at
    once: two copies of the pixels next to Pillow's own (4 bytes a pixel for RGB). Band by band, the
    peak is Pillow's image plus the array (measured on a 178 Mpx photo: see the README's "CPU performance")."""
    w, h = im.size
    if w * h <= PIXEL_BAND:
        return np.asarray(im, dtype=np.uint8)
    out = np.empty((h, w) if im.mode == "L" else (h, w, 3), dtype=np.uint8)
    rows = max(1, PIXEL_BAND // w)
    for y in range(0, h, rows):
        out[y:y + rows] = np.asarray(im.crop((0, y, w, min(h, y + rows))), dtype=np.uint8)
    return out


class LazyPixels:
    """A decoded L or RGB image left in Pillow's memory, read as a uint8 (H, W, C) array region by region.

    Supports what tiled encoding needs: .shape, .dtype, .ndim, .nbytes (the bytes Pillow holds: 4 a
    pixel for RGB, 1 for L) and image[y0:y1, x0:x1] (step 1; a trailing ':' allowed) -> a new uint8
    (y1 − y0, x1 − x0, C) array. np.asarray(lazy) copies the whole image out (in bands of PIXEL_BAND pixels).
    C may differ from the stored image's: channels=3 over an L image repeats it, channels=1 over an RGB
    image takes its first channel (the caller checked that the three are equal). Thread-safe.
    Raises TypeError for any other index.
    """

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, im: Image.Image, channels: int = 0):
        if im.mode not in ("L", "RGB"):
            raise ValueError(f"LazyPixels takes L or RGB images, not {im.mode}")
        self.im, self.stored = im, 1 if im.mode == "L" else 3
        self.channels = channels or self.stored
        self.shape = (im.size[1], im.size[0], self.channels)
        self.nbytes = im.size[0] * im.size[1] * (1 if im.mode == "L" else 4)
        self._lock = threading.Lock()

    def with_channels(self, channels: int) -> LazyPixels:
        """The same pixels read as `channels` channels (see the class)."""
        return LazyPixels(self.im, channels)

    def _adapt(self, a: np.ndarray) -> np.ndarray:
        a = a[:, :, None] if a.ndim == 2 else a
        if a.shape[2] == self.channels:
            return np.ascontiguousarray(a)
        return np.repeat(a, 3, axis=2) if self.channels == 3 else np.ascontiguousarray(a[:, :, :1])

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple) or not 2 <= len(key) <= 3 or not all(isinstance(k, slice) for k in key) \
                or (len(key) == 3 and key[2] != slice(None)):
            raise TypeError(f"LazyPixels takes [y0:y1, x0:x1] regions, not {key!r}")
        (y0, y1, sy), (x0, x1, sx) = key[0].indices(self.shape[0]), key[1].indices(self.shape[1])
        if sy != 1 or sx != 1:
            raise TypeError(f"LazyPixels takes step-1 regions, not {key!r}")
        y1, x1 = max(y0, y1), max(x0, x1)
        with self._lock:
            region = self.im.crop((x0, y0, x1, y1))
        return self._adapt(np.asarray(region, dtype=np.uint8))

    def band_rows(self) -> int:
        """Rows per band when the whole image is read (PIXEL_BAND pixels)."""
        return max(1, PIXEL_BAND // max(1, self.shape[1]))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out, rows = np.empty(self.shape, dtype=np.uint8), self.band_rows()
        for y in range(0, self.shape[0], rows):  # band by band: the peak is Pillow's image plus `out`
            out[y:y + rows] = self[y:y + rows, :]
        return out if dtype is None else out.astype(dtype, copy=False)


@dataclass(frozen=True)
class ImageInfo:
    width: int  # as stored (EXIF orientation may swap width and height, never the short side)
    height: int
    gray: bool  # one channel as stored (L, 1, I;16, LA, or a palette of grays)


GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _check_pixels(name: str, w: int, h: int, max_pixels: int) -> None:
    """ImageLimitError naming the file when a w x h image is over the pixel limit (before decoding)."""
    if w * h > max_pixels:
        raise ImageLimitError(f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")


def resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """float64 (n_out, n_in) matrix M with M @ v = Pillow's float BICUBIC resize of a row v to n_out samples
    (Keys' cubic, a = −0.5, half-pixel centres, the kernel stretched by n_in / n_out when shrinking).

    Pillow resamples separably, so an image X (H, W) resizes to M_h @ X @ M_w.T. These are the Resize
    nodes of `aekit rescale`'s graphs (export/rescale.py, tested equal to Pillow to 1e-5): training through
    them (`aekit train --grid-scale`) fits a transform to the grid its rescaled model will run it on.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"resample_matrix: sizes must be >= 1 (got {n_in} -> {n_out})")
    eye = Image.fromarray(np.eye(n_in, dtype=np.float32), mode="F")  # row i: the unit impulse at i
    rows = np.asarray(eye.resize((n_out, n_in), Image.Resampling.BICUBIC), dtype=np.float64)
    return np.ascontiguousarray(rows.T)


def probe_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Size and gray/colour of an image file from its header (no pixels decoded); ImageError if unusable."""
    path = Path(path)
    if problem := entry_problem(path):
        raise ImageError(f"{display(path)}: {problem}")
    try:
        with Image.open(path) as im:
            w, h = im.size
            _check_pixels(display(path), w, h, max_pixels)
            if im.mode in ("P", "PA"):
                pal = np.asarray(im.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
                gray = bool((pal == pal[:, :1]).all())
            else:
                gray = im.mode in GRAY_MODES
            return ImageInfo(w, h, gray)
    except ImageError:
        raise
    except Exception as e:
        raise ImageError(f"{display(path)}: cannot read image header ({type(e).__name__}: {e})") from None


def load_for_channels(path: str | Path | NamedBytes, channels: int,
                      max_pixels: int = DEFAULT_MAX_PIXELS, lazy_above: int = 0) -> tuple[np.ndarray | LazyPixels, str]:
    """Image file -> (uint8 (H, W, channels), original mode "L" | "RGB") for a model of `channels`.

    The one channel rule of aekit (codec, detector, server): convert when nothing is lost,
    refuse when colour would be lost.
      - a grayscale file through an RGB model is replicated to 3 channels (mode "L", so a
        codec restores one channel on decode);
      - an RGB file whose three channels are equal ("gray-looking" RGB) through a gray model
        is taken as grayscale (mode "L");
      - an RGB file with colour through a gray model is refused (ImageError naming the file).
    lazy_above: as load_image's (a LazyPixels comes back for larger images; its channels follow the rule).
    """
    arr, _ = load_image(path, 0, max_pixels=max_pixels, lazy_above=lazy_above)  # (H, W, 1|3) as stored
    if arr.shape[2] == channels:
        return arr, "L" if channels == 1 else "RGB"
    lazy = isinstance(arr, LazyPixels)
    if channels == 3:
        return (arr.with_channels(3) if lazy else np.repeat(arr, 3, axis=2)), "L"
    bands = (arr[y:y + arr.band_rows(), :] for y in range(0, arr.shape[0], arr.band_rows())) if lazy else [arr]
    if all(np.array_equal(b[..., 0], b[..., 1]) and np.array_equal(b[..., 1], b[..., 2]) for b in bands):
        return (arr.with_channels(1) if lazy else np.ascontiguousarray(arr[..., :1])), "L"
    name = path.name if isinstance(path, NamedBytes) else display(path)
    raise ImageError(f"{name}: RGB image but the model takes 1-channel (grayscale) images; "
                     "refusing to drop colour (use an RGB model)")


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
    """Yield a temp path beside `path`; on success it is fsynced and renamed over `path`, else removed.

    Readers never see a partial file, and after a crash or power loss the name holds the old
    or the new content, never a torn one. An interrupted job leaves only a hidden
    '.NAME.PID-XXXX.part' file that the next run ignores and remove_stale_parts() deletes.
    """
    tmp = new_part(path)
    try:
        yield tmp
        commit_part(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def new_part(path: str | Path) -> Path:
    """A new empty hidden temp file '.NAME.PID-XXXX.part' beside path (its folder created), for
    commit_part: atomic_output in two steps, when the file is written in one thread and committed
    in another."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".part", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def commit_part(tmp: Path, path: str | Path) -> Path:
    """Give a finished temp file (new_part) the usual permissions, fsync it and rename it over path."""
    path = Path(path)
    os.chmod(tmp, FILE_MODE)
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_PART = re.compile(r"^\..+\.(?:(\d+)-)?[A-Za-z0-9_]+\.part$")


def remove_stale_parts(root: str | Path, min_age_s: float = 3600.0) -> list[Path]:
    """Delete temp files that atomic_output() left behind when its process was killed.

    A '.NAME.PID-XXXX.part' is stale when process PID no longer runs (or runs but the
    file has not changed for min_age_s, as after a PID was reused); one without a PID
    (older versions) when unchanged for min_age_s. Returns the paths removed.
    """
    removed = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            m = _PART.match(name)
            if not m:
                continue
            p = Path(dirpath) / name
            try:
                age = time.time() - p.lstat().st_mtime
                if (m.group(1) and not _pid_alive(int(m.group(1)))) or age >= min_age_s:
                    p.unlink()
                    removed.append(p)
            except OSError:
                continue  # gone meanwhile, or not ours to delete
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists (another user's), or not checkable: keep the file
    try:  # Linux: a killed process stays a zombie until its parent reaps it; it writes nothing more
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def encode_image(arr: np.ndarray, suffix: str) -> bytes:
    """uint8 (H, W, 1|3) -> file bytes in the format of `suffix` (".png", ".jpg", ...; PNG if unknown).

    The one image writer of aekit: PNG lossless, JPEG at quality 95, WebP lossless.
    """
    im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    fmt = Image.registered_extensions().get(suffix.lower(), "PNG")
    opts = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}}.get(fmt, {})
    buf = io.BytesIO()
    im.save(buf, format=fmt, **opts)
    return buf.getvalue()


PNG_IDAT_BYTES = 1 << 20  # compressed bytes per IDAT chunk of write_png_rows


def write_png_rows(f: BinaryIO, width: int, height: int, channels: int, bands: Iterable[np.ndarray],
                   level: int = 1) -> int:
    """Stream an 8-bit gray (channels 1) or RGB (3) PNG to the binary file f from row bands, top to bottom:
    each band uint8 (rows, width, channels), rows summing to height. Returns the bytes written.

    Memory is a few copies of one band (the filtered rows, their bytes, the compressed output) and
    zlib's window, never the whole image: large decoded images are written while their later rows are
    still being decoded. Empty bands are skipped. Every row uses filter type 2 ("Up", the difference
    to the row above; vectorised over a band), non-interlaced, compressed at zlib `level` (the PNG
    specification, W3C/ISO 15948, sections 9 and 10). On decoded photos it compresses like Pillow's
    adaptive filters (2 % smaller on a 1.5 Mpx photos-r9 decode at level 1). Raises ValueError for a
    band of the wrong shape or dtype, or rows that do not add up to height.
    """
    if channels not in (1, 3) or width < 1 or height < 1:
        raise ValueError(f"PNG of {width}x{height}x{channels}: needs width, height >= 1 and 1 or 3 channels")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    n = f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8,
                                                                       0 if channels == 1 else 2, 0, 0, 0)))
    z, prev, rows, pending = zlib.compressobj(level), np.zeros(width * channels, np.uint8), 0, b""
    for band in bands:
        if band.dtype != np.uint8 or band.ndim != 3 or band.shape[1:] != (width, channels) or rows + len(band) > height:
            raise ValueError(f"PNG band of {band.dtype} {band.shape} after {rows} rows does not fit "
                             f"{height} x {width} x {channels} uint8")
        if not len(band):
            continue
        flat = band.reshape(len(band), width * channels)
        out = np.empty((len(band), width * channels + 1), np.uint8)
        out[:, 0] = 2  # filter type Up
        out[0, 1:] = flat[0] - prev  # uint8 arithmetic wraps modulo 256, as the filter is defined
        np.subtract(flat[1:], flat[:-1], out=out[1:, 1:])
        pending += z.compress(out.tobytes())
        while len(pending) >= PNG_IDAT_BYTES:  # chunks of at most PNG_IDAT_BYTES (a chunk's length is < 2^31)
            n += f.write(chunk(b"IDAT", pending[:PNG_IDAT_BYTES]))
            pending = pending[PNG_IDAT_BYTES:]
        prev, rows = flat[-1].copy(), rows + len(band)
    if rows != height:
        raise ValueError(f"PNG bands gave {rows} rows, expected {height}")
    return n + f.write(chunk(b"IDAT", pending + z.flush()) + chunk(b"IEND", b""))


def save_image(arr: np.ndarray, path: str | Path) -> Path:
    """Write uint8 (H, W, C) atomically, in the format of the path's suffix (see encode_image)."""
    return atomic_write_bytes(path, encode_image(arr, Path(path).suffix))


def check_output_folder(folder: Path, what: str = "", make: bool = False) -> None:
    """Check a job's output folder before any work: ValueError naming it (after `what`, e.g. "--maps")
    when it, or a folder above it, is a file, or when it (or, not there yet, the nearest folder above it)
    cannot be written (no permission, a read-only file system); make=True also makes it (ValueError if
    that fails). Jobs call this so a bad output path is one line and exit 2, not a failure per input."""
    name = f"{what} {folder}" if what else str(folder)
    for p in (folder, *folder.parents):
        if p.exists():
            if not p.is_dir():
                raise ValueError(f"{name}: " + ("exists and is not a folder" if p == folder else
                                                f"cannot be made: {p} is a file"))
            if not os.access(p, os.W_OK | os.X_OK):
                raise ValueError(f"{name}: " + ("not writable (no permission or a read-only file system)"
                                                if p == folder else f"cannot be made: {p} is not writable"))
            break
    if make:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"{name}: cannot make the output folder ({e.strerror or e})") from None


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write bytes to path via a temp file in the same folder and an atomic rename."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
