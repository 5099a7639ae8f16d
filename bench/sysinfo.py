"""What produced the figures: device name, driver and library versions; peak memory.

    env = environment(); mem = HostPeakMemory(); mem.reset(); ...; mem.peak_bytes()
Nothing here needs a GPU; each GPU query answers None when there is none.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from aekit.machine import cpu_name, release_free_heap

LIBRARIES = ("aekit", "numpy", "pillow", "onnx", "onnxruntime-gpu", "onnxruntime", "torch", "torchvision",
             "constriction", "zstandard", "tensorrt")


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def nvidia_smi() -> list[dict[str, str]]:
    """One dict per GPU (name, driver, memory, clocks) from nvidia-smi; [] without one."""
    fields = "name,driver_version,memory.total,clocks.max.sm,power.limit,pci.bus_id"
    try:
        r = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if r.returncode != 0:
        return []
    keys = fields.split(",")
    return [dict(zip(keys, (v.strip() for v in line.split(",")))) for line in r.stdout.strip().splitlines()]


def torch_cuda_info() -> dict[str, Any]:
    """CUDA / cuDNN versions torch was built with and sees (only if torch is importable)."""
    try:
        import torch
    except ImportError:
        return {}
    info: dict[str, Any] = {"torch_cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    memory_bytes=p.total_memory, cudnn=torch.backends.cudnn.version())
    return info


def environment(device: str) -> dict[str, Any]:
    """Everything a recorded figure needs to be reproduced and compared."""
    import onnxruntime as ort

    env: dict[str, Any] = {
        "host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu": cpu_name(), "cpu_cores": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "onnxruntime_providers": ort.get_available_providers(), "onnxruntime_device": ort.get_device(),
        "libraries": library_versions(), "device": device,
    }
    gpus = nvidia_smi() if device == "cuda" else []
    if gpus:
        env["gpus"] = gpus
        env["gpu_name"], env["gpu_driver"] = gpus[0]["name"], gpus[0]["driver_version"]
    if device == "cuda":
        env.update(torch_cuda_info())
    env["device_name"] = env.get("gpu_name") or env.get("device") if device == "cuda" else env["cpu"]
    return env


class HostPeakMemory:
    """Peak resident memory (VmHWM) of this process since the last reset (Linux).

    reset() writes 5 to /proc/self/clear_refs, which sets the high-water mark back to the
    current RSS, so each benchmark setting gets its own peak. Elsewhere: ru_maxrss (never reset).
    """

    def reset(self) -> bool:
        release_free_heap()  # hand freed heap back to the OS first, or earlier settings' garbage counts as ours
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def peak_bytes(self) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        except (ImportError, OSError):
            return None


def gpu_memory_used_bytes() -> int | None:
    """Device memory in use on GPU 0 (all processes), via torch's cudaMemGetInfo; None without CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info(0)
    return total - free


def process_gpu_memory_bytes(pid: int | None = None) -> int | None:
    """Device memory held by this process (nvidia-smi per-process accounting), else all processes' use."""
    pid = pid or os.getpid()
    try:
        r = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, timeout=20)
        for line in r.stdout.strip().splitlines():
            p, used = (v.strip() for v in line.split(","))
            if int(p) == pid:
                return int(used) * 2**20
    except (OSError, ValueError, subprocess.TimeoutExpired):
        pass
    return gpu_memory_used_bytes()  # pid namespaces can hide our pid from nvidia-smi
