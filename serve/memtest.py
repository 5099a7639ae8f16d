"""Server memory under concurrent heavy requests (issue 14): RSS of `aekit serve` before, at peak and after
N simultaneous /v1/reconstruct requests of a flat 2048 x 2048 PNG (about 8 KB that decodes to 4 Mpx).

    python -m aekit.serve.memtest MODEL N [SERVE FLAGS ...]    # e.g. 8 --max-concurrent 8 --tile-above 100000000
Starts the server as a subprocess on a free loopback port, reads VmRSS/VmHWM from /proc (Linux), prints one JSON line.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image


def rss_mb(pid: int) -> dict[str, float]:
    """Resident (VmRSS) and peak resident (VmHWM) memory of a process, in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: round(int(fields[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM")}


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def measure(model: str, n: int, flags: list[str]) -> dict:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([sys.executable, "-m", "aekit.cli", "serve", model, "--port", str(port), "--timeout", "600",
                          *flags], env={**os.environ, "OMP_NUM_THREADS": "1"},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url, post = f"http://127.0.0.1:{port}", {"headers": {"content-type": "image/png"}, "timeout": 900}
    try:
        for _ in range(400):
            try:
                httpx.get(url + "/healthz", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        httpx.post(url + "/v1/reconstruct", content=png(np.full((64, 64), 200, np.uint8)), **post)  # warm up
        flat = png(np.full((2048, 2048), 200, np.uint8))
        before, t0 = rss_mb(p.pid), time.monotonic()
        with ThreadPoolExecutor(n) as pool:
            codes = list(pool.map(lambda _: httpx.post(url + "/v1/reconstruct", content=flat, **post).status_code,
                                  range(n)))
        after = rss_mb(p.pid)
    finally:
        p.terminate()
        p.wait(30)
    return {"flags": " ".join(flags), "requests": n, "png_bytes": len(flat), "codes": codes,
            "seconds": round(time.monotonic() - t0, 1), "rss_before_mb": before["VmRSS"],
            "peak_mb": after["VmHWM"], "rss_after_mb": after["VmRSS"]}


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]), sys.argv[3:])))
