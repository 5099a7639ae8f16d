"""Run an exported model with onnxruntime alone: pixels -> latents -> symbols -> pixels.

    rt = Runtime("models/photos"); q = rt.quantise(rt.encode(images)); out = rt.decode(rt.dequantise(q), h, w)
Uses the CUDA provider when onnxruntime has it and a GPU is visible, else the CPU. On CPU each
session runs one intra-op thread with spinning off (parallelism comes from workers over images and
tiles), sessions are cached per process, and `Runtime.estimate` gives the host bytes of a call so
callers can size batches and tiles to a memory budget (`MemoryGate`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from aekit.export.entropy import QUANTISER_INTEGER, RESIDUAL_SCALE, quality_entry
from aekit.export.manifest import load_manifest
from aekit.images import from_model_output, pad_to_multiple, to_model_input
from aekit.machine import usable_cores

log = logging.getLogger(__name__)


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

    def residual(self, y: np.ndarray) -> np.ndarray:
        """Integer quantiser: float y (any shape) -> int8 round(254·δ), δ = y/Δ − round(y/Δ) in [−0.5, 0.5]
        (0 where the symbol is clipped): where y lay inside its quantisation bin, for RDOQ
        (aekit.export.entropy.rdoq_choose). ValueError for a tanh quantiser."""
        if self.kind != "integer":
            raise ValueError("residuals exist for the integer quantiser only")
        r = y.astype(np.float32) / np.float32(self.step)
        k = np.rint(r)
        d = np.where(np.abs(k) > self.half, np.float32(0), r - k)
        return np.rint(d * np.float32(RESIDUAL_SCALE)).astype(np.int8)

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


def session_options(threads: int = 1, profile_prefix: str | None = None, no_int8_kernels: bool = False) -> Any:
    """onnxruntime SessionOptions as aekit runs them on CPU: `threads` intra-op threads (0: every
    usable core), one inter-op thread, spinning off, no memory-pattern pre-allocation.

    Why: on shared cores a spinning thread pool steals the other workers' time (2 threads ran the
    photo decoder slower than 1, issue 17), so parallelism comes from workers over images and tiles
    instead; the memory pattern pre-allocates every activation of a call at once (about 1.8x the
    arena peak without it, same speed), which would break the byte budget of `ActivationPlanner`.
    no_int8_kernels: basic graph optimisations only, so a QDQ int8 network runs as fp32 convolutions between
    its quantise/dequantise steps instead of onnxruntime's fused integer kernels (`int8_saturates`).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if no_int8_kernels:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3  # errors only: the CPU fallback warning is expected
    opts.intra_op_num_threads = threads if threads > 0 else usable_cores()
    opts.inter_op_num_threads = 1
    opts.enable_mem_pattern = False
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return opts


