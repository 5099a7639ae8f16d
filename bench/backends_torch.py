"""The PyTorch runners of the bench: eager and torch.compile, on CPU or CUDA, fp32/fp16/bf16."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aekit.bench.backends import BackendError, BackendOptions, Runner
from aekit.bench.devices import cuda_status


class TorchRunner(Runner):
    """The checkpoint in PyTorch: channels_last, autocast fp16/bf16, eager or torch.compile."""

    def __init__(self, name: str, precision: str, manifest: dict[str, Any], opts: BackendOptions,
                 device: str = "cpu"):
        self.name, self.precision, self.opts, self.manifest = name, precision, opts, manifest
        self.notes = []
        try:
            import torch
        except ImportError:
            raise BackendError(f"{name}: PyTorch is not installed (pip install 'aekit[train]')") from None
        self.torch = torch
        self.device = device
        if self.device == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"{name}: torch.cuda is not available ({cuda_status() or 'torch built without CUDA'})")
        self.model = self._load_model()
        self.dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        if self.device == "cuda":
            torch.backends.cudnn.benchmark = True  # per-shape algorithm search, as ORT's EXHAUSTIVE
        if opts.threads and self.device == "cpu":
            torch.set_num_threads(opts.threads)
        self.enc_fn, self.dec_fn = self._encode_fn, self._decode_fn
        if name == "torch-compile":
            mode = opts.compile_mode or ("max-autotune" if self.device == "cuda" else "default")
            self.notes.append(f"torch.compile mode={mode}")
            self.enc_fn = torch.compile(self._encode_fn, mode=mode, dynamic=False)
            self.dec_fn = torch.compile(self._decode_fn, mode=mode, dynamic=False)

    def _load_model(self) -> Any:
        from aekit.checkpoint import CheckpointError, load_model

        ckpt = self.opts.checkpoint or self.manifest.get("training", {}).get("checkpoint")
        if not ckpt:
            raise BackendError(f"{self.name}: no PyTorch weights: the manifest names no training checkpoint; "
                               "pass --checkpoint runs/NAME/best.pt")
        if not Path(ckpt).is_file():
            raise BackendError(f"{self.name}: checkpoint {ckpt} (from the manifest) not found on this machine; "
                               "pass --checkpoint runs/NAME/best.pt")
        try:
            model, c = load_model(ckpt)
        except CheckpointError as e:
            raise BackendError(f"{self.name}: {e}") from None
        want = self.manifest.get("model_config")
        if want and c["model_config"] != want:
            raise BackendError(f"{self.name}: {ckpt} holds a different model config than {self.manifest['_dir']}")
        fmt = self.torch.channels_last
        return model.to(self.device).to(memory_format=fmt).eval()

    def _autocast(self) -> Any:
        import contextlib

        if self.dtype is None:
            return contextlib.nullcontext()
        return self.torch.autocast(self.device, dtype=self.dtype)

    def _encode_fn(self, pixels: Any) -> Any:  # uint8 (B, H, W, C) -> float32 (B, c_y, h, w)
        x = pixels.permute(0, 3, 1, 2).float() * (1 / 127.5) - 1  # NHWC storage = channels_last view
        with self._autocast():
            y = self.model.encode(x.contiguous(memory_format=self.torch.channels_last))
        return y.float()

    def _decode_fn(self, y_hat: Any) -> Any:  # float32 (B, c_y, h, w) -> uint8 (B, H, W, C)
        with self._autocast():
            x_hat = self.model.decode(y_hat.contiguous(memory_format=self.torch.channels_last))
        px = ((x_hat.float() + 1) * 127.5).round().clamp(0, 255).to(self.torch.uint8)
        return px.permute(0, 2, 3, 1)

    def load(self, images: np.ndarray, y_hat: np.ndarray) -> None:
        t = self.torch
        self.x = t.from_numpy(np.ascontiguousarray(images)).to(self.device)
        self.yh = t.from_numpy(np.ascontiguousarray(y_hat, dtype=np.float32)).to(self.device)

    def encode(self) -> None:
        with self.torch.inference_mode():
            self.y = self.enc_fn(self.x)

    def decode(self) -> None:
        with self.torch.inference_mode():
            self.px = self.dec_fn(self.yh)

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def fetch_latents(self) -> np.ndarray:
        return self.y.cpu().numpy()

    def fetch_pixels(self) -> np.ndarray:
        return np.ascontiguousarray(self.px.cpu().numpy())

    def compress(self, images: np.ndarray) -> np.ndarray:
        t = self.torch
        src = t.from_numpy(np.ascontiguousarray(images)).to(self.device)
        with t.inference_mode():
            return self.enc_fn(src).cpu().numpy()

    def decompress(self, y_hat: np.ndarray) -> np.ndarray:
        t = self.torch
        src = t.from_numpy(np.ascontiguousarray(y_hat, dtype=np.float32)).to(self.device)
        with t.inference_mode():
            return np.ascontiguousarray(self.dec_fn(src).cpu().numpy())

    def reset_peak_memory(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.reset_peak_memory_stats()

    def peak_memory(self) -> int | None:
        return int(self.torch.cuda.max_memory_allocated()) if self.device == "cuda" else None

    def close(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.empty_cache()
