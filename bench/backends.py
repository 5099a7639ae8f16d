"""Model runners the bench times: onnxruntime (CPU, CUDA, TensorRT) and PyTorch (eager, compiled).

    r = make_runner("ort-cuda", "fp16", model_dir, manifest, BackendOptions()); r.load(images)
    r.encode(); r.decode(); r.sync()      # device-resident stages, nothing crosses the bus
Every runner takes uint8 pixels (B, H, W, C) to float32 latents and back; inputs are
staged on the device once by load(), outputs stay there until fetch_*() copies them.
A runner that cannot start raises BackendError with one line saying why.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
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
        return OrtRunner(name, precision, manifest, opts)
    return TorchRunner(name, precision, manifest, opts, device)


def cuda_status() -> str | None:
    """None if a CUDA GPU is usable, else one line saying why not."""
    from aekit.export.runtime import gpu_visible

    if not gpu_visible():
        return "no CUDA GPU visible on this machine (no /dev/nvidia*, or CUDA_VISIBLE_DEVICES hides it)"
    return None


# ---------------------------------------------------------------- onnxruntime


def _ort_providers(name: str, precision: str, opts: BackendOptions, shapes: dict[str, str]) -> list[Any]:
    """Provider list with the options that make each provider fast (first one must be used)."""
    if name == "ort-cpu":
        return ["CPUExecutionProvider"]
    cuda = {
        "device_id": 0,
        "cudnn_conv_algo_search": opts.cudnn_search,  # benchmark every cuDNN algorithm per shape
        "cudnn_conv_use_max_workspace": "1",  # let cuDNN pick algorithms needing big workspaces
        "arena_extend_strategy": "kSameAsRequested",  # exact allocations: peak memory is meaningful
        "do_copy_in_default_stream": "1",
    }
    if opts.cuda_graph:
        cuda["enable_cuda_graph"] = "1"
    if opts.nhwc:
        cuda["prefer_nhwc"] = "1"
    if name == "ort-cuda":
        return [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
    cache = Path(opts.trt_cache or Path(tempfile.gettempdir()) / "aekit-trt-cache")
    cache.mkdir(parents=True, exist_ok=True)
    trt = {
        "device_id": 0,
        "trt_fp16_enable": precision == "fp16",  # TensorRT picks fp16 kernels from the fp32 graph
        "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache),
        "trt_builder_optimization_level": 3,
        "trt_max_workspace_size": 8 << 30,
        # one optimisation profile pinned to the benchmarked shape: no re-build per call
        "trt_profile_min_shapes": shapes["min"], "trt_profile_opt_shapes": shapes["opt"],
        "trt_profile_max_shapes": shapes["max"],
    }
    return [("TensorrtExecutionProvider", trt), ("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]


PROVIDER_OF = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider",
               "ort-trt": "TensorrtExecutionProvider"}


class OrtRunner(Runner):
    """onnxruntime on the pixel-wrapped graphs; CUDA/TensorRT use IOBinding with device OrtValues."""

    def __init__(self, name: str, precision: str, manifest: dict[str, Any], opts: BackendOptions):
        import onnxruntime as ort

        self.name, self.precision, self.opts, self.manifest = name, precision, opts, manifest
        self.device = "cpu" if name == "ort-cpu" else "cuda"
        self.notes = []
        self.ort = ort
        have = ort.get_available_providers()
        want = PROVIDER_OF[name]
        if want not in have:
            raise BackendError(f"{name}: {want} missing from this onnxruntime {ort.__version__} "
                               f"(have: {', '.join(have)})")
        if self.device == "cuda" and (why := cuda_status()):
            raise BackendError(f"{name}: {why}")
        if precision == "bf16":
            raise BackendError(f"{name}: bf16 is not offered for onnxruntime (fp32 or fp16 ONNX models; "
                               "bf16 runs with --backend torch)")
        files = manifest["files"]
        if precision == "fp16" and name != "ort-trt":
            if "encoder_fp16" not in files or "decoder_fp16" not in files:
                raise BackendError(f"{name}: {manifest['_dir']} has no fp16 ONNX files; "
                                   "re-export with `aekit export --fp16`")
            self.enc_file, self.dec_file = files["encoder_fp16"], files["decoder_fp16"]
        else:
            self.enc_file, self.dec_file = files["encoder"], files["decoder"]
        self.enc = self.dec = None
        self.shape: tuple[int, ...] | None = None
        self.bound = opts.iobinding if opts.iobinding is not None else self.device == "cuda"
        self.ov_device = "cuda" if self.device == "cuda" else "cpu"  # where the OrtValues live

    def _session(self, graph: Any, in_name: str, in_shape: tuple[int, ...]) -> Any:
        ort = self.ort
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.opts.threads:
            so.intra_op_num_threads = self.opts.threads
        dims = "x".join(map(str, in_shape))
        shapes = {k: f"{in_name}:{dims}" for k in ("min", "opt", "max")}
        providers = _ort_providers(self.name, self.precision, self.opts, shapes)
        try:
            sess = ort.InferenceSession(graph.SerializeToString(), sess_options=so, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise BackendError(f"{self.name}: session creation failed: {one_line(e)}") from None
        used = sess.get_providers()[0]
        if used != PROVIDER_OF[self.name]:
            # onnxruntime falls back silently when a provider's libraries fail to load
            raise BackendError(f"{self.name}: {PROVIDER_OF[self.name]} could not start (onnxruntime fell back "
                               f"to {used}; are its CUDA/cuDNN/TensorRT libraries installed?)")
        return sess

    def load(self, images: np.ndarray, y_hat: np.ndarray) -> None:
        import onnx

        from aekit.bench.graphs import pixel_decoder, pixel_encoder

        d = Path(self.manifest["_dir"])
        if self.enc is None or self.shape != images.shape:
            self.close()
            self.enc = self._session(pixel_encoder(onnx.load(str(d / self.enc_file)), images.shape[3]),
                                     "pixels", images.shape)
            self.dec = self._session(pixel_decoder(onnx.load(str(d / self.dec_file))), "y_hat", y_hat.shape)
            self.shape = images.shape
        # own copies: a CPU OrtValue wraps numpy memory, and update_inplace must not write into the caller's
        self.images, self.y_hat = np.array(images, order="C"), np.array(y_hat, dtype=np.float32, order="C")
        if self.bound:
            self._bind(images.shape, y_hat.shape)

    def _bind(self, img_shape: tuple[int, ...], lat_shape: tuple[int, ...]) -> None:
        """Inputs copied to the GPU once; outputs pre-allocated there (nothing crosses the bus)."""
        ov = self.ort.OrtValue
        dev = self.ov_device
        self.x_dev = ov.ortvalue_from_numpy(self.images, dev, 0)
        self.yh_dev = ov.ortvalue_from_numpy(self.y_hat, dev, 0)
        self.y_dev = ov.ortvalue_from_shape_and_type(list(lat_shape), np.float32, dev, 0)
        self.px_dev = ov.ortvalue_from_shape_and_type(list(img_shape), np.uint8, dev, 0)
        self.enc_io, self.dec_io = self.enc.io_binding(), self.dec.io_binding()
        self.enc_io.bind_ortvalue_input("pixels", self.x_dev)
        self.enc_io.bind_ortvalue_output("y", self.y_dev)
        self.dec_io.bind_ortvalue_input("y_hat", self.yh_dev)
        self.dec_io.bind_ortvalue_output("pixels", self.px_dev)

    def encode(self) -> None:
        if self.bound:
            self.enc.run_with_iobinding(self.enc_io)
        else:
            self.y = self.enc.run(None, {"pixels": self.images})[0]

    def decode(self) -> None:
        if self.bound:
            self.dec.run_with_iobinding(self.dec_io)
        else:
            self.px = self.dec.run(None, {"y_hat": self.y_hat})[0]

    def sync(self) -> None:
        if self.bound:
            self.enc_io.synchronize_outputs()
            self.dec_io.synchronize_outputs()

    def fetch_latents(self) -> np.ndarray:
        return self.enc_io.copy_outputs_to_cpu()[0] if self.bound else self.y

    def fetch_pixels(self) -> np.ndarray:
        return self.dec_io.copy_outputs_to_cpu()[0] if self.bound else self.px

    def compress(self, images: np.ndarray) -> np.ndarray:
        if self.bound:  # upload, run, download: what a real GPU pipeline pays
            self.x_dev.update_inplace(np.ascontiguousarray(images))
            self.enc.run_with_iobinding(self.enc_io)
            return self.enc_io.copy_outputs_to_cpu()[0]
        return self.enc.run(None, {"pixels": images})[0]

    def decompress(self, y_hat: np.ndarray) -> np.ndarray:
        if self.bound:
            self.yh_dev.update_inplace(np.ascontiguousarray(y_hat, dtype=np.float32))
            self.dec.run_with_iobinding(self.dec_io)
            return self.dec_io.copy_outputs_to_cpu()[0]
        return self.dec.run(None, {"y_hat": y_hat})[0]

    def peak_memory(self) -> int | None:
        """Device memory this process holds: onnxruntime's arena never shrinks, so it is the high-water
        mark of every run so far (sessions, weights, cuDNN workspaces, activations)."""
        from aekit.bench.sysinfo import process_gpu_memory_bytes

        return process_gpu_memory_bytes() if self.device == "cuda" else None

    def close(self) -> None:
        self.enc = self.dec = None


# ---------------------------------------------------------------- PyTorch


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


def one_line(e: BaseException) -> str:
    """An exception as one short line (onnxruntime messages span several)."""
    text = " ".join(str(e).split())
    return (text[:300] + " ...") if len(text) > 300 else text or type(e).__name__


OOM_MARKERS = ("out of memory", "failed to allocate memory", "cudnn_status_alloc_failed", "bad_alloc",
               "cuda_error_out_of_memory", "cudaerrormemoryallocation")


def is_oom(e: BaseException) -> bool:
    """Out of memory on host or device, whatever library raised it."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    return any(m in str(e).lower() for m in OOM_MARKERS)


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