def make_session(path: str | Path, providers: list[str], threads: int = 1, no_int8_kernels: bool = False) -> Any:
    """A new onnxruntime session of an ONNX file with `session_options(threads, …)` (not cached)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), sess_options=session_options(threads, no_int8_kernels=no_int8_kernels),
                                providers=providers)


SESSION_CACHE_SIZE = 8  # sessions kept per process (a model is two: encoder and decoder)
_sessions: "OrderedDict[tuple, Any]" = OrderedDict()
_sessions_lock = threading.Lock()


def cached_session(path: str | Path, providers: list[str], threads: int = 1, no_int8_kernels: bool = False) -> Any:
    """The session of an ONNX file, loaded once per process (LRU of SESSION_CACHE_SIZE).

    Keyed by the resolved path, the file's mtime and size, the providers and the thread count,
    so a re-exported model is loaded again. onnxruntime sessions are safe to run from several
    threads at once. Raises what onnxruntime raises for a missing or invalid file.
    """
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_mtime_ns, st.st_size, tuple(providers), threads, no_int8_kernels)
    with _sessions_lock:
        if key in _sessions:
            _sessions.move_to_end(key)
            return _sessions[key]
    sess = make_session(p, providers, threads, no_int8_kernels)  # outside the lock: loading takes a while
    with _sessions_lock:
        sess = _sessions.setdefault(key, sess)
        _sessions.move_to_end(key)
        while len(_sessions) > SESSION_CACHE_SIZE:
            _sessions.popitem(last=False)
    return sess


class SessionPool:
    """Sessions of one ONNX file for calls running at once: each call takes an idle session (the
    cached one first, another made when all are busy) and gives it back.

    Why not one session for every thread: onnxruntime allows concurrent runs, but they share the
    session's memory arena, whose interleaved allocations grew to 2.5x one call's bytes (1330 MB
    instead of ~800 MB for two 588² photos-r9 decoder tiles); a session per concurrent call keeps
    each arena at one call's size. There are never more sessions than calls that ran at once.
    """

    def __init__(self, path: str | Path, providers: list[str], threads: int = 1, no_int8_kernels: bool = False):
        self.path, self.providers, self.threads, self.no_int8_kernels = Path(path), providers, threads, no_int8_kernels
        self.first = cached_session(path, providers, threads, no_int8_kernels)
        self._idle, self._lock, self.size = [self.first], threading.Lock(), 1

    @contextmanager
    def session(self) -> Iterator[Any]:
        with self._lock:
            sess = self._idle.pop() if self._idle else None  # the last returned: its arena is warm
            if sess is None:
                self.size += 1
        if sess is None:
            sess = make_session(self.path, self.providers, self.threads, self.no_int8_kernels)
        try:
            yield sess
        finally:
            with self._lock:
                self._idle.append(sess)

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self.session() as sess:
            return sess.run(None, feed)

    def release(self, feed: dict[str, np.ndarray]) -> None:
        """Give the idle sessions' arena memory back (`release_arena`, one tiny run each)."""
        with self._lock:
            idle = list(self._idle)
        for sess in idle:
            release_arena(sess, feed)


def release_arena(sess: Any, feed: dict[str, np.ndarray]) -> None:
    """One run of a tiny `feed` with onnxruntime's arena shrinkage on, which frees the CPU arena's unused
    chunks: a session otherwise keeps its largest call's activations (hundreds of MB after a large
    image's tiles) for the life of the process. Shrinking on every run would cost 1.1-1.7x per call
    (measured on photos-r4), so the codec calls this once after a tiled image. No-op off the CPU."""
    import onnxruntime as ort

    if sess.get_providers()[0] != "CPUExecutionProvider":
        return
    opts = ort.RunOptions()
    opts.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    sess.run(None, feed, opts)


def clear_session_cache() -> None:
    """Forget every cached session (tests; a long-lived process that wants the memory back)."""
    with _sessions_lock:
        _sessions.clear()


ARENA_GROWTH = 2.0  # onnxruntime's CPU arena grows by doubling: peak RSS ~ 2x the live bytes it reports
HOST_BYTES_PER_PIXEL = 32  # numpy around a call: float32 input and output (4 B x C each) and uint8 copies
PROBE_SIDES = (8, 16)  # latent sides of the two profiled probe calls (f x 8 and f x 16 pixels)


@dataclass(frozen=True)
class ActivationEstimate:
    """Bytes one model call needs on the host, as a function of the pixels it covers.

    bytes(pixels) = fixed + per_pixel * pixels. Found from onnxruntime's own memory profile of two
    small probe calls (per node, the larger of the arena's peak bytes in use and ARENA_GROWTH times the
    live tensor bytes; the slope and intercept of the graph's maximum between the two sizes), plus
    HOST_BYTES_PER_PIXEL for the arrays around the call. Live bytes alone missed a ConvTranspose
    decoder's workspace (photos-r9 re-exported: 800 B/px estimated, 1.1 KB/px measured); this rule gives
    1.26 KB/px for it, and 1.06 / 0.8 KB/px for the pixel-shuffle decoder / encoder measured at 1.05 / 0.62.
    """

    fixed: int  # bytes, independent of the call's size
    per_pixel: float  # bytes per image pixel (input pixels for the encoder, output pixels for the decoder)

    def bytes(self, pixels: int) -> int:
        return int(self.fixed + self.per_pixel * pixels)


