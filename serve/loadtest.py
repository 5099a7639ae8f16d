"""Load test of `aekit serve --learn` on loopback: N requests at concurrency C over /v1/reconstruct and /v1/screen,
with every 4th request a /v1/learn of an image from --learn-images (held out from the calibration images).

    flock /tmp/aekit-heavy.lock python -m aekit.serve.loadtest --model models/fmnist-r4 --images data/fmnist/test
Starts the server as a subprocess (learning on, calibrated on --images), sends real PNGs with
asyncio + httpx, and writes serve/results/loadtest.json and serve/RESULTS.md (throughput,
p50/p99 latency, errors, server RSS before/after, versions swapped in, machine and versions).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import numpy as np

from aekit.images import atomic_write_bytes, scan_folder
from aekit.machine import cpu_name


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def load_images(folder: str, n: int) -> list[tuple[str, bytes]]:
    """(class, PNG bytes) of up to n images spread over the classes of folder."""
    samples, _, _ = scan_folder(folder)
    step = max(1, len(samples) // n)
    return [(s.label, s.path.read_bytes()) for s in samples[::step][:n]]


def start_server(args: argparse.Namespace, workdir: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "aekit.cli", "serve", args.model, "--learn", "--port", str(args.port),
           "--calibration", args.images, "--calibration-limit", str(args.calibration_limit), "--alpha", "0.05",
           "--swap-every", str(args.swap_every), "--workdir", workdir]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


async def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with code {proc.returncode}: {proc.stdout.read()}")
            try:
                if (await c.get(f"{url}/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"server not ready after {timeout} s")


async def fire(url: str, images: list[tuple[str, bytes]], n: int, concurrency: int,
               learn: list[tuple[str, bytes]] | None = None) -> dict:
    """n requests, alternating reconstruct and screen (every 4th a learn, when learn images are given),
    from `concurrency` workers; latencies per endpoint."""
    import httpx

    lat: dict[str, list[float]] = {"reconstruct": [], "screen": [], "learn": []}
    errors: dict[str, int] = {}
    counter = iter(range(n))

    async def worker(c: httpx.AsyncClient) -> None:
        for i in counter:
            label, data = images[i % len(images)]
            kind = "reconstruct" if i % 2 == 0 else "screen"
            path = "/v1/reconstruct" if kind == "reconstruct" else f"/v1/screen?class={label}"
            if learn and i % 4 == 3:  # only images marked normal are learned (never screened uploads)
                kind, path, data = "learn", "/v1/learn", learn[(i // 4) % len(learn)][1]
            t = time.perf_counter()
            try:
                r = await c.post(path, content=data, headers={"content-type": "image/png"})
                code = str(r.status_code)
            except httpx.HTTPError as e:
                code = type(e).__name__
            lat[kind].append(time.perf_counter() - t)
            if code != "200":
                errors[code] = errors.get(code, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    every = lat["reconstruct"] + lat["screen"] + lat["learn"]

    def stats(xs: list[float]) -> dict:
        a = np.array(xs) * 1000
        return {"requests": len(xs), "p50_ms": round(float(np.percentile(a, 50)), 1),
                "p99_ms": round(float(np.percentile(a, 99)), 1), "max_ms": round(float(a.max()), 1)}

    return {"requests": len(every), "wall_s": round(wall, 2), "throughput_rps": round(len(every) / wall, 1),
            "errors": sum(errors.values()), "errors_by_code": errors, "all": stats(every),
            **{k: stats(v) for k, v in lat.items() if v}}


async def run(args: argparse.Namespace) -> dict:
    import httpx

    url = f"http://127.0.0.1:{args.port}"
    images = load_images(args.images, args.distinct)
    learn = load_images(args.learn_images, args.distinct) if args.learn_images else None
    with tempfile.TemporaryDirectory(prefix="aekit-loadtest-") as work:
        proc = start_server(args, work)
        try:
            await wait_ready(url, proc)
            async with httpx.AsyncClient(base_url=url) as c:
                before = {"rss_mb": rss_mb(proc.pid), "status": (await c.get("/v1/status")).json()}
            result = await fire(url, images, args.requests, args.concurrency, learn)
            await asyncio.sleep(1)
            async with httpx.AsyncClient(base_url=url) as c:
                after = {"rss_mb": rss_mb(proc.pid), "status": (await c.get("/v1/status")).json(),
                         "healthz": (await c.get("/healthz")).status_code}
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return {**result, "server_rss_mb_before": before["rss_mb"], "server_rss_mb_after": after["rss_mb"],
            "healthz_after": after["healthz"], "version_before": before["status"]["version"],
            "version_after": after["status"]["version"], "learning_after": after["status"]["learning"],
            "distinct_images": len(images)}


def record(args: argparse.Namespace, result: dict) -> dict:
    return {
        "command": "flock /tmp/aekit-heavy.lock python -m aekit.serve.loadtest " + " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "os": platform.platform()},
        "versions": {k: version(k) for k in ("aekit", "onnxruntime-gpu", "torch", "fastapi", "uvicorn", "httpx")}
        | {"python": platform.python_version()},
        "settings": {"model": args.model, "images": args.images, "requests": args.requests,
                     "concurrency": args.concurrency, "learn": True, "swap_every_s": args.swap_every,
                     "learn_images": args.learn_images,
                     "endpoints": ["/v1/reconstruct", "/v1/screen"] + (["/v1/learn"] if args.learn_images else [])},
        "result": result,
    }


def later_sections(md: str) -> str:
    """Sections of the results file after the load test's own (e.g. the memory measurements), kept as they are."""
    try:
        text = Path(md).read_text()
    except OSError:
        return ""
    i = text.find("\n# ", 1)
    return "\n" + text[i:].lstrip("\n") if i >= 0 else ""


