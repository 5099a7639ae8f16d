"""The models a server holds: the current version (codec + detector) and earlier versions' decoders.

A `Snapshot` is immutable; `ModelStore.swap` replaces the current one under a lock, so a
request that took a snapshot finishes on the model it started with. Latent files made by an
earlier version decode as long as that version is among the last `keep_versions` on disk.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aekit.images import ImageError, load_for_channels, scan_folder
from aekit.codec.core import Codec, CodecConfig, Decoder
from aekit.detector.calibration import CalibrationError
from aekit.detector.jobs import min_side
from aekit.detector.model import DEFAULT_CLASS, Detector, DetectorError
from aekit.export.manifest import load_manifest
from aekit.serve.config import ServeConfig


class UnknownClassError(DetectorError):
    """A screening request for a class the model was not calibrated on (bad input: HTTP 422)."""


def pixel_digest(image: np.ndarray) -> str:
    """Identity of decoded pixels (shape and bytes): the same picture in any file format."""
    return hashlib.sha256(repr(image.shape).encode() + image.tobytes()).hexdigest()


@dataclass(frozen=True)
class Snapshot:
    version: int  # 0: the model the server started with; +1 per learned version swapped in
    model_dir: Path  # its folder (the operator's for version 0, the server's own after)
    model_id: str  # hash of its ONNX files (what latent files name)
    manifest: dict[str, Any]  # its manifest.json
    codec: Codec  # compresses uploads
    detector: Detector  # scores uploads (calibration in memory or in the manifest)
    decoder: Decoder  # decodes latent files of this and earlier kept versions

    @property
    def calibrated(self) -> bool:
        return bool(self.detector.calibrations_)


def load_calibration_set(cfg: ServeConfig, manifest: dict[str, Any], channels: int) -> dict[str, list[np.ndarray]]:
    """class -> normal images for calibrating every version: --calibration, else the stored sources.

    Empty when neither exists (learned versions are then uncalibrated and /v1/screen says so).
    """
    folders: list[tuple[str | None, Path]] = []
    if cfg.calibration:
        folders = [(None, Path(cfg.calibration))]
    elif manifest.get("calibration"):
        srcs = {c: v.get("source") for c, v in manifest["calibration"].get("classes", {}).items()}
        if srcs and all(s and Path(s).is_dir() for s in srcs.values()):
            folders = [(c, Path(s)) for c, s in srcs.items()]
    out: dict[str, list[np.ndarray]] = {}
    for cls, folder in folders:
        samples, _, _ = scan_folder(folder)
        for s in samples:
            label = cls or s.label or DEFAULT_CLASS
            if len(out.setdefault(label, [])) >= cfg.calibration_limit:
                continue
            try:
                out[label].append(load_for_channels(s.path, channels, cfg.max_pixels)[0])
            except ImageError:
                continue  # calibration folders are the operator's; unusable files are skipped
    if cfg.calibration and not any(out.values()):
        raise ImageError(f"{cfg.calibration}: no usable calibration image")
    return out


class ModelStore:
    """The current snapshot plus the on-disk versions; thread-safe swaps."""

    def __init__(self, cfg: ServeConfig, versions_dir: Path):
        self.cfg, self.versions_dir = cfg, versions_dir
        self.codec_cfg = CodecConfig(max_pixels=cfg.max_pixels, device=cfg.device, threads=cfg.threads,
                                     full_res_max_pixels=cfg.tile_above_pixels)
        self._lock = threading.Lock()
        base = Path(cfg.model).resolve()
        manifest = load_manifest(base)
        self.calibration_set = load_calibration_set(cfg, manifest, manifest["channels"])
        # what calibrates must never be trained on (--learn): the conformal guarantee needs unseen normals
        self.calibration_digests = {pixel_digest(im) for ims in self.calibration_set.values() for im in ims}
        self.versions: dict[str, int] = {}  # model id -> version, for every version ever served
        self._current = self._snapshot(0, base, manifest, calibrate=bool(cfg.calibration))

    @property
    def current(self) -> Snapshot:
        return self._current

    def in_calibration_set(self, image: np.ndarray) -> bool:
        return pixel_digest(image) in self.calibration_digests

    def _snapshot(self, version: int, model_dir: Path, manifest: dict[str, Any], calibrate: bool) -> Snapshot:
        codec = Codec(model_dir, self.codec_cfg)
        det = Detector(model_dir, alpha=self.cfg.alpha, device=self.cfg.device, threads=self.cfg.threads)
        det.routes  # loads a stored calibration now, not during the first request
        if calibrate and self.calibration_set:
            images = [im for ims in self.calibration_set.values() for im in ims]
            labels = [c for c, ims in self.calibration_set.items() for _ in ims]
            det.fit(images, labels)  # in memory: the operator's model folder is never written
        decoder = Decoder([model_dir, self.versions_dir, Path(self.cfg.model).resolve()], self.codec_cfg)
        decoder.share_runtime(codec.rt)  # the post-filter's fit decodes too: one decoder session for both
        self.versions[codec.model_id] = version
        return Snapshot(version, model_dir, codec.model_id, manifest, codec, det, decoder)

    def add_version(self, model_dir: Path) -> Snapshot:
        """Load, calibrate and swap in a newly exported version; the old one stays on failure."""
        manifest = load_manifest(model_dir)
        snap = self._snapshot(self._current.version + 1, model_dir, manifest, calibrate=True)
        if snap.calibrated:
            snap.detector.save()  # our own folder: the calibration travels with the version
        with self._lock:
            self._current = snap
        self.prune()
        return snap

    def prune(self) -> None:
        """Keep the newest `keep_versions` learned versions on disk (the current one always)."""
        dirs = sorted((p for p in self.versions_dir.glob("v*") if p.is_dir() and p.name[1:].isdigit()),
                      key=lambda p: int(p.name[1:]))
        for old in dirs[: max(0, len(dirs) - max(1, self.cfg.keep_versions))]:
            if old.resolve() != self._current.model_dir.resolve():
                shutil.rmtree(old, ignore_errors=True)

    def loaded(self) -> dict[str, int]:
        """model id -> version of every version whose decoder is still available."""
        have = {self._current.model_id: self._current.version,
                load_manifest(self.cfg.model)["model_id"]: 0}
        for p in self.versions_dir.glob("v*/manifest.json"):
            try:
                mid = load_manifest(p.parent)["model_id"]
            except Exception:
                continue
            have[mid] = self.versions.get(mid, -1)
        return have


def screen_one(snap: Snapshot, image: np.ndarray, cls: str | None) -> dict[str, Any]:
    """Score one uint8 (H, W, C) image against its class threshold: the /v1/screen record."""
    det = snap.detector
    h, w = image.shape[:2]
    if min(h, w) < min_side(snap.codec.factor):  # as `aekit screen` refuses it (an image of 1-2 latent units)
        raise DetectorError(f"{w}x{h} is too small to screen (the model needs at least "
                            f"{min_side(snap.codec.factor)} pixels a side)")
    if not snap.calibrated:
        raise CalibrationError(f"model version {snap.version} ({snap.model_id}) is not calibrated; "
                               "run `aekit calibrate MODEL NORMAL_DIR` or start the server with --calibration DIR")
    if not cls and len(det.classes_) > 1:
        raise DetectorError(f"model version {snap.version} is calibrated per class ({', '.join(det.classes_)}); "
                            "send the image's class as the form field or query parameter 'class'")
    label = cls or det.default_class()
    if label not in det.classes_:
        raise UnknownClassError(f"class {label!r} is unknown to model version {snap.version} "
                                f"(calibrated: {', '.join(det.classes_)})")
    cc = det.class_calibration(label)
    score = float(det.decision_function(image[None], label)[0])
    threshold = cc.threshold(det.alpha_)
    p = float(cc.p_values(np.array([score]))[0])
    anomaly = score > threshold
    score_name = det.settings(det.model_for(label))[0]
    return {"class": label, "score": score, "score_name": score_name, "threshold": None if threshold == float("inf") else threshold,
            "alpha": det.alpha_, "p_value": p, "n_calibration": cc.n, "is_anomaly": bool(anomaly),
            "verdict": "anomaly" if anomaly else "normal", "model_id": snap.model_id, "version": snap.version}
