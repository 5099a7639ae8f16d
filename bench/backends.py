"""Model runners the bench times: onnxruntime (CPU, CUDA, TensorRT) and PyTorch (eager, compiled).
This module holds what they share (names, options, the Runner interface, BackendError,
make_runner); the runners are in backends_ort.py and backends_torch.py, what the machine offers
in devices.py, failure helpers (one_line, is_oom) in failures.py.

    r = make_runner("ort-cuda", "fp16", manifest, BackendOptions(), device="cuda"); r.load(images, y_hat)
    r.encode(); r.decode(); r.sync()      # device-resident stages, nothing crosses the bus
Every runner takes uint8 pixels (B, H, W, C) to float32 latents and back; inputs are
staged on the device once by load(), outputs stay there until fetch_*() copies them.
A runner that cannot start raises BackendError with one line saying why.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

ORT_BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt")
TORCH_BACKENDS = ("torch-eager", "torch-compile")
ALL_BACKENDS = ORT_BACKENDS + TORCH_BACKENDS
PRECISIONS = ("fp32", "fp16", "bf16")


class BackendError(Exception):
    """A backend/precision that cannot run here (no GPU, missing provider, no weights ...)."""


@dataclass
class BackendOptions:
    threads: int = 0  # CPU intra-op threads (0: onnxruntime / torch default = all cores)
    checkpoint: str | None = None  # torch weights; default: the manifest's training.checkpoint
    trt_cache: str | None = None  # TensorRT engine + timing cache folder (default: <tmp>/aekit-trt-cache)
    compile_mode: str | None = None  # torch.compile mode (default: max-autotune on CUDA, default on CPU)
    cudnn_search: str = "EXHAUSTIVE"  # onnxruntime cudnn_conv_algo_search: EXHAUSTIVE | HEURISTIC | DEFAULT
    cuda_graph: bool = False  # onnxruntime CUDA graphs: one launch per run (fixed shapes + IOBinding, which we have)
    nhwc: bool = False  # onnxruntime CUDA prefer_nhwc: channels-last convs (tensor cores without transposes)
    iobinding: bool | None = None  # bind pre-allocated OrtValues (None: on CUDA/TensorRT, off on CPU)


class Runner(ABC):
    """Interface: load(images) stages inputs; encode()/decode() run on staged tensors."""

    name = "?"
    device = "cpu"
    precision = "fp32"
    notes: list[str]

    @abstractmethod
    def load(self, images: np.ndarray, y_hat: np.ndarray) -> None:
        ...

    @abstractmethod
    def encode(self) -> None:
        """Staged pixels -> latents, result kept on the device."""
        ...

    @abstractmethod
    def decode(self) -> None:
        """Staged latents -> pixels, result kept on the device."""
        ...

    @abstractmethod
    def fetch_latents(self) -> np.ndarray:
        """The last encode()'s latents as float32 host memory (B, c_y, h, w)."""
        ...

    @abstractmethod
    def fetch_pixels(self) -> np.ndarray:
        """The last decode()'s pixels as uint8 host memory (B, H, W, C)."""
        ...

    @abstractmethod
    def compress(self, images: np.ndarray) -> np.ndarray:
        """Host pixels -> host latents: upload, encode, download (the end-to-end path)."""
        ...

    @abstractmethod
    def decompress(self, y_hat: np.ndarray) -> np.ndarray:
        """Host latents -> host pixels: upload, decode, download."""
        ...

    def sync(self) -> None:
        """Wait for queued device work (no-op on CPU)."""

    def reset_peak_memory(self) -> None:
        pass

    def peak_memory(self) -> int | None:
        """Peak device memory in bytes since reset_peak_memory (None: not measurable)."""
        return None

    def close(self) -> None:
        pass


def make_runner(name: str, precision: str, manifest: dict[str, Any], opts: BackendOptions,
                device: str = "cpu") -> Runner:
    """The runner for backend `name`; torch backends run on `device` (ort ones are named by it)."""
    if name not in ALL_BACKENDS:
        raise BackendError(f"unknown backend {name!r} (have: {', '.join(ALL_BACKENDS)})")
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r} (have: {', '.join(PRECISIONS)})")
    if name in ORT_BACKENDS:
        from aekit.bench.backends_ort import OrtRunner

        return OrtRunner(name, precision, manifest, opts)
    from aekit.bench.backends_torch import TorchRunner

    return TorchRunner(name, precision, manifest, opts, device)
