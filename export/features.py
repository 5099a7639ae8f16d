"""Latent features for other models: an exported model's y_hat vectors over an image folder, as .npz.

    aekit features models/fmnist-r4 data/fmnist/test -o feats.npz [--pool avg]
Extraction runs on onnxruntime + numpy (no torch). The linear probe that evaluates these
features lives with the other evaluations, in aekit.bench.probe (`aekit probe`).
"""

from __future__ import annotations

import io
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from aekit.data import scale_crop, subsample
from aekit.images import ImageError, Sample, atomic_output, load_image, scan_folder

log = logging.getLogger(__name__)

FEATURES_FORMAT = "aekit-features"
FEATURES_VERSION = 1
POOLS = ("none", "avg")
PIXELS_ID = "pixels"  # model_id of raw-pixel feature vectors (the probe's baseline)


class FeaturesError(Exception):
    """A features file that is missing, foreign or inconsistent; the message names the file."""


@dataclass
class Features:
    x: np.ndarray  # float32 (N, D): dequantised latent y_hat flattened (c_y*h*w), or channel means (c_y)
    labels: np.ndarray  # int64 (N,): index into classes; -1 for images of a flat (unlabelled) folder
    classes: list[str]  # class names (subfolders of DATA), sorted
    paths: list[str]  # absolute path of each image, in row order
    model_id: str  # the model's id, or "pixels" for raw pixel vectors
    pool: str = "none"  # none | avg (spatial mean per latent channel)
    size: int = 0  # images scale-cropped to size x size first (0: native size)
    failed: int = 0  # files skipped (unreadable, too small, wrong size)

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class LoadConfig:
    size: int = 0  # 0: native size (all images must share one unless pool="avg"); else scale-crop to size^2
    max_images: int = 0  # 0: all; else a seeded random subset of this many files (all classes represented)
    seed: int = 0  # seed of that subset
    workers: int = 4  # threads decoding image files
    chunk: int = 1024  # files decoded per step (bounds memory)


# ---- loading images as the model saw them in training -----------------------------------------
def list_samples(data: str | Path, cfg: LoadConfig) -> tuple[list[Sample], list[str]]:
    """Image files under data (flat, or one subfolder per class) and the class names; non-images noted."""
    samples, classes, skipped = scan_folder(data)
    for p in skipped:
        log.warning("skipped %s: not an image file", p)
    return subsample(samples, cfg.max_images, cfg.seed), classes


def load_one(path: Path, channels: int, factor: int, size: int) -> np.ndarray:
    """Decode as training does (converted to the model's channels), scale-crop if size; too small raises."""
    arr, _ = load_image(path, channels)
    if size:
        arr = scale_crop(arr, size)
    h, w = arr.shape[:2]
    if min(h, w) < factor:
        raise ImageError(f"{path}: {w}x{h} is smaller than the model's down-sampling factor {factor}")
    return arr