_estimates: dict[tuple, ActivationEstimate] = {}
_estimates_lock = threading.Lock()


def _profiled_peak(path: Path, feed: dict[str, np.ndarray]) -> int:
    """Peak live bytes onnxruntime reports while running feed through the file's graph once."""
    import onnxruntime as ort

    tmp = tempfile.mkdtemp(prefix="aekit-profile-")
    try:
        sess = ort.InferenceSession(str(path), sess_options=session_options(1, os.path.join(tmp, "p")),
                                    providers=["CPUExecutionProvider"])
        sess.run(None, feed)
        with open(sess.end_profiling(), encoding="utf-8") as fh:
            events = json.load(fh)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    peak = 0
    for e in events:
        a = e.get("args") or {}
        if e.get("cat") == "Node":  # the arena's peak in use, or twice the live tensors (arena doubling)
            live = a.get("mem_bytes_requested_in_use")
            live = ARENA_GROWTH * int(live) if live is not None else 4 * int(a.get("output_size", 0))
            peak = max(peak, int(a.get("mem_in_use_peak", 0)), int(live))
    return peak


def estimate_activation(path: str | Path, input_name: str, shape_of: Any, pixels_of: Any) -> ActivationEstimate:
    """ActivationEstimate of one ONNX graph (cached per resolved path, mtime and size).

    shape_of(n) gives the probe input's shape for latent side n, pixels_of(n) the image pixels it covers.
    """
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_mtime_ns, st.st_size)
    with _estimates_lock:
        if key in _estimates:
            return _estimates[key]
        if (hit := _disk_estimates().get(_disk_key(key))) is not None:
            _estimates[key] = ActivationEstimate(int(hit[0]), float(hit[1]))
            return _estimates[key]
    (n1, n2) = PROBE_SIDES
    b1 = _profiled_peak(p, {input_name: np.zeros(shape_of(n1), dtype=np.float32)})
    b2 = _profiled_peak(p, {input_name: np.zeros(shape_of(n2), dtype=np.float32)})
    px1, px2 = pixels_of(n1), pixels_of(n2)
    slope = max((b2 - b1) / (px2 - px1), 0.0, b2 / px2 * 0.5)
    est = ActivationEstimate(int(max(b1 - slope * px1, 0)), slope + HOST_BYTES_PER_PIXEL)
    with _estimates_lock:
        _estimates[key] = est
        _save_disk_estimate(_disk_key(key), est)
    return est


def estimates_file() -> Path:
    """Where probed estimates persist between runs: $XDG_CACHE_HOME/aekit (else ~/.cache/aekit)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aekit" / "activation-estimates.json"


def _disk_key(key: tuple) -> str:
    import onnxruntime as ort

    return "|".join(map(str, (*key, ort.__version__, ARENA_GROWTH, HOST_BYTES_PER_PIXEL, PROBE_SIDES, "peak")))


def _disk_estimates() -> dict[str, list]:
    try:
        data = json.loads(estimates_file().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_disk_estimate(key: str, est: ActivationEstimate) -> None:
    """Best effort (a read-only home only costs the probe again next time); keeps the newest 64."""
    data = _disk_estimates()
    data[key] = [est.fixed, est.per_pixel]
    path = estimates_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        tmp.write_text(json.dumps(dict(list(data.items())[-64:])), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


class MemoryGate:
    """Lets model calls run together only while their estimated bytes fit a budget.

    `with gate.hold(n):` waits until n more bytes fit (a call larger than the whole budget waits
    until it runs alone). Thread-safe; the budget is in bytes.
    """

    def __init__(self, budget: int):
        if budget <= 0:
            raise ValueError(f"memory budget must be positive, got {budget} bytes")
        self.budget, self.used, self._cv = budget, 0, threading.Condition()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        n = min(max(int(nbytes), 0), self.budget)
        with self._cv:
            self._cv.wait_for(lambda: self.used + n <= self.budget)
            self.used += n
        try:
            yield
        finally:
            with self._cv:
                self.used -= n
                self._cv.notify_all()


_WARNED_INT8: set[str] = set()


def cpu_lacks_vnni() -> bool:
    """True on an x86-64 CPU whose flags (Linux /proc/cpuinfo) show no VNNI (avx512_vnni, avx_vnni, amx_int8):
    onnxruntime's u8s8 int8 kernels then add uint8 × int8 product pairs in int16 and saturate with
    full-range 8-bit weights. False elsewhere and where the flags cannot be read (no warning then)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        return False
    return bool(flags) and not ({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags.split()))