def markdown(rec: dict) -> str:
    r, s = rec["result"], rec["settings"]
    learn = r["learning_after"]
    return "\n".join([
        "# aekit serve: load test on loopback",
        "",
        f"Recorded {rec['date']} on {rec['machine']['cpu']} ({rec['machine']['cores']} cores, shared), "
        f"Python {rec['versions']['python']}, onnxruntime {rec['versions']['onnxruntime-gpu']}, "
        f"torch {rec['versions']['torch']}, fastapi {rec['versions']['fastapi']}, uvicorn {rec['versions']['uvicorn']}.",
        "",
        "```bash",
        rec["command"],
        "```",
        "",
        f"Server: `aekit serve {s['model']} --learn` (subprocess, loopback, calibrated on {s['images']}), "
        f"{s['requests']} requests at concurrency {s['concurrency']}, alternating `/v1/reconstruct` and "
        f"`/v1/screen?class=…` with {r['distinct_images']} real Fashion-MNIST PNGs. Raw numbers: "
        "`serve/results/loadtest.json`.",
        "",
        "| endpoint | requests | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
        *(f"| {k} | {r[k]['requests']} | {r[k]['p50_ms']} | {r[k]['p99_ms']} | {r[k]['max_ms']} |"
          for k in ("reconstruct", "screen", "learn", "all") if k in r),
        "",
        f"- **Throughput** {r['throughput_rps']} requests/s ({r['requests']} in {r['wall_s']} s).",
        f"- **Errors** {r['errors']} {r['errors_by_code'] or ''}; `/healthz` after the run: {r['healthz_after']}.",
        f"- **Server memory (RSS)** {r['server_rss_mb_before']} MiB before, {r['server_rss_mb_after']} MiB after.",
        f"- **Online learning** during the run: {learn['accepted']} uploads queued for training, {learn['dropped']} "
        f"dropped (queue full, requests never waited), {learn['trained']} images trained in {learn['steps']} steps, "
        f"running loss {learn['running_loss']:.5f}; model version {r['version_before']} -> {r['version_after']} "
        f"({learn['exports']} swaps, {learn['failed_exports']} failed).",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="models/fmnist-r4")
    p.add_argument("--images", default="data/fmnist/test", help="class folders of real PNGs (also calibration)")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--distinct", type=int, default=1000, help="distinct images sent")
    p.add_argument("--learn-images", default="data/fmnist/train",
                   help="images posted to /v1/learn (every 4th request; must not be calibration images; '' for none)")
    p.add_argument("--calibration-limit", type=int, default=100)
    p.add_argument("--swap-every", type=float, default=5.0, help="seconds between learned versions")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--out", default="serve/results/loadtest.json")
    p.add_argument("--md", default="serve/RESULTS.md")
    args = p.parse_args(argv)
    rec = record(args, asyncio.run(run(args)))
    atomic_write_bytes(args.out, (json.dumps(rec, indent=1) + "\n").encode())
    atomic_write_bytes(args.md, (markdown(rec) + later_sections(args.md)).encode())
    print(markdown(rec))
    return 0 if rec["result"]["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