def iter_images(samples: list[Sample], channels: int, factor: int, cfg: LoadConfig
                ) -> Iterator[list[tuple[int, np.ndarray | None, str | None]]]:
    """Chunks of (index, image or None, error or None) in sample order, decoded in threads."""

    def one(i: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            return i, load_one(samples[i].path, channels, factor, cfg.size), None
        except ImageError as e:
            return i, None, str(e)

    with ThreadPoolExecutor(max(1, cfg.workers)) as pool:
        for start in range(0, len(samples), cfg.chunk):
            yield list(pool.map(one, range(start, min(len(samples), start + cfg.chunk))))


def check_shape(shape: tuple[int, ...] | None, arr: np.ndarray, path: Path, size: int) -> str | None:
    """An error when arr's size differs from the first image's (flat vectors need one size)."""
    if shape is None or arr.shape == shape:
        return None
    hint = "" if size else "; pass --size S to scale-crop every image, or --pool avg"
    return (f"{path}: {arr.shape[1]}x{arr.shape[0]} but the first image was {shape[1]}x{shape[0]} "
            f"(feature vectors need one size{hint})")


def load_images(data: str | Path, channels: int, factor: int = 1, cfg: LoadConfig | None = None
                ) -> tuple[np.ndarray, np.ndarray, list[str], list[str], list[str]]:
    """All usable images of one size as uint8 (N, H, W, C), int labels, classes, paths and failure lines."""
    cfg = cfg or LoadConfig()
    samples, classes = list_samples(data, cfg)
    index = {c: k for k, c in enumerate(classes)}
    images, labels, paths, failed, shape = [], [], [], [], None
    for chunk in iter_images(samples, channels, factor, cfg):
        for i, arr, err in chunk:
            err = err or check_shape(shape, arr, samples[i].path, cfg.size)
            if err:
                failed.append(err)
                continue
            shape = shape or arr.shape
            images.append(arr)
            labels.append(index.get(samples[i].label, -1))
            paths.append(str(samples[i].path))
    if not images:
        raise ImageError(f"{data}: no usable images ({len(failed)} failed)")
    return np.stack(images), np.asarray(labels, np.int64), classes, paths, failed


# ---- latent features ----------------------------------------------------------------------------
def latent_vectors(rt, images: np.ndarray, pool: str, batch_size: int) -> np.ndarray:
    """uint8 (B, H, W, C) of one size -> float32 (B, D): y_hat as the decoder sees it, flat or pooled."""
    out = []
    for s in range(0, len(images), batch_size):
        y_hat = rt.dequantise(rt.quantise(rt.encode(images[s : s + batch_size])))  # (b, c_y, h, w)
        out.append(y_hat.mean(axis=(2, 3)) if pool == "avg" else y_hat.reshape(len(y_hat), -1))
    return np.concatenate(out).astype(np.float32)


def extract_features(model_dir: str | Path, data: str | Path, *, batch_size: int = 256, max_images: int = 0,
                     pool: str = "none", workers: int = 4, size: int = 0, seed: int = 0, threads: int = 0,
                     device: str = "auto") -> Features:
    """Deterministic latent vectors of every usable image under data; bad files skipped, one line each."""
    from aekit.export.runtime import Runtime

    if pool not in POOLS:
        raise ValueError(f"pool {pool!r} must be one of {', '.join(POOLS)}")
    rt = Runtime(model_dir, device=device, threads=threads)
    cfg = LoadConfig(size=size, max_images=max_images, seed=seed, workers=workers)
    samples, classes = list_samples(data, cfg)
    index = {c: k for k, c in enumerate(classes)}
    xs, rows, failed, shape = [], [], [], None  # rows: sample index of each vector
    for chunk in iter_images(samples, rt.channels, rt.factor, cfg):
        groups: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}
        for i, arr, err in chunk:
            err = err or (None if pool == "avg" else check_shape(shape, arr, samples[i].path, size))
            if err:
                log.error("failed: %s", err)
                failed.append(err)
                continue
            shape = shape or arr.shape
            groups.setdefault(arr.shape, []).append((i, arr))
        for group in groups.values():  # equal sizes batch together; order restored below
            xs.append(latent_vectors(rt, np.stack([a for _, a in group]), pool, batch_size))
            rows += [i for i, _ in group]
    if not rows:
        raise ImageError(f"{data}: no usable images ({len(failed)} failed)")
    order = np.argsort(rows, kind="stable")  # back to sample order
    kept = [samples[rows[k]] for k in order]
    return Features(x=np.concatenate(xs)[order], labels=np.asarray([index.get(s.label, -1) for s in kept], np.int64),
                    classes=classes, paths=[str(s.path) for s in kept], model_id=rt.model_id, pool=pool, size=size,
                    failed=len(failed))


def pixel_features(paths: list[str], labels: np.ndarray, classes: list[str], channels: int, size: int = 0,
                   workers: int = 4) -> Features:
    """Raw pixels (in [0, 1], flattened) of the given image files: the probe's baseline on the same images."""
    samples = [Sample(Path(p), "", Path(Path(p).name)) for p in paths]
    cfg = LoadConfig(size=size, workers=workers)
    rows, shape = [], None
    for chunk in iter_images(samples, channels, 1, cfg):
        for i, arr, err in chunk:
            err = err or check_shape(shape, arr, samples[i].path, size)
            if err:
                raise FeaturesError(f"pixel baseline: {err}")
            shape = shape or arr.shape
            rows.append(arr.reshape(-1).astype(np.float32) / np.float32(255))
    return Features(x=np.stack(rows), labels=np.asarray(labels, np.int64), classes=list(classes),
                    paths=list(paths), model_id=PIXELS_ID, size=size)


# ---- .npz files -----------------------------------------------------------------------------------
def save_features(path: str | Path, feats: Features) -> Path:
    """Write feats as .npz atomically: x, labels, classes, paths, model_id, pool, size, failed, format."""
    buf = io.BytesIO()
    np.savez(buf, x=feats.x.astype(np.float32), labels=feats.labels.astype(np.int64),
             classes=np.asarray(feats.classes, dtype=str), paths=np.asarray(feats.paths, dtype=str),
             model_id=np.asarray(feats.model_id), pool=np.asarray(feats.pool), size=np.asarray(feats.size),
             failed=np.asarray(feats.failed), format=np.asarray(f"{FEATURES_FORMAT}/{FEATURES_VERSION}"))
    with atomic_output(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return Path(path)


def load_features(path: str | Path) -> Features:
    """Read a file written by save_features; FeaturesError names the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FeaturesError(f"{path}: no such features file")
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise FeaturesError(f"{path}: not a .npz features file ({e})") from None
    if str(d.get("format", "")) != f"{FEATURES_FORMAT}/{FEATURES_VERSION}":
        raise FeaturesError(f"{path}: not an aekit features file (format {d.get('format')!s}, "
                            f"expected {FEATURES_FORMAT}/{FEATURES_VERSION})")
    x, labels = d["x"], d["labels"]
    if x.ndim != 2 or len(labels) != len(x) or len(d["paths"]) != len(x):
        raise FeaturesError(f"{path}: inconsistent arrays (x {x.shape}, {len(labels)} labels, {len(d['paths'])} paths)")
    return Features(x=x.astype(np.float32), labels=labels.astype(np.int64), classes=[str(c) for c in d["classes"]],
                    paths=[str(p) for p in d["paths"]], model_id=str(d["model_id"]), pool=str(d["pool"]),
                    size=int(d["size"]), failed=int(d["failed"]))
