"""Throughput and peak memory of `aekit compress` / `aekit decompress` on real image folders.

    flock /tmp/aekit-cpu.lock python -m aekit.bench.codec_throughput data/fmnist/test -m models/fmnist-r4 \
        --sizes 1000 10000 --out codec/results/throughput_fmnist-r4.json
Each run is a fresh process under /usr/bin/time -v (max RSS); the first N images of the
folder are hard-linked into a scratch tree so 1,000 and 10,000 images are the same kind.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from aekit.images import atomic_write_bytes, is_image_name
from aekit.machine import cpu_name
from aekit.codec.jobs import walk



def subset(src: Path, n: int, dst: Path) -> int:
    """Hard-link (or copy) the first n images of src into dst, keeping the tree; returns the count."""
    k = 0
    for p, rel in walk(src, is_image_name):
        if p is None:
            continue
        if k >= n:
            break
        t = dst / rel
        t.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(p, t)
        except OSError:
            shutil.copy(p, t)
        k += 1
    return k


def timed(cmd: list[str]) -> dict:
    """Run cmd under /usr/bin/time -v; returns wall seconds, max RSS and the aekit summary line."""
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    err = r.stderr
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", err).group(1)
    secs = sum(float(x) * 60**i for i, x in enumerate(reversed(wall.split(":"))))
    summary = next((ln for ln in err.splitlines() if ln.startswith(("compressed", "decompressed"))), "")
    nums = {unit: float(v) for v, unit in re.findall(r"([\d.]+) (images/s|MB/s)", summary)}
    return {"command": " ".join(cmd), "exit": r.returncode, "wall_s": secs, "max_rss_mb": rss / 1024,
            "summary": summary, "job_s": float(re.search(r"; ([\d.]+) s,", summary).group(1)) if summary else None,
            "images_per_s": nums.get("images/s"), "pixel_mb_per_s": nums.get("MB/s")}


def main(argv: list[str] | None = None) -> int:
    from aekit.cli import setup_logging

    setup_logging()  # run as python -m: progress lines on stderr, as under aekit
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--out", required=True)
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more aekit compress/decompress flags")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="aekit-bench-") as tmp:
        for n in args.sizes:
            root = Path(tmp) / str(n)
            k = subset(Path(args.src), n, root / "src")
            c = timed(["aekit", "compress", str(root / "src"), "-m", args.model, "-o", str(root / "lat"),
                       "--no-progress", *args.extra])
            d = timed(["aekit", "decompress", str(root / "lat"), "-o", str(root / "dec"), "-m", args.model,
                       "--no-progress", *args.extra])
            lat = sum(p.stat().st_size for p in (root / "lat").rglob("*.ael"))
            rows.append({"images": k, "latent_bytes": lat, "compress": c, "decompress": d})
            logging.getLogger(__name__).info("%s", json.dumps(rows[-1], indent=1))
    import onnxruntime

    result = {"format": "aekit-codec-throughput", "src": args.src, "model": args.model, "runs": rows,
              "machine": {"cpus": os.cpu_count(), "processor": cpu_name(),
                          "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
                          "loadavg_1_5_15": os.getloadavg()},
              "command": shlex.join(["python", "-m", "aekit.bench.codec_throughput", *(argv or sys.argv[1:])])}
    atomic_write_bytes(args.out, (json.dumps(result, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