def int8_saturates(manifest: dict[str, Any]) -> bool:
    """True when a model's int8 networks were quantised with full-range 8-bit weights (before export/quantize.py
    used reduce_range) and this CPU lacks VNNI (`cpu_lacks_vnni`): onnxruntime's fused u8s8 kernels then
    saturate (measured on an AVX2-only CPU: 1.6 dB lost by photos-r9-fast at q12, 3.3 dB by photos-r9's old
    variants). Runtime then builds those networks' sessions with basic graph optimisations only: the QDQ graph
    runs as fp32 convolutions between its quantise/dequantise steps and gives the images a VNNI CPU gives
    (31.85 dB again), more slowly. Warns once per model and process."""
    scheme = str((manifest.get("int8_variants") or manifest.get("int8") or {}).get("scheme", ""))
    if "reduce_range" in scheme or not cpu_lacks_vnni():
        return False
    mid = str(manifest.get("model_id"))
    if mid not in _WARNED_INT8:
        _WARNED_INT8.add(mid)
        log.warning("warning: model %s: its int8 networks have full-range 8-bit weights, which onnxruntime's integer "
                    "kernels saturate on CPUs without VNNI like this one; they run without those kernels (the same "
                    "images, slower). Re-quantised networks (aekit add-int8, export --int8: 7-bit weights) keep "
                    "the speed", mid)
    return True


