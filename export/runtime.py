"""Run an exported model with onnxruntime alone: pixels -> latents -> symbols -> pixels.

    rt = Runtime("models/photos"); q = rt.quantise(rt.encode(images)); out = rt.decode(rt.dequantise(q), h, w)
Uses the CUDA provider when onnxruntime has it and a GPU is visible, else the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aekit.export.entropy import QUANTISER_INTEGER, quality_entry
from aekit.export.manifest import load_manifest
from aekit.images import from_model_output, pad_to_multiple, to_model_input


def quantise(y: np.ndarray, levels: int) -> np.ndarray:
    """y in [-1, 1] -> uint8 symbols round((y + 1) * (L - 1) / 2) in 0..L-1."""
    q = np.rint((y.astype(np.float32) + 1) * np.float32((levels - 1) / 2))
    return np.clip(q, 0, levels - 1).astype(np.uint8)


def dequantise(q: np.ndarray, levels: int) -> np.ndarray:
    """uint8 symbols -> y_hat float32 = q * 2 / (L - 1) - 1, exactly as the decoder sees them."""
    return q.astype(np.float32) * np.float32(2 / (levels - 1)) - np.float32(1)


@dataclass(frozen=True)
class Quantiser:
    """y <-> uint8 symbols, as a model's manifest defines it (two kinds).

    "tanh": y in [-1, 1], L uniform levels (see `quantise`). "integer" (rate-distortion
    models): q = clip(round(y / step), -h, h) + h with h = (L - 1) // 2 and the quality's
    step Δ; y_hat = (q - h)·Δ. The symbols are fixed once written, so the float division
    at encode time never makes decoding machine-dependent.
    """

    kind: str  # "tanh" | "integer"
    levels: int  # L: symbols 0..L-1
    step: float = 1.0  # integer kind: the quality's quantisation step of y

    @classmethod
    def of(cls, manifest: dict[str, Any], levels: int | None = None, quality: int | None = None) -> "Quantiser":
        lat = manifest["latent"]
        if lat.get("quantiser") == QUANTISER_INTEGER:
            return cls("integer", int(lat["levels"]), float(quality_entry(manifest, quality)["step"]))
        return cls("tanh", int(levels or lat["levels"]))

    @property
    def half(self) -> int:
        return (self.levels - 1) // 2

    def quantise(self, y: np.ndarray) -> np.ndarray:
        """float y (any shape) -> uint8 symbols of the same shape."""
        if self.kind == "tanh":
            return quantise(y, self.levels)
        q = np.rint(y.astype(np.float32) / np.float32(self.step))
        return (np.clip(q, -self.half, self.half) + self.half).astype(np.uint8)

    def dequantise(self, q: np.ndarray) -> np.ndarray:
        """uint8 symbols -> y_hat float32, exactly as the decoder network receives them."""
        if self.kind == "tanh":
            return dequantise(q, self.levels)
        return (q.astype(np.float32) - np.float32(self.half)) * np.float32(self.step)


def gpu_visible() -> bool:
    """A CUDA device node exists and CUDA_VISIBLE_DEVICES does not hide every device."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists() or os.name == "nt"


def select_providers(device: str = "auto") -> list[str]:
    """onnxruntime providers for device auto|cuda|cpu; cuda without a GPU is an error."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    cuda_ok = "CUDAExecutionProvider" in have and gpu_visible()
    if device == "cuda" and not cuda_ok:
        why = "no CUDA provider in this onnxruntime" if "CUDAExecutionProvider" not in have else "no GPU visible"
        raise RuntimeError(f"--device cuda asked for, but {why} (providers: {', '.join(have)})")
    if device in ("auto", "cuda") and cuda_ok:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def make_session(path: str | Path, providers: list[str], threads: int = 0) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: the CPU fallback warning is expected
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


class Runtime:
    """An exported autoencoder: encode/decode numpy batches exactly as at export time."""

    def __init__(self, model_dir: str | Path, device: str = "auto", threads: int = 0):
        self.manifest = load_manifest(model_dir)
        m = self.manifest
        self.dir = Path(m["_dir"])
        self.model_id: str = m["model_id"]
        self.channels: int = m["channels"]
        self.factor: int = m["factor"]
        self.ratio: int = m["ratio"]
        self.latent_channels: int = m["latent_channels"]
        self.levels: int = m["latent"]["levels"]
        self.quantiser = Quantiser.of(m)  # the model's default (levels, quality)
        self.providers = select_providers(device)
        self.encoder = make_session(self.dir / m["files"]["encoder"], self.providers, threads)
        self.decoder = make_session(self.dir / m["files"]["decoder"], self.providers, threads)

    @property
    def device(self) -> str:
        return "cuda" if self.encoder.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.factor
        return (self.latent_channels, -(-height // f), -(-width // f))

    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 (B, H, W, C) -> y float32 (B, c_y, ceil(H/f), ceil(W/f)) (in [-1, 1] for tanh models)."""
        if images.ndim != 4 or images.shape[3] != self.channels:
            raise ValueError(f"expected (B, H, W, {self.channels}) images, got shape {images.shape}")
        x = pad_to_multiple(to_model_input(images), self.factor)
        return self.encoder.run(None, {"x": x})[0]

    def quantise(self, y: np.ndarray) -> np.ndarray:
        """y -> uint8 symbols with the model's default quantiser (see `Quantiser`)."""
        return self.quantiser.quantise(y)

    def dequantise(self, q: np.ndarray) -> np.ndarray:
        """uint8 symbols of the default quantiser -> y_hat float32 (see `Quantiser`)."""
        return self.quantiser.dequantise(q)

    def decode(self, y_hat: np.ndarray, height: int | None = None, width: int | None = None) -> np.ndarray:
        """y_hat (B, c_y, h, w) -> uint8 (B, H, W, C), cropped to height x width if given."""
        x_hat = self.decoder.run(None, {"y_hat": np.ascontiguousarray(y_hat, dtype=np.float32)})[0]
        out = from_model_output(x_hat)
        return out[:, :height, :width] if height or width else out

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """Full round trip through 8-bit latents: uint8 (B, H, W, C) -> uint8 (B, H, W, C)."""
        h, w = images.shape[1:3]
        return self.decode(self.dequantise(self.quantise(self.encode(images))), h, w)
