"""Online learning: a background thread trains a PyTorch copy of the model on accepted uploads.

Uploads arrive on a bounded queue (`offer` never blocks: a full queue drops the image and
counts it). The worker trains on single images or mini-batches as they arrive (torch, one
thread), and at intervals exports a new ONNX version with aekit.export.onnx.export_model (parity
checked) into the server's folder and swaps it in; a failed update keeps the last good model.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aekit.serve.config import ServeConfig
from aekit.serve.models import ModelStore

log = logging.getLogger(__name__)


@dataclass
class LearnStatus:
    enabled: bool = False  # --learn given
    accepted: int = 0  # uploads put on the training queue
    dropped: int = 0  # uploads dropped because the queue was full
    trained: int = 0  # images trained on
    steps: int = 0  # optimiser steps
    running_loss: float | None = None  # exponential moving average of the training MSE (pixels in [-1, 1])
    exports: int = 0  # versions exported and swapped in
    failed_exports: int = 0  # updates that failed (the last good model stayed)
    last_error: str | None = None  # why the last update failed
    last_swap: str | None = None  # UTC time of the last swap
    queued: int = 0  # images waiting now


class Learner:
    """Queue + worker thread. `offer(image)` from request threads; `start()`/`stop()` from the app."""

    def __init__(self, cfg: ServeConfig, store: ModelStore, workdir: Path):
        self.cfg, self.store, self.workdir = cfg, store, workdir
        self.queue: queue.Queue[np.ndarray] = queue.Queue(maxsize=cfg.queue_size)
        self.status = LearnStatus(enabled=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aekit-learner", daemon=True)
        self._count_lock = threading.Lock()
        self.ckpt_path = Path(cfg.checkpoint or store.current.manifest.get("training", {}).get("checkpoint") or "")
        if not self.ckpt_path.is_file():
            raise FileNotFoundError(
                f"--learn needs the model's PyTorch checkpoint: {self.ckpt_path or '(none named)'} not found "
                f"(the manifest of {cfg.model} names it under training.checkpoint); pass --checkpoint PATH")

    def offer(self, image: np.ndarray) -> bool:
        """Queue a uint8 (H, W, C) image for training; False (and counted) when the queue is full."""
        try:
            self.queue.put_nowait(image)
        except queue.Full:
            with self._count_lock:
                self.status.dropped += 1
            return False
        with self._count_lock:
            self.status.accepted += 1
        return True

    def snapshot(self) -> dict[str, Any]:
        self.status.queued = self.queue.qsize()
        return asdict(self.status)

    def start(self) -> None:
        self.load()  # load the checkpoint in the caller: a bad one stops the server at start
        self._thread.start()

    def stop(self, timeout: float = 300.0) -> None:
        """Stop after the current step or export: an export cut short would leave torch.onnx mid-export
        for the next one in this process (seen as a flaky failure under load). Waits up to `timeout` s."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning(f"learner still busy after {timeout:.0f} s; leaving it to finish in the background")

    # ---- worker ------------------------------------------------------------------------
    def load(self) -> None:
        """Load the checkpoint into a trainable PyTorch model with its optimiser (torch imported here)."""
        import torch

        from aekit.checkpoint import load_model

        torch.set_num_threads(1)  # requests run on onnxruntime; training takes one core at most
        self.model, self.base_ckpt = load_model(self.ckpt_path)
        self.model = self.model.float().train()
        # rate-distortion models keep their training objective, MSE + λ·bits: with MSE alone the latents drift
        # off the prior and every learned version's files grow
        train_cfg = self.base_ckpt.get("train_config") or {}
        self.rate_weight = float(train_cfg.get("rate_weight") or 0.0) if self.model.cfg.rd else 0.0
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr)
        self.rng = np.random.default_rng(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)

    def _run(self) -> None:
        last_swap, steps_since = time.monotonic(), 0
        while not self._stop.is_set():
            batch = self._take()
            if batch:
                for group in self._groups(batch):
                    self._step(group)
                    steps_since += 1
            if self._stop.is_set():
                break
            if steps_since >= self.cfg.swap_min_steps and time.monotonic() - last_swap >= self.cfg.swap_every_s:
                self.update()
                last_swap, steps_since = time.monotonic(), 0

    def _take(self) -> list[np.ndarray]:
        """Up to batch_size images: wait briefly for the first, take the rest only if already queued."""
        try:
            items = [self.queue.get(timeout=0.2)]
        except queue.Empty:
            return []
        while len(items) < self.cfg.batch_size:
            try:
                items.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _groups(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Crop each image to at most crop x crop (random position), then stack images of equal size."""
        c = self.cfg.crop
        by_shape: dict[tuple, list[np.ndarray]] = {}
        for im in images:
            h, w = im.shape[:2]
            top = int(self.rng.integers(0, h - c + 1)) if h > c else 0
            left = int(self.rng.integers(0, w - c + 1)) if w > c else 0
            im = im[top:top + c, left:left + c]
            by_shape.setdefault(im.shape, []).append(im)
        return [np.stack(v) for v in by_shape.values()]

    def _step(self, batch: np.ndarray) -> None:
        """One Adam step on uint8 (B, H, W, C) with the training quantisation proxy: MSE, plus the run's
        λ·bits per pixel for rate–distortion models (the rate under their own entropy model)."""
        import torch

        from aekit.images import to_model_input

        x = torch.from_numpy(to_model_input(batch))  # (B, C, H, W) in [-1, 1]
        out = self.model(x)
        loss = torch.mean((out.x_hat - x) ** 2)
        if self.rate_weight:
            loss = loss + self.rate_weight * self.model.rate_bpp(out, x.shape[0] * x.shape[2] * x.shape[3])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        v = float(loss.detach())
        s = self.status
        s.running_loss = v if s.running_loss is None else 0.9 * s.running_loss + 0.1 * v
        s.steps += 1
        s.trained += len(batch)

    def update(self) -> bool:
        """Export the current weights as a new version and swap it in; False (old model kept) on failure."""
        version = self.store.current.version + 1
        out = self.workdir / "versions" / f"v{version}"
        try:
            ckpt = self._save_checkpoint(version)
            from aekit.export.onnx import export_model

            export_model(ckpt, out, force=True)
            self.store.add_version(out)
            ckpt.unlink(missing_ok=True)
        except Exception as e:  # any failure: keep serving the last good model
            self.status.failed_exports += 1
            self.status.last_error = f"version {version}: {type(e).__name__}: {e}"
            log.error("aekit serve: update failed, keeping version %s: %s", self.store.current.version,
                      self.status.last_error, exc_info=True)
            shutil.rmtree(out, ignore_errors=True)
            return False
        self.status.exports += 1
        self.status.last_swap = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return True

    def _save_checkpoint(self, version: int) -> Path:
        """The current weights as a checkpoint export_model accepts (config, weights, histogram, summary)."""
        from aekit.checkpoint import save_checkpoint

        b = self.base_ckpt
        summary = {**b.get("summary", {}), "online": {"version": version, "base": str(self.ckpt_path),
                                                      "images": self.status.trained, "steps": self.status.steps}}
        payload = {"model_config": b["model_config"], "train_config": b.get("train_config", {}),
                   "state_dict": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                   "latent_hist": b["latent_hist"], "summary": summary, "classes": b.get("classes", [])}
        return save_checkpoint(self.workdir / "checkpoints" / f"v{version}.pt", payload)