class Runtime:
    """An exported autoencoder: encode/decode numpy batches exactly as at export time.

    threads: onnxruntime intra-op threads per call (default 1; 0: every usable core), spinning off.
    Sessions come from the per-process cache (`cached_session`), so a second Runtime of the same
    model folder costs only its manifest. gate: a MemoryGate every encode/decode call holds its
    estimated bytes in (None: calls are not gated). int8: run the folder's int8 variants
    (files["encoder_int8"], files["decoder_int8"]) where it has them, else the fp32 networks.
    """

    def __init__(self, model_dir: str | Path, device: str = "auto", threads: int = 1,
                 gate: MemoryGate | None = None, int8: bool = False):
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
        self.gate = gate
        self.encoder_file: str = m["files"].get("encoder_int8", m["files"]["encoder"]) if int8 else m["files"]["encoder"]
        # int8: the model's int8 variants where it ships them (export/quantize.py add_int8_variants)
        self.decoder_file: str = m["files"].get("decoder_int8", m["files"]["decoder"]) if int8 else m["files"]["decoder"]
        own = (m.get("int8") or {}).get("parts") or []  # `export --int8`: the int8 networks are the model
        enc8 = self.encoder_file != m["files"]["encoder"] or "encoder" in own
        dec8 = self.decoder_file == m["files"].get("decoder_int8") or "decoder" in own
        safe = (enc8 or dec8) and "CUDAExecutionProvider" not in self.providers and int8_saturates(m)
        self._encoders = SessionPool(self.dir / self.encoder_file, self.providers, threads, safe and enc8)
        self._decoders = SessionPool(self.dir / self.decoder_file, self.providers, threads, safe and dec8)
        self.encoder, self.decoder = self._encoders.first, self._decoders.first  # the cached sessions
        self._context: dict[tuple[str, int], int] = {}

    @property
    def device(self) -> str:
        return "cuda" if self.encoder.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    @property
    def encoder_int8(self) -> bool:
        """The encoder this runtime runs is int8: an add-int8 variant, or the model's own (`export --int8-encoder`)."""
        own = "encoder" in ((self.manifest.get("int8") or {}).get("parts") or [])
        return self.encoder_file != self.manifest["files"]["encoder"] or own

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.factor
        return (self.latent_channels, -(-height // f), -(-width // f))

    def context(self, part: str, default: int) -> int:
        """Latent units of context a tile of the "encoder" or "decoder" needs on each side to compute what
        the whole image would (its receptive field): the manifest's "tile_context" (written at export),
        else computed from the graph when the onnx package is installed, else `default`."""
        key = (part, default)
        if key not in self._context:
            file = self.decoder_file if part == "decoder" else self.encoder_file
            role = part if file == self.manifest["files"][part] else f"{part}_int8"
            stored = (self.manifest.get("tile_context") or {}).get(role)
            if not isinstance(stored, int) or stored < 1:
                try:
                    stored = tile_contexts({role: self.dir / file}, self.factor).get(role)
                except ImportError:  # onnx is not a runtime dependency: older exports tile with the default
                    stored = None
            self._context[key] = stored or default
        return self._context[key]

    def estimate(self, part: str) -> ActivationEstimate | None:
        """Host bytes of one call of the "encoder" or "decoder" per image pixel it covers (see
        ActivationEstimate); None on a GPU, where activations do not live in host memory."""
        if self.device != "cpu":
            return None
        m, f = self.manifest, self.factor
        if part == "encoder":
            return estimate_activation(self.dir / self.encoder_file, self.encoder.get_inputs()[0].name,
                                       lambda n: (1, self.channels, n * f, n * f), lambda n: (n * f) ** 2)
        return estimate_activation(self.dir / self.decoder_file, self.decoder.get_inputs()[0].name,
                                   lambda n: (1, self.latent_channels, n, n), lambda n: (n * f) ** 2)

    def _held(self, part: str, pixels: int):
        """Context holding a call's estimated bytes in the gate (nothing without one)."""
        est = self.estimate(part) if self.gate is not None else None
        return self.gate.hold(est.bytes(pixels)) if est is not None else nullcontext()

    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 (B, H, W, C) -> y float32 (B, c_y, ceil(H/f), ceil(W/f)) (in [-1, 1] for tanh models)."""
        if images.ndim != 4 or images.shape[3] != self.channels:
            raise ValueError(f"expected (B, H, W, {self.channels}) images, got shape {images.shape}")
        with self._held("encoder", images.shape[0] * images.shape[1] * images.shape[2]):
            x = pad_to_multiple(to_model_input(images), self.factor)
            return self._encoders.run({"x": x})[0]

    def release_memory(self, part: str) -> None:
        """Free the arena memory the "encoder" or "decoder" sessions kept from their largest calls
        (`release_arena`); the codec calls it after a tiled image, so a large image's tiles do not
        stay resident while the coder runs, or until the process ends."""
        if part == "encoder":
            self._encoders.release({"x": np.zeros((1, self.channels, self.factor, self.factor), np.float32)})
        else:
            self._decoders.release({"y_hat": np.zeros((1, self.latent_channels, 1, 1), np.float32)})

    def quantise(self, y: np.ndarray) -> np.ndarray:
        """y -> uint8 symbols with the model's default quantiser (see `Quantiser`)."""
        return self.quantiser.quantise(y)

    def dequantise(self, q: np.ndarray) -> np.ndarray:
        """uint8 symbols of the default quantiser -> y_hat float32 (see `Quantiser`)."""
        return self.quantiser.dequantise(q)

    def decode(self, y_hat: np.ndarray, height: int | None = None, width: int | None = None) -> np.ndarray:
        """y_hat (B, c_y, h, w) -> uint8 (B, H, W, C), cropped to height x width if given."""
        b, _, h, w = y_hat.shape
        with self._held("decoder", b * h * w * self.factor ** 2):
            x_hat = self._decoders.run({"y_hat": np.ascontiguousarray(y_hat, dtype=np.float32)})[0]
            out = from_model_output(x_hat)
        return out[:, :height, :width] if height or width else out

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """Full round trip through 8-bit latents: uint8 (B, H, W, C) -> uint8 (B, H, W, C)."""
        h, w = images.shape[1:3]
        return self.decode(self.dequantise(self.quantise(self.encode(images))), h, w)


# Ops that keep each output position a function of the same input position (element-wise, channel mixing
# at one position, or constants): they pass the receptive field through unchanged.
_POINTWISE_OPS = frozenset((
    "Abs", "Add", "BatchNormalization", "Cast", "Clip", "Concat", "Constant", "DequantizeLinear", "Div", "Elu",
    "Erf", "Exp", "QuantizeLinear",
    "Identity", "LeakyRelu", "Log", "Max", "Min", "Mul", "Neg", "Pow", "PRelu",
    "Reciprocal", "Relu", "Selu", "Sigmoid", "Softplus", "Sqrt", "Sub", "Tanh", "Where"))


def context_reach(path: str | Path) -> tuple[float, float] | None:
    """(reach, scale) of an ONNX conv network: how far, in input units, the inputs that one output
    position depends on can lie from it, and the input units per output unit (f for an encoder, 1/f for
    a decoder); None when the graph has an op whose spatial reach is not known here.

    Standard receptive-field arithmetic (Araujo et al. 2019, "Computing receptive fields of CNNs"),
    per tensor in topological order: a Conv of kernel k, dilation d, padding p, stride s on a tensor of
    scale u reaches max(p, d(k−1) − p)·u further and multiplies u by s; a ConvTranspose of stride s reaches
    ceil(max(p, k−1−p)/s)·u and divides u by s; DepthToSpace divides u by its block, SpaceToDepth reaches
    (b−1)·u and multiplies u by b; point-wise ops take the largest reach of their inputs. A tile whose core
    has ceil(reach/scale) latent units of context on each side computes the same values as the whole image.
    """
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    const = {t.name for t in g.initializer}
    state: dict[str, tuple[float, float]] = {i.name: (0.0, 1.0) for i in g.input if i.name not in const}
    for n in g.node:
        ins = [state[i] for i in n.input if i in state]
        if not ins:  # constants (and Casts of fp16-stored weights)
            continue
        reach, u = max(r for r, _ in ins), ins[0][1]
        a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
        if n.op_type == "Conv":
            k = a.get("kernel_shape") or [3]
            d, p, s = (a.get("dilations") or [1])[0], (a.get("pads") or [0])[:len(k)], (a.get("strides") or [1])[0]
            reach += max(max(pp, dd * (kk - 1) - pp) for kk, pp, dd in zip(k, p, [d] * len(k))) * u
            u *= s
        elif n.op_type == "ConvTranspose":
            k, s = a.get("kernel_shape") or [3], (a.get("strides") or [1])[0]
            p = (a.get("pads") or [0] * len(k))[:len(k)]
            reach += max(-(-max(pp, kk - 1 - pp) // s) for kk, pp in zip(k, p)) * u
            u /= s
        elif n.op_type == "DepthToSpace":
            u /= a["blocksize"]
        elif n.op_type == "SpaceToDepth":
            reach += (a["blocksize"] - 1) * u
            u *= a["blocksize"]
        elif n.op_type not in _POINTWISE_OPS:
            return None
        for o in n.output:
            state[o] = (reach, u)
    outs = [state[o.name] for o in g.output if o.name in state]
    return (max(r for r, _ in outs), outs[0][1]) if outs else None


def tile_contexts(files: dict[str, str | Path], factor: int) -> dict[str, int]:
    """{role: ONNX file} -> {role: latent units of tile context} (`context_reach`; roles starting with
    "encoder" read pixels, the others latents); roles whose reach is unknown are left out.
    Raises ImportError without the onnx package."""
    out = {}
    for role, path in files.items():
        got = context_reach(path)
        if got is not None:  # the encoder's reach is in pixels (scale f), the decoder's in latent units
            reach, scale = got
            out[role] = max(1, math.ceil(reach / (scale if role.startswith("encoder") else 1) - 1e-9))
    return out
