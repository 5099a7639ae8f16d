"""Training data: an image folder (flat or one subfolder per class) as batches of tensors.

Images are decoded once (in parallel threads), resized by the chosen policy and kept in
memory as uint8 when they fit under `cache_mb`; bad files are skipped with one line each.
Defaults follow the folder: the training side is the smallest image's short side (at most
256), and the channel count is 1 only when every image is grayscale (summarize()).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from aekit.images import ImageError, Sample, load_image, probe_image, scan_folder

log = logging.getLogger(__name__)

RESIZE_POLICIES = ("scale-crop", "random-crop", "none")
MAX_AUTO_SIZE = 256  # size=0 (auto) trains at the smallest image's short side, but at most this


@dataclass
class DataConfig:
    size: int = 0  # side of the square training images (ignored by resize="none"); 0: auto, the
    # smallest training image's short side capped at MAX_AUTO_SIZE (28x28 images train at 28, never upscaled)
    resize: str = "scale-crop"  # scale-crop: short side to size, centre crop (seed recipe);
    # random-crop: random size x size crops at native scale (centre crop for validation);
    # none: images used as they are (all must share one size)
    val_fraction: float = 0.1  # held out by a seeded, per-class split (unless val_data is given)
    max_images: int = 0  # use at most this many images (seeded choice); 0 = all
    cache_mb: int = 4096  # decoded images kept in memory up to this size; beyond, re-read per batch
    workers: int = 4  # threads decoding image files
    repeat: int = 1  # passes over the training images per epoch (random crops differ each time)

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize {self.resize!r} must be one of {', '.join(RESIZE_POLICIES)}")
        if self.size < 0:
            raise ValueError(f"size must be positive (or 0: auto), got {self.size}")


class ImageSet:
    """Decoded images of one split; yields (B, C, H, W) float batches in [-1, 1]."""

    def __init__(self, samples: list[Sample], channels: int, cfg: DataConfig, min_side: int, train: bool,
                 source: str = ""):
        self.cfg, self.channels, self.train, self.min_side = cfg, channels, train, min_side
        self.source = source or "data"
        if cfg.resize != "none" and cfg.size == 0:  # auto: resolved once, by the first split built
            cfg.size = summarize(samples, cfg.workers).auto_size()
            log.info("data: training side %d (auto: the smallest image's short side, at most %d; "
                     "--size to change)", cfg.size, MAX_AUTO_SIZE)
        self.samples, self.images = self._decode(samples)
        self.labels = [s.label for s in self.samples]
        if cfg.resize == "none":
            shapes = {im.shape for im in self.images if im is not None}
            if len(shapes) > 1:
                raise ImageError(
                    f"resize=none needs images of one size, found {len(shapes)} sizes "
                    f"(e.g. {sorted(shapes)[:3]}); use --resize scale-crop or random-crop"
                )

    def __len__(self) -> int:
        return len(self.samples)

    def _decode(self, samples: list[Sample]) -> tuple[list[Sample], list[np.ndarray | None]]:
        kept, images, budget = [], [], self.cfg.cache_mb * 2**20
        with ThreadPoolExecutor(max(1, self.cfg.workers)) as pool:
            # consumed as decoded: past the cache budget an image is only checked, not kept
            for s, r in zip(samples, pool.map(self._load_checked, samples)):
                if isinstance(r, str):
                    log.warning("skipped %s", r)
                    continue
                budget -= r.nbytes
                kept.append(s)
                images.append(r if budget >= 0 else None)  # None: re-read when batched
        bad = len(samples) - len(kept)
        if bad:
            log.warning("skipped %d unreadable or unusable image(s)", bad)
        if not kept:
            raise ImageError(f"{self.source}: no usable images among {len(samples)} files (all failed to load)")
        return kept, images

    def _load_checked(self, s: Sample) -> np.ndarray | str:
        try:
            return self._load(s)
        except ImageError as e:
            return str(e)

    def _load(self, s: Sample) -> np.ndarray:
        arr, _ = load_image(s.path, self.channels)
        h, w = arr.shape[:2]
        if min(h, w) < self.min_side:
            raise ImageError(f"{s.path}: {w}x{h} is smaller than the down-sampling factor {self.min_side}")
        if self.cfg.resize == "scale-crop":
            arr = scale_crop(arr, self.cfg.size)
        return arr

    def image(self, i: int) -> np.ndarray:
        im = self.images[i]
        return im if im is not None else self._load(self.samples[i])

    def batches(self, batch_size: int, rng: np.random.Generator | None) -> Iterator[np.ndarray]:
        """uint8 (B, H, W, C) batches; shuffled (and randomly cropped) when rng is given."""
        if rng is not None:  # training: each image `repeat` times per epoch, shuffled
            order = rng.permutation(np.tile(np.arange(len(self)), max(1, self.cfg.repeat)))
        else:
            order = np.arange(len(self))
        for i in range(0, len(order), batch_size):
            yield np.stack([self._view(int(j), rng) for j in order[i : i + batch_size]])

    def _view(self, i: int, rng: np.random.Generator | None) -> np.ndarray:
        im = self.image(i)
        if self.cfg.resize != "random-crop":
            return im
        s = self.cfg.size
        im = pad_to_min(im, s)
        h, w = im.shape[:2]
        if rng is not None:  # training: random crop; validation: centre crop
            top, left = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        else:
            top, left = (h - s) // 2, (w - s) // 2
        return im[top : top + s, left : left + s]


@dataclass
class FolderSummary:
    """What the image headers of a folder say (no pixels decoded): the basis of the defaults."""

    gray: int = 0  # images stored with one channel
    colour: int = 0  # images stored in colour (RGB, CMYK, colour palettes, ...)
    unreadable: int = 0  # files whose header could not be read (skipped later, one line each)
    min_side: int = 0  # the smallest short side among readable images (0: none readable)

    def channels(self) -> int:
        """All gray -> 1; any colour -> 3 (gray images are then replicated, nothing is lost)."""
        return 1 if self.gray and not self.colour else 3

    def describe(self) -> str:
        n = self.gray + self.colour
        if self.channels() == 1:
            return f"channels 1 (grayscale): all {n} readable images are grayscale"
        mixed = f"; the {self.gray} grayscale ones are replicated to 3 channels" if self.gray else ""
        return f"channels 3 (RGB): {self.colour} colour and {self.gray} grayscale images{mixed}"

    def auto_size(self) -> int:
        return min(MAX_AUTO_SIZE, self.min_side) if self.min_side else MAX_AUTO_SIZE


def summarize(samples: list[Sample], workers: int = 4) -> FolderSummary:
    """Read every image header once (threads): gray/colour counts and the smallest side."""
    def one(s: Sample):
        try:
            return probe_image(s.path)
        except ImageError:
            return None

    out, sides = FolderSummary(), []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for info in pool.map(one, samples):
            if info is None:
                out.unreadable += 1
                continue
            out.gray += info.gray
            out.colour += not info.gray
            sides.append(min(info.width, info.height))
    out.min_side = min(sides) if sides else 0
    return out


def scale_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """Scale the short side to size (Lanczos), then centre-crop size x size."""
    h, w = arr.shape[:2]
    if (h, w) != (size, size):
        k = size / min(h, w)
        nh, nw = max(size, round(h * k)), max(size, round(w * k))
        im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
        arr = np.asarray(im.resize((nw, nh), Image.LANCZOS))
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        top, left = (nh - size) // 2, (nw - size) // 2
        arr = arr[top : top + size, left : left + size]
    return np.ascontiguousarray(arr)


def pad_to_min(arr: np.ndarray, size: int) -> np.ndarray:
    h, w = arr.shape[:2]
    if h >= size and w >= size:
        return arr
    return np.pad(arr, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)), mode="edge")


def split_samples(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Deterministic per-class split: the same seed gives the same split on any machine."""
    train, val = [], []
    by_label: dict[str, list[Sample]] = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    for label in sorted(by_label):
        group = by_label[label]
        order = np.random.default_rng([seed, len(group)]).permutation(len(group))
        n_val = int(round(len(group) * val_fraction)) if len(group) > 1 else 0
        n_val = min(max(n_val, 1 if val_fraction > 0 and len(group) > 1 else 0), len(group) - 1)
        val += [group[i] for i in order[:n_val]]
        train += [group[i] for i in order[n_val:]]
    return train, val


def subsample(samples: list[Sample], n: int, seed: int) -> list[Sample]:
    if n <= 0 or n >= len(samples):
        return samples
    idx = np.sort(np.random.default_rng([seed, 7]).choice(len(samples), n, replace=False))
    return [samples[i] for i in idx]


def report_skipped(skipped: list[Path]) -> None:
    for p in skipped:
        log.warning("skipped %s: not an image file", p)
    if skipped:
        log.warning("skipped %d non-image file(s)", len(skipped))
