"""The state behind the app and the work of each endpoint: `Server` (config, work folder, model store,
optional learner) decodes uploads from memory and runs compress, decompress, reconstruct, screen,
analyze and learn in a worker thread; it knows nothing of HTTP beyond ApiError's status.
"""

from __future__ import annotations

import base64
import io
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from aekit.images import ImageLimitError, NamedBytes, atomic_write_bytes, load_for_channels
from aekit.metrics import psnr
from aekit.codec.jobs import encode_image_file
from aekit.detector.calibration import CalibrationError
from aekit.detector.model import DetectorError
from aekit.export.manifest import ModelError
from aekit.serve.config import ServeConfig
from aekit.serve.errors import ApiError
from aekit.serve.models import ModelStore, Snapshot, screen_one
from aekit.serve.uploads import LATENT_TYPES, SUFFIX, Upload, sniff_image


class Server:
    """State behind the app: config, work folder, model store, optional learner, counters."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.own_workdir = cfg.workdir is None
        self.workdir = Path(cfg.workdir or tempfile.mkdtemp(prefix="aekit-serve-")).resolve()
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        (self.workdir / "versions").mkdir(exist_ok=True)
        self.store = ModelStore(cfg, self.workdir / "versions")
        self.keep = Path(cfg.keep_uploads).resolve() if cfg.keep_uploads else None
        if self.keep:
            self.keep.mkdir(parents=True, exist_ok=True)
        self.learner = None
        if cfg.learn:
            from aekit.serve.learn import Learner

            self.learner = Learner(cfg, self.store, self.workdir)
        self.started = time.time()

    def close(self) -> None:
        if self.learner:
            self.learner.stop()
        if self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def decode_image(self, up: Upload, snap: Snapshot) -> tuple[np.ndarray, str]:
        """Upload -> (uint8 (H, W, C), mode) for the snapshot's model, decoded from memory."""
        kind = sniff_image(up)
        image, mode = load_for_channels(NamedBytes(up.data, up.name), snap.codec.channels, self.cfg.max_pixels)
        if self.keep:
            atomic_write_bytes(self.keep / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}{SUFFIX[kind]}",
                               up.data)
        return image, mode

    def learn(self, up: Upload) -> dict[str, Any]:
        """An image the operator marks as normal -> the training queue (the only way images get there)."""
        if not self.learner:
            raise ApiError(409, "online learning is off; start the server with --learn")
        image, _ = self.decode_image(up, self.store.current)
        if self.store.in_calibration_set(image):
            raise ApiError(409, f"{up.name}: this image is in the calibration set; images the model trains on "
                                "must not calibrate it (the false-positive guarantee needs unseen normals)")
        queued = self.learner.offer(image)
        return {"name": up.name, "queued": queued, "learning": self.learner.snapshot()}

    def status(self) -> dict[str, Any]:
        snap = self.store.current
        return {"version": snap.version, "model_id": snap.model_id, "calibrated": snap.calibrated,
                "classes": snap.detector.classes_ if snap.calibrated else [],
                "channels": snap.codec.channels, "ratio": snap.manifest["ratio"],
                "learning": self.learner.snapshot() if self.learner else {"enabled": False},
                "loaded_versions": {str(v): mid for mid, v in sorted(self.store.loaded().items(), key=lambda kv: kv[1])},
                "uptime_s": round(time.time() - self.started, 1),
                "limits": {"max_upload_bytes": self.cfg.max_upload_bytes, "max_pixels": self.cfg.max_pixels,
                           "request_timeout_s": self.cfg.request_timeout_s, "queue_size": self.cfg.queue_size}}

    # ---- the work of each endpoint (runs in a worker thread) ------------------------------
    def compress(self, up: Upload) -> tuple[bytes, Snapshot]:
        snap = self.store.current
        image, mode = self.decode_image(up, snap)
        return snap.codec.compress(image, mode), snap

    def decompress(self, up: Upload) -> tuple[bytes, int]:
        if up.content_type not in LATENT_TYPES:
            raise ApiError(415, f"{up.name}: content type {up.content_type} refused; send the .ael file "
                                "as application/octet-stream")
        from aekit.codec.format import read_header

        snap = self.store.current
        h = read_header(up.data, up.name)  # the declared size, checked before any decoding work
        if h.width * h.height > self.cfg.max_pixels:
            raise ImageLimitError(f"{up.name}: declares a {h.width}x{h.height} image, above this server's limit "
                                  f"of {self.cfg.max_pixels} pixels")
        try:
            image, header = snap.decoder.decompress(up.data, up.name)
        except ModelError:
            mid = h.model_id
            loaded = ", ".join(f"version {v} ({m})" for m, v in sorted(self.store.loaded().items(), key=lambda kv: kv[1]))
            was = self.store.versions.get(mid)
            made = f"model version {was} ({mid}), no longer loaded" if was is not None else f"model {mid}, not served here"
            raise ApiError(409, f"{up.name}: latent file made by {made}; loaded: {loaded}") from None
        return encode_image_file(image, Path("x.png")), self.store.versions.get(header.model_id, -1)

    def reconstruct(self, up: Upload) -> tuple[np.ndarray, np.ndarray, bytes, Snapshot]:
        snap = self.store.current
        image, mode = self.decode_image(up, snap)
        latent = snap.codec.compress(image, mode)
        out, _ = snap.decoder.decompress(latent, up.name)
        return image, out, latent, snap

    def screen(self, up: Upload) -> dict[str, Any]:
        snap = self.store.current
        image, _ = self.decode_image(up, snap)  # (H, W, model channels): gray is replicated for RGB models
        rec = screen_one(snap, image, up.fields.get("class") or None)
        if up.fields.get("maps", "").lower() in ("1", "true", "yes"):  # ?maps=1: the anomaly map too
            rec["map"] = anomaly_map_record(snap, image, rec["class"])
        return rec

    def analyze(self, up: Upload) -> dict[str, Any]:
        """Everything the page shows for one upload, in one JSON answer."""
        image, out, latent, snap = self.reconstruct(up)
        try:
            screening: dict[str, Any] = screen_one(snap, image, up.fields.get("class") or None)
        except (CalibrationError, DetectorError) as e:
            screening = {"error": str(e), "calibrated": snap.calibrated}
        h, w, c = image.shape
        name = up.name.rsplit(".", 1)[0] + ".ael"
        return {"name": up.name, "width": w, "height": h, "channels": c, "upload_bytes": len(up.data),
                "raw_bytes": h * w * c, "latent_bytes": len(latent), "latent_name": name,
                "ratio": round(h * w * c / len(latent), 2), "psnr": round(psnr(image, out), 2),
                "reconstruction_png": base64.b64encode(encode_image_file(out, Path("x.png"))).decode(),
                "latent": base64.b64encode(latent).decode(),
                "screen": screening, "model_id": snap.model_id, "version": snap.version}


def anomaly_map_record(snap: Snapshot, image: np.ndarray, cls: str) -> dict[str, Any]:
    """The per-pixel anomaly map of the calibrated score: shape, colour scale, PNG overlay
    ([image | map | colour scale]) and the raw float32 map as .npy bytes, both base64."""
    from aekit.detector.heatmap import map_panel

    det = snap.detector
    m = det.anomaly_maps(image[None], cls)[0]  # (H, W)
    scale = det.class_calibration(cls).map_scale
    buf = io.BytesIO()
    np.save(buf, m.astype(np.float32))
    return {"height": int(m.shape[0]), "width": int(m.shape[1]), "scale": scale, "max": float(m.max()),
            "png": base64.b64encode(encode_image_file(map_panel(image, m, scale), Path("x.png"))).decode(),
            "npy": base64.b64encode(buf.getvalue()).decode()}
