"""The bench's record: its settings (BenchConfig), one row per timed stage (StageResult), the report.

    report.to_dict()   # {"format": "aekit-bench", "format_version": 1, "config": ..., "results": [...], ...}
The JSON written by `aekit bench --json` is `to_dict()` of a BenchReport; its keys are a format
(format_version 1): readers such as `python -m aekit.bench.report` rely on them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from aekit.bench.timing import Timing

REPORT_FORMAT, REPORT_VERSION = "aekit-bench", 1
MODEL_STAGES = ("encode", "decode")  # device-resident network stages
STAGES = ("encode", "entropy-encode", "entropy-decode", "decode", "compress", "decompress",
          "jpeg-encode", "jpeg-decode")


@dataclass
class BenchConfig:
    model: str  # model folder (manifest.json + ONNX)
    device: str = "auto"  # auto | cuda | cpu
    backends: tuple[str, ...] = ("ort",)  # names of ALL_BACKENDS, or groups ort | torch | all
    batches: tuple[int, ...] = (1, 8, 64, 256)  # images per call
    sizes: tuple[tuple[int, int], ...] = ()  # (H, W); empty: the images' own size if uniform, else 256x256
    precisions: tuple[str, ...] = ("fp32",)  # fp32 | fp16 | bf16
    seconds: float = 1.0  # timed work per stage and setting (after warm-up)
    warmup: int = 2  # untimed calls before each timed stage
    images: str | None = None  # image folder (default: the model's training/validation data)
    max_images: int = 32  # distinct images loaded; batches repeat them
    jpeg: bool = True  # time the JPEG baselines on the same images
    entropy: bool = True  # time the entropy coder stages and the in-memory compress/decompress
    folders: tuple[str, ...] = ()  # folders to compress/decompress file to file (aekit compress/decompress)
    folder_limits: tuple[int, ...] = ()  # first N files of each folder (empty: all of it)
    threads: int = 0  # CPU threads (0: all cores)
    checkpoint: str | None = None  # PyTorch weights (default: the manifest's training.checkpoint)
    trt_cache: str | None = None  # TensorRT engine cache folder
    compile_mode: str | None = None  # torch.compile mode
    cuda_graph: bool = False  # onnxruntime CUDA graphs (ort-cuda)
    nhwc: bool = False  # onnxruntime CUDA prefer_nhwc (ort-cuda)
    host_memory_fraction: float = 0.8  # refuse a CPU batch whose estimated memory exceeds this share of free RAM


@dataclass
class StageResult:
    backend: str  # ort-cpu | ort-cuda | ... | entropy | jpeg-pillow | jpeg-nvjpeg
    precision: str
    size: str  # "HxW"
    batch: int
    stage: str  # one of STAGES
    status: str = "ok"  # ok | error | oom | skipped
    message: str = ""
    images_per_s: float | None = None
    megapixels_per_s: float | None = None
    latency_p50_ms: float | None = None  # per batch
    latency_p99_ms: float | None = None
    timing: dict[str, Any] | None = None
    gflop_per_image: float | None = None
    achieved_tflops: float | None = None
    peak_fraction: float | None = None  # achieved / device peak for this precision
    peak_host_bytes: int | None = None  # process peak RSS during this setting
    peak_device_bytes: int | None = None
    bytes_per_image: float | None = None  # coded size (entropy, compress, JPEG stages)


def fill(r: StageResult, t: Timing, batch: int, h: int, w: int) -> StageResult:
    """r with the throughput and latency of t (seconds per call of `batch` images of h x w)."""
    med = t.median
    r.timing = t.summary()
    r.images_per_s = batch / med
    r.megapixels_per_s = batch * h * w / med / 1e6
    r.latency_p50_ms, r.latency_p99_ms = med * 1e3, t.p99 * 1e3
    return r


@dataclass
class BenchReport:
    config: dict[str, Any]
    environment: dict[str, Any]
    model: dict[str, Any]
    peak: dict[str, Any]
    results: list[StageResult] = field(default_factory=list)
    quality: list[dict[str, Any]] = field(default_factory=list)
    folders: list[dict[str, Any]] = field(default_factory=list)
    ratios: list[dict[str, Any]] = field(default_factory=list)
    speed_quality: list[dict[str, Any]] = field(default_factory=list)  # decode MP/s next to the PSNR it buys
    messages: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    created: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        """Some setting failed for a reason other than running out of memory (a folder stage that was asked
        for and could not run, because `aekit compress` is not available, counts: exit 2, not 0)."""
        return any(r.status == "error" for r in self.results) or \
            any(f.get("status") in ("error", "skipped") for f in self.folders)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"format": REPORT_FORMAT, "format_version": REPORT_VERSION, **d}
