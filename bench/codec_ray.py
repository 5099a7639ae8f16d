"""Scaling run: `aekit compress` of a folder with the local engine and with Ray at 1, 2, ... workers.

    flock /tmp/aekit-heavy.lock python -m aekit.bench.codec_ray data/fmnist/test -m models/fmnist-r4 --workers 1,2
Starts one local Ray cluster (--cpus), times each engine on a fresh output folder (Ray's start-up
reported apart; actor start-up counted in each run), checks every run's files are byte-identical
to the local engine's, and writes a JSON record (command, machine, date, versions) and a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

from aekit.machine import cpu_name
from aekit.codec.core import Codec, CodecConfig
from aekit.codec.jobs import JobConfig, compress_tree
from aekit.codec.ray_jobs import compress_tree_ray
from aekit.export.engine_ray import RayConfig


def same_files(a: Path, b: Path) -> bool:
    fa, fb = sorted(p.relative_to(a) for p in a.rglob("*.ael")), sorted(p.relative_to(b) for p in b.rglob("*.ael"))
    return fa == fb and all((a / p).read_bytes() == (b / p).read_bytes() for p in fa)


def run(args: argparse.Namespace) -> dict:
    import os

    import ray

    tmp = Path(tempfile.mkdtemp(prefix="aekit-scale-"))
    rows = []
    try:
        t = time.monotonic()
        rep = compress_tree(args.src, tmp / "local", Codec(args.model, CodecConfig(batch_size=args.batch_size)),
                            JobConfig(progress=False))
        rows.append({"engine": "local", "workers": "threads", "seconds": time.monotonic() - t, "files": rep.ok,
                     "failed": len(rep.failed), "identical": True})
        t = time.monotonic()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        startup = time.monotonic() - t
        for n in args.workers:
            out = tmp / f"ray{n}"
            t = time.monotonic()
            rep = compress_tree_ray(args.src, str(out), args.model, CodecConfig(batch_size=args.batch_size, threads=1),
                                    RayConfig(actors=n, actor_cpus=args.actor_cpus, batch_size=args.batch_size))
            rows.append({"engine": "ray", "workers": n, "seconds": time.monotonic() - t, "files": rep.ok,
                         "failed": len(rep.failed), "identical": same_files(tmp / "local", out)})
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for r in rows:
        r["images_per_s"] = r["files"] / r["seconds"]
    return {
        "command": "python -m aekit.bench.codec_ray " + " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "ray_cpus": args.cpus},
        "versions": {k: version(k) for k in ("ray", "onnxruntime-gpu", "numpy", "pyarrow", "fsspec")
                     if _installed(k)},
        "settings": {"src": args.src, "model": args.model, "batch_size": args.batch_size,
                     "actor_cpus": args.actor_cpus, "onnxruntime_threads_per_actor": 1},
        "ray_startup_s": startup,
        "runs": rows,
    }


def _installed(dist: str) -> bool:
    try:
        version(dist)
        return True
    except Exception:  # noqa: BLE001
        return False


def table(rec: dict) -> str:
    lines = ["| engine | workers | files | seconds | images/s | identical to local |", "|---|---|---|---|---|---|"]
    for r in rec["runs"]:
        lines.append(f"| {r['engine']} | {r['workers']} | {r['files']} | {r['seconds']:.1f} | "
                     f"{r['images_per_s']:.0f} | {'yes' if r['identical'] else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("src", help="image folder")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--workers", default="1,2", help="Ray model actors to try, comma-separated")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    p.add_argument("--actor-cpus", type=float, default=0.75, help="CPUs reserved per actor (the rest: read/write tasks)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", default="codec/results/scale_ray.json")
    args = p.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",")]
    rec = run(args)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rec, indent=1) + "\n")
    print(table(rec))
    print(f"Ray start-up {rec['ray_startup_s']:.1f} s (not in the runs); wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
