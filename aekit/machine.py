"""What machine produced a figure: recorded with every benchmark and evaluation result."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else the platform's processor/machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
