"""The onnxruntime runners of the bench: CPU, CUDA (IOBinding, CUDA graphs) and TensorRT providers."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from aekit.bench.backends import BackendError, BackendOptions, Runner
from aekit.bench.devices import cuda_status
from aekit.bench.failures import one_line


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
