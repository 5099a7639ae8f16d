"""What this machine offers the bench: the device, the backends that suit it, threads, peak TFLOP/s.

    device = resolve_device("auto"); names = expand_backends(("ort", "torch"), device)
    peak, source = device_peak(device, environment(device), threads=0)
"""

from __future__ import annotations

from typing import Any

from aekit.bench.backends import ALL_BACKENDS
from aekit.machine import usable_cores

GROUPS = {"ort": ("ort-cpu", "ort-cuda", "ort-trt"), "torch": ("torch-eager", "torch-compile")}


def cuda_status() -> str | None:
    """None if a CUDA GPU is usable, else one line saying why not."""
    from aekit.export.runtime import gpu_visible

    if not gpu_visible():
        return "no CUDA GPU visible on this machine (no /dev/nvidia*, or CUDA_VISIBLE_DEVICES hides it)"
    return None


def default_threads() -> int:
    return usable_cores()


def resolve_device(device: str) -> str:
    """auto -> cuda when a GPU is usable, else cpu; cuda and cpu as given."""
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"--device {device!r}: expected auto, cuda or cpu")
    if device == "auto":
        return "cuda" if cuda_status() is None else "cpu"
    return device


def expand_backends(names: tuple[str, ...] | list[str], device: str) -> list[str]:
    """Groups to backend names for the device: ort -> ort-cuda (+ ort-trt if offered) or ort-cpu."""
    import onnxruntime as ort

    out: list[str] = []
    for n in names:
        if n == "all":
            members = [*GROUPS["ort"], *GROUPS["torch"]]
        elif n in GROUPS:
            members = list(GROUPS[n])
        elif n in ALL_BACKENDS:
            members = [n]
        else:
            raise ValueError(f"unknown backend {n!r} (have: ort, torch, all, {', '.join(ALL_BACKENDS)})")
        if len(members) > 1:  # a group: only what suits the device
            if device == "cuda":
                members = [m for m in members if m != "ort-cpu"]
                if "TensorrtExecutionProvider" not in ort.get_available_providers():
                    members = [m for m in members if m != "ort-trt"]
            else:
                members = [m for m in members if m not in ("ort-cuda", "ort-trt")]
        out += [m for m in members if m not in out]
    return out


def device_peak(device: str, environment: dict[str, Any], threads: int) -> tuple[dict[str, float | None], str]:
    """Peak TFLOP/s per precision and where it comes from: the GPU's datasheet, or a CPU matmul measured now.

    threads: the bench's --threads (0: all cores), which the measured matmul uses too.
    """
    from aekit.bench.flops import gpu_peak_tflops, measured_matmul_tflops

    if device == "cuda":
        name = environment.get("device_name") or ""
        peak = {p: gpu_peak_tflops(name, "tf32" if p == "fp32" else p) for p in ("fp32", "fp16", "bf16")}
        src = f"datasheet dense peak for {name!r} (fp32 compared with TF32: cuDNN convs use it by default)"
        if all(v is None for v in peak.values()):
            src = f"{name!r} not in aekit.bench.flops.GPU_PEAK_TFLOPS: no peak fraction"
        return peak, src
    # no datasheet for a CPU in a VM: the best of two large fp32 matmuls, measured now
    from aekit.bench.flops import measured_ort_matmul_tflops

    v = measured_matmul_tflops(seconds=1.0)
    try:
        v = max(v, measured_ort_matmul_tflops(seconds=1.0, threads=threads))
    except ImportError:  # no onnx package: numpy's figure alone
        pass
    src = (f"measured: best of numpy and onnxruntime fp32 2048^3 matmuls over 1 s each, "
           f"{threads or default_threads()} threads (a busy machine lowers it: fractions are then optimistic)")
    return {p: v for p in ("fp32", "fp16", "bf16")}, src
