"""Classifier accuracy on reconstructions: a small CNN trained once on original images, then scored on a model's outputs.

    python -m aekit.bench.classifier data/fmnist/train data/fmnist/test --model models/fmnist-r4 --json classifier.json
The classifier is cached under runs/classifier/<hash>.pt (hash of the data folder and the settings), so an
experiment comparing many autoencoders trains it once. Reconstructions go through the ONNX runtime exactly
as the codec decodes them (encode -> quantise -> dequantise -> decode).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aekit.images import ImageError, atomic_output, scan_folder
from aekit.export.features import LoadConfig, load_images

log = logging.getLogger(__name__)

CLASSIFIER_FORMAT = "aekit-classifier"
CLASSIFIER_VERSION = 1
DEFAULT_CACHE = Path("runs/classifier")


@dataclass
class ClassifierConfig:
    epochs: int = 5  # passes over the training images (Fashion-MNIST: 60,000 images, ~100 s on one core)
    batch_size: int = 128  # images per step
    lr: float = 2e-3  # Adam, cosine-decayed to 0 over the run
    width: int = 16  # channels of the first conv (then 2x, 4x)
    dropout: float = 0.3  # before the linear head
    seed: int = 0  # weights init and batch order
    max_images: int = 0  # 0: every training image; else a seeded subset
    size: int = 0  # 0: native size (one size); else scale-crop to size x size
    channels: int = 0  # 0: taken from the data (1 if every image is gray, else 3)


def build_cnn(channels: int, n_classes: int, width: int = 32, dropout: float = 0.3):
    """3 x (conv3x3 + BN + ReLU), two 2x max-pools, adaptive average pool to 4x4, dropout, linear."""
    import torch.nn as nn

    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

    w = width
    return nn.Sequential(
        *block(channels, w), nn.MaxPool2d(2),  # (B, w, H/2, W/2)
        *block(w, 2 * w), nn.MaxPool2d(2),  # (B, 2w, H/4, W/4)
        *block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(4),  # (B, 4w, 4, 4) for any input size
        nn.Flatten(), nn.Dropout(dropout), nn.Linear(16 * 4 * w, n_classes),
    )


def to_tensor(images: np.ndarray):
    """uint8 (B, H, W, C) -> float32 tensor (B, C, H, W) in [-1, 1] (the autoencoders' convention)."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def detect_channels(train_dir: str | Path) -> int:
    """1 if the first few images are gray, else 3."""
    from PIL import Image

    samples, _, _ = scan_folder(train_dir)
    for s in samples[:: max(1, len(samples) // 16)][:16]:
        with Image.open(s.path) as im:
            if im.mode not in ("L", "1", "I;16", "I", "LA"):
                return 3
    return 1


def cache_key(train_dir: str | Path, cfg: ClassifierConfig) -> str:
    """Hash of the folder (resolved path, every file's relative path and size) and the settings."""
    root = Path(train_dir).resolve()
    samples, _, _ = scan_folder(root)
    h = hashlib.sha256(f"{CLASSIFIER_FORMAT}/{CLASSIFIER_VERSION}\n{root}\n{json.dumps(asdict(cfg), sort_keys=True)}".encode())
    for s in samples:
        h.update(f"{s.rel}\t{s.path.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def fit(images: np.ndarray, labels: np.ndarray, n_classes: int, cfg: ClassifierConfig) -> tuple[Any, float]:
    """Train the CNN on uint8 images; returns (model in eval mode, final-epoch training accuracy)."""
    import torch

    torch.manual_seed(cfg.seed)
    model = build_cnn(images.shape[3], n_classes, cfg.width, cfg.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps = cfg.epochs * -(-len(images) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    rng, y_all, correct = np.random.default_rng([cfg.seed, 11]), torch.from_numpy(labels), 0
    for _ in range(cfg.epochs):
        model.train()
        correct = 0
        for s in np.array_split(rng.permutation(len(images)), max(1, len(images) // cfg.batch_size)):
            x, y = to_tensor(images[np.sort(s)]), y_all[np.sort(s)]
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            correct += int((logits.argmax(1) == y).sum())
    return model.eval(), correct / len(images)


def train_classifier(train_dir: str | Path, out: str | Path = DEFAULT_CACHE, epochs: int = 5, threads: int = 1,
                     max_images: int = 0, cfg: ClassifierConfig | None = None) -> Path:
    """Train on the original images of a labelled folder, once: returns out/<hash>.pt (cached, atomic)."""
    import torch

    cfg = cfg or ClassifierConfig(epochs=epochs, max_images=max_images)
    cfg.channels = cfg.channels or detect_channels(train_dir)
    path = Path(out) / f"{cache_key(train_dir, cfg)}.pt"
    if path.is_file():
        return path
    images, labels, classes, _, failed = load_images(
        train_dir, cfg.channels, 1, LoadConfig(size=cfg.size, max_images=cfg.max_images, seed=cfg.seed))
    if not classes or (labels < 0).any():
        raise ImageError(f"{train_dir}: the classifier needs one subfolder per class")
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    t0 = time.perf_counter()
    try:
        model, train_acc = fit(images, labels, len(classes), cfg)
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    state = {"format": CLASSIFIER_FORMAT, "version": CLASSIFIER_VERSION, "config": asdict(cfg),
             "classes": classes, "image_shape": list(images.shape[1:]), "train_dir": str(Path(train_dir).resolve()),
             "n_train": len(images), "skipped": len(failed), "train_accuracy": train_acc,
             "train_time_s": round(time.perf_counter() - t0, 1), "torch": str(torch.__version__),
             "threads": used, "state_dict": model.state_dict()}
    with atomic_output(path) as tmp:
        torch.save(state, tmp)
    return path


class ClassifierError(Exception):
    """A classifier file that is missing, foreign or unreadable; the message names the file."""


def load_classifier(path: str | Path) -> Any:
    """The CNN in eval mode, with .classes, .channels, .image_shape and .info (the saved record)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ClassifierError(f"{path}: no such classifier file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or foreign files
        raise ClassifierError(f"{path}: unreadable classifier ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != CLASSIFIER_FORMAT:
        raise ClassifierError(f"{path}: not an aekit classifier")
    cfg = state["config"]
    model = build_cnn(cfg["channels"], len(state["classes"]), cfg["width"], cfg["dropout"])
    model.load_state_dict(state["state_dict"])
    model.eval()
    model.classes, model.channels, model.image_shape = list(state["classes"]), cfg["channels"], state["image_shape"]
    model.info = {k: v for k, v in state.items() if k != "state_dict"}
    return model


def predict(clf: Any, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Class indices for uint8 (N, H, W, C) images."""
    import torch

    if images.ndim != 4 or images.shape[3] != clf.channels:
        raise ValueError(f"expected (N, H, W, {clf.channels}) uint8 images, got shape {images.shape}")
    with torch.inference_mode():
        return np.concatenate([clf(to_tensor(images[s : s + batch_size])).argmax(1).numpy()
                               for s in range(0, len(images), batch_size)])


def classifier_accuracy(clf: Any, images: np.ndarray, labels: np.ndarray | list[str]) -> float:
    """Fraction of images classified as their label (int index into clf.classes, or class names)."""
    labels = list(labels)
    if labels and isinstance(labels[0], str):
        unknown = sorted(set(labels) - set(clf.classes))
        if unknown:
            raise ValueError(f"labels not among the classifier's classes: {', '.join(unknown)}")
        labels = [clf.classes.index(c) for c in labels]
    y = np.asarray(labels, np.int64)
    if len(y) != len(images):
        raise ValueError(f"{len(images)} images but {len(y)} labels")
    return float(np.mean(predict(clf, images) == y))


def reconstruct_folder(model_dir: str | Path, data_dir: str | Path, max_images: int = 0, *, size: int = 0,
                       seed: int = 0, batch_size: int = 256, threads: int = 1, device: str = "cpu"
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(originals, reconstructions, labels): uint8 (N, H, W, C) twice, int labels (sorted class folders of data_dir).

    Reconstructions are what the codec decodes: encode -> quantise -> dequantise -> decode (aekit.export.runtime).
    """
    from aekit.export.runtime import Runtime

    rt = Runtime(model_dir, device=device, threads=threads)
    images, labels, _, _, failed = load_images(data_dir, rt.channels, rt.factor,
                                               LoadConfig(size=size, max_images=max_images, seed=seed))
    for msg in failed:
        log.error("failed: %s", msg)
    recon = np.concatenate([rt.reconstruct(images[s : s + batch_size]) for s in range(0, len(images), batch_size)])
    return images, recon, labels


def reconstruction_metrics(orig: np.ndarray, recon: np.ndarray) -> dict[str, Any]:
    """MSE and MAE on the [0, 1] pixel scale; PSNR (dB) and MS-SSIM as the codec reports them
    (aekit.metrics: per-image means; MS-SSIM over the scales that fit, one scale = SSIM)."""
    from aekit.metrics import msssim_batch, msssim_scales, psnr_batch

    if orig.shape != recon.shape:
        raise ValueError(f"originals {orig.shape} and reconstructions {recon.shape} differ in shape")
    a, b = orig.astype(np.float64) / 255, recon.astype(np.float64) / 255
    mse, mae = float(np.mean((a - b) ** 2)), float(np.mean(np.abs(a - b)))
    k = msssim_scales(*orig.shape[1:3])
    return {"n": len(orig), "scale": "pixels in [0, 1]", "mse": mse, "mae": mae,
            "psnr_db": float(np.mean(psnr_batch(orig, recon))),
            "structure": float(np.nanmean(msssim_batch(orig, recon))),
            "structure_metric": "ms-ssim" if k == 5 else f"ms-ssim ({k} scale{'s' * (k > 1)} fit)"}


def record(train_dir: str, test_dir: str, cfg: ClassifierConfig, out: Path, threads: int,
           models: list[str] = ()) -> dict[str, Any]:
    """Train (or reuse) the classifier; its accuracy on the original test images and on each model's reconstructions."""
    import platform
    import sys
    from datetime import datetime, timezone

    from aekit.machine import cpu_name

    import torch

    path = train_classifier(train_dir, out, threads=threads, cfg=cfg)
    clf = load_classifier(path)
    torch.set_num_threads(threads or torch.get_num_threads())
    images, labels, classes, _, _ = load_images(test_dir, clf.channels, 1, LoadConfig(size=cfg.size))
    if classes != clf.classes:
        raise ImageError(f"{test_dir}: classes {classes} differ from the training classes {clf.classes}")
    t0 = time.perf_counter()
    acc = classifier_accuracy(clf, images, labels)
    per_model = {}
    for m in models:
        orig, recon, y = reconstruct_folder(m, test_dir, size=cfg.size, threads=threads)
        per_model[m] = {"accuracy_on_reconstructions": classifier_accuracy(clf, recon, y),
                        "accuracy_on_originals": classifier_accuracy(clf, orig, y), **reconstruction_metrics(orig, recon)}
    return {"command": "python -m " + " ".join(["aekit.bench.classifier", *sys.argv[1:]]), "classifier": str(path),
            "test_dir": test_dir, "n_test": len(images), "test_accuracy": acc,
            "test_time_s": round(time.perf_counter() - t0, 2),
            **{k: clf.info[k] for k in ("train_dir", "n_train", "train_accuracy", "train_time_s", "threads", "config")},
            "reconstructions": per_model, "machine": cpu_name(), "python": platform.python_version(), "torch": clf.info["torch"],
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def main(argv: list[str] | None = None) -> int:
    from aekit.cli import setup_logging

    setup_logging()  # run as python -m: progress lines on stderr, as under aekit
    import argparse

    d = ClassifierConfig()
    p = argparse.ArgumentParser(prog="python -m aekit.bench.classifier", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("train", help="labelled training folder (one subfolder per class)")
    p.add_argument("test", help="labelled test folder (same classes)")
    p.add_argument("--out", default=str(DEFAULT_CACHE), help="classifier cache folder")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--max-images", type=int, default=d.max_images, help="seeded training subset (0: all)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--model", action="append", default=[],
                   help="exported model: also score its reconstructions of TEST (repeatable)")
    p.add_argument("--json", help="write the record to this JSON file")
    args = p.parse_args(argv)
    rec = record(args.train, args.test, ClassifierConfig(epochs=args.epochs, max_images=args.max_images),
                 Path(args.out), args.threads, args.model)
    print(json.dumps(rec, indent=1))
    if args.json:
        from aekit.images import atomic_write_bytes

        atomic_write_bytes(args.json, (json.dumps(rec, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
