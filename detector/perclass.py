"""Train one autoencoder per class and gather them in a detector directory (needs torch).

    aekit detector train-per-class data/normal --out models/det --epochs 10
For each subfolder of DATA: hold out a seeded --cal-fraction for calibration, train on the rest,
export to OUT/<class>/ (ONNX + manifest), calibrate on the hold-out; OUT/detector.json routes
each class to its model, so `aekit screen OUT mixed/` scores each subfolder with its own model.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aekit.images import ImageError, Sample, scan_folder
from aekit.detector.jobs import load_for_model
from aekit.detector.model import Detector, DetectorError, save_detector_manifest

log = logging.getLogger(__name__)


@dataclass
class PerClassConfig:
    cal_fraction: float = 0.1  # of each class held out (never trained on) to calibrate its threshold
    alpha: float | None = None  # false-positive rate stored with the calibration (None: what the hold-out allows)
    score: str | None = None  # score spec (None: aekit.detector.model.DEFAULT_SCORE)
    noise: str = "defects:0.9"  # synthetic local defects on 90% of inputs, clean targets (best measured, RESULTS.md)
    ratio: int = 4  # latent ratio 1/N: with defect training the wider latent repairs defects (best measured)
    width: int = 32  # model width (small: one model per class)
    blocks: int = 1  # extra conv blocks at latent resolution
    epochs: int = 80  # longer training sharpens normal detail: 80 beat 40 on local defects (sneaker recall 75 -> 83 %, RESULTS.md)
    batch_size: int = 64
    lr: float = 2e-3
    loss: str = "mse"
    size: int = 0  # 0: train on images as they are (one size); N: random N x N crops at native scale
    channels: int | None = None  # None: from the first image
    seed: int = 0  # seeds the calibration split, weights and batches


def split_holdout(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Seeded (train, calibration) split of one class's samples; calibration gets >= 1 image."""
    order = np.random.default_rng([seed, 4242]).permutation(len(samples))
    n_cal = min(len(samples) - 1, max(1, int(round(len(samples) * fraction))))
    return [samples[i] for i in sorted(order[n_cal:])], [samples[i] for i in sorted(order[:n_cal])]


def link_folder(samples: list[Sample], dest: Path) -> Path:
    """A folder of symlinks (copies where links are refused) to the training images."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for k, s in enumerate(samples):
        link = dest / f"{k:07d}_{s.path.name}"  # unique even when nested names repeat
        try:
            os.symlink(s.path, link)
        except OSError:
            shutil.copy2(s.path, link)
    return dest


def train_class(cls: str, train_s: list[Sample], cal_s: list[Sample], out: Path, runs: Path,
                cfg: PerClassConfig, channels: int) -> dict[str, Any]:
    """Train, export and calibrate the model of one class; returns its detector.json entry."""
    from aekit.config import ModelConfig
    from aekit.data import DataConfig
    from aekit.train import TrainConfig, train
    from aekit.export.onnx import export_model

    data = link_folder(train_s, runs / cls / "train")
    dcfg = DataConfig(resize="random-crop", size=cfg.size) if cfg.size else DataConfig(resize="none")
    mcfg = ModelConfig(channels=channels, ratio=cfg.ratio, width=cfg.width, blocks=cfg.blocks)
    tcfg = TrainConfig(data=str(data), out=str(runs / cls / "run"), epochs=cfg.epochs, batch_size=cfg.batch_size,
                       lr=cfg.lr, loss=cfg.loss, noise=cfg.noise, seed=cfg.seed, data_cfg=dcfg)
    summary = train(tcfg, mcfg)
    model = export_model(runs / cls / "run" / "best.pt", out / cls, force=True)
    det = Detector(model, score=cfg.score, alpha=cfg.alpha)
    if det.needs_reference(det.routes[None]):  # banks / normalisers fit on the training images: all of the hold-out calibrates
        det.fit_reference(_load_images(train_s, channels, mcfg.factor), cls)
    images = _load_images(cal_s, channels, mcfg.factor)
    det.fit(images, cls)
    det.calibrations_[det.routes[None]].classes[cls].source = "held out of " + str(Path(cal_s[0].path).parent)
    det.save()
    return {"model": cls, "model_id": det.runtime(det.routes[None]).model_id, "n_train": summary["n_train"],
            "n_val": summary["n_val"], "n_calibration": len(images), "best_val_psnr": summary["best_val_psnr"],
            "threshold": _finite(det.thresholds_[cls])}


def _load_images(samples: list[Sample], channels: int, factor: int) -> list[np.ndarray]:
    """The decodable images of samples (each unusable file logged and skipped)."""
    images = []
    for s in samples:
        try:
            images.append(load_for_model(s.path, channels, factor))
        except ImageError as e:
            log.warning("skipped %s", e)
    return images


def _finite(x: float) -> float | None:
    return None if np.isinf(x) else float(x)


def train_per_class(data: str | Path, out: str | Path, cfg: PerClassConfig, runs: str | Path | None = None,
                    force: bool = False) -> tuple[Path, list[str]]:
    """Train every class of DATA; returns (detector directory, failure messages)."""
    from aekit.cli import guess_channels

    out = Path(out)
    if out.exists() and not force:
        raise DetectorError(f"{out}: already exists; pass --force to replace it")
    samples, classes, _ = scan_folder(data)
    if not classes:
        raise ImageError(f"{data}: needs one subfolder of normal images per class (found a flat folder)")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    runs = Path(runs) if runs else Path("runs") / out.name
    channels = cfg.channels or guess_channels(str(data))
    entries, failed = {}, []
    for cls in classes:
        mine = [s for s in samples if s.label == cls]
        if len(mine) < 3:
            failed.append(f"class {cls!r}: {len(mine)} image(s) in {Path(data) / cls}; need at least 3 (skipped)")
            continue
        train_s, cal_s = split_holdout(mine, cfg.cal_fraction, cfg.seed)
        log.info("== class %s: %d training, %d calibration images", cls, len(train_s), len(cal_s))
        try:
            entries[cls] = train_class(cls, train_s, cal_s, out, runs, cfg, channels)
        except (ImageError, ValueError) as e:
            failed.append(f"class {cls!r}: {e}")
    if not entries:
        raise ImageError(f"{data}: no class could be trained ({'; '.join(failed)})")
    save_detector_manifest(out, entries, {"data": str(Path(data).resolve()), "config": asdict(cfg)})
    return out, failed


def assemble(out: str | Path, models: dict[str, str | Path], force: bool = False) -> Path:
    """Copy exported per-class model folders (e.g. from `aekit train` + `aekit export`) into a
    detector directory OUT/<class>/ and write OUT/detector.json routing each class to its copy."""
    from aekit.export.manifest import load_manifest

    out = Path(out)
    if out.exists() and not force:
        raise DetectorError(f"{out}: already exists; pass --force to replace it")
    manifests = {c: load_manifest(m) for c, m in models.items()}  # every folder checked before writing
    channels = {m["channels"] for m in manifests.values()}
    if len(channels) > 1:
        raise DetectorError(f"models mix {sorted(channels)}-channel inputs; a detector takes one kind of image")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for c, m in models.items():
        shutil.copytree(m, out / c)
    entries = {c: {"model": c, "model_id": manifests[c]["model_id"], "source": str(Path(models[c]).resolve())}
               for c in models}
    save_detector_manifest(out, entries, {"assembled": True})
    return out
