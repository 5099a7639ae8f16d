"""What machine produced a figure: recorded with every benchmark and evaluation result."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask: taskset, cgroups' cpusets), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def cpu_name() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else the platform's processor/machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def release_free_heap() -> None:
    """Hand the C heap's freed pages back to the OS (glibc's malloc_trim; a no-op elsewhere): after a burst of
    large images a long-running process otherwise keeps its peak RSS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
