"""Failures as results: one line per error, out-of-memory recognised whatever raised it, and a CPU
batch refused before it could bring the machine down.

    msg = one_line(e); oom = is_oom(e); why = host_memory_refusal(manifest, "fp32", images, (256, 256), 0.8)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

OOM_MARKERS = ("out of memory", "failed to allocate memory", "cudnn_status_alloc_failed", "bad_alloc",
               "cuda_error_out_of_memory", "cudaerrormemoryallocation")


def one_line(e: BaseException) -> str:
    """An exception as one short line (onnxruntime messages span several)."""
    text = " ".join(str(e).split())
    return (text[:300] + " ...") if len(text) > 300 else text or type(e).__name__


def is_oom(e: BaseException) -> bool:
    """Out of memory on host or device, whatever library raised it."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    return any(m in str(e).lower() for m in OOM_MARKERS)


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (None where there is none)."""
    try:
        return int(next(ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemAvailable"))) * 1024
    except (OSError, StopIteration):
        return None


def host_memory_refusal(manifest: dict[str, Any], prec: str, imgs: np.ndarray, size: tuple[int, int],
                        fraction: float) -> str | None:
    """Why a CPU batch `imgs` (B, H, W, C) of this size would not fit in `fraction` of free RAM, or None.

    The estimate: twice the larger of encoder and decoder peak activations per image (from the
    graph), times the batch, plus three copies of the pixels.
    """
    from aekit.bench.flops import peak_activation_bytes

    m, avail = manifest, available_bytes()
    if avail is None:
        return None
    key = "encoder_fp16" if prec == "fp16" and "encoder_fp16" in m["files"] else "encoder"
    h, w = size
    c_y, lh, lw = m["latent_channels"], h // m["factor"], w // m["factor"]
    per = max(peak_activation_bytes(Path(m["_dir"]) / m["files"][key], {"x": (1, m["channels"], h, w)}),
              peak_activation_bytes(Path(m["_dir"]) / m["files"][key.replace("encoder", "decoder")],
                                    {"y_hat": (1, c_y, lh, lw)}))
    need = 2 * per * len(imgs) + 3 * imgs.nbytes
    if need > fraction * avail:
        return (f"needs ~{need / 2**30:.1f} GiB (estimated from the graph), {avail / 2**30:.1f} GiB free: "
                f"refused as out of memory")
    return None
