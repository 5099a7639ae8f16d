"""Record the lean-graph and int8 figures of issue 17 (bench/RESULTS.md, "Lean graphs and int8").

    flock /work/runs/bench.lock python -m aekit.bench.lean --out bench/results/lean17 [--int8 models/x-int8 ...]
For every shipped model: encoder and decoder time of the shipped (exporter's) graph vs the same
graph through export/lean.py (and, for models with ConvTranspose, lean without the sub-pixel
rewrite), interleaved in one run at one onnxruntime thread, as ratios; GFLOP/MP of each; the
share of decode time in the final conv (onnxruntime profiling). --int8 folders (exports made
with --int8) get their int8 speed-up re-measured the same way, beside the PSNR loss they record.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from aekit import zoo
from aekit.export.lean import DEFAULT_PASSES, lean_file
from aekit.export.manifest import load_manifest
from aekit.export.speed import count_macs, one_thread_session, side_for, time_calls

CONV_OPS = ("Conv", "FusedConv", "NchwcConv", "QLinearConv", "ConvTranspose")


def _feeds(m: dict[str, Any], side: int) -> dict[str, dict[str, np.ndarray]]:
    s, f = side_for(m["factor"], side), m["factor"]
    rng = np.random.default_rng(0)
    return {"encoder": {"x": rng.uniform(-1, 1, (1, m["channels"], s, s)).astype(np.float32)},
            "decoder": {"y_hat": rng.uniform(-1, 1, (1, m["latent_channels"], s // f, s // f)).astype(np.float32)}}


def final_conv_share(path: Path, feeds: dict[str, np.ndarray], runs: int = 5) -> dict[str, Any]:
    """Share of node time in the last-executed convolution, and time by operator (onnxruntime profiler)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        so.profile_file_prefix = str(Path(tmp) / "p")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    nodes = sorted((e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")), key=lambda e: e["ts"])
    nodes = nodes[len(nodes) // (runs + 1):]  # drop the first (warm-up) run
    total = sum(e["dur"] for e in nodes)
    convs = [e for e in nodes if e.get("args", {}).get("op_name") in CONV_OPS]
    last = convs[-1]["name"] if convs else None
    by_op: dict[str, float] = {}
    for e in nodes:
        op = e.get("args", {}).get("op_name", "?")
        by_op[op] = by_op.get(op, 0) + e["dur"] / total
    return {"final_conv": last and last.removesuffix("_kernel_time"),
            "final_conv_share": round(sum(e["dur"] for e in nodes if e["name"] == last) / total, 3),
            "by_op": {k: round(v, 3) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])}}


def model_figures(name: str, side: int, seconds: float) -> dict[str, Any]:
    d = zoo.path(name)
    m = load_manifest(d)
    feeds = _feeds(m, side)
    s = side_for(m["factor"], side)
    out: dict[str, Any] = {"name": name, "arch": m.get("arch"), "side": s}
    with tempfile.TemporaryDirectory() as tmp:
        for part in ("encoder", "decoder"):
            variants = {"shipped": d / m["files"][part]}
            variants["lean"] = Path(tmp) / f"{part}-lean.onnx"
            shutil.copy(variants["shipped"], variants["lean"])
            counts = lean_file(variants["lean"])
            if counts.get("convtranspose_to_subpixel"):
                variants["lean_no_subpixel"] = Path(tmp) / f"{part}-lean-nosub.onnx"
                shutil.copy(variants["shipped"], variants["lean_no_subpixel"])
                lean_file(variants["lean_no_subpixel"], tuple(p for p in DEFAULT_PASSES if p != "convtranspose_to_subpixel"))
            best = time_calls([(one_thread_session(p), feeds[part]) for p in variants.values()], seconds)
            mp = s * s / 1e6
            out[part] = {"lean_passes": counts,
                         **{k: {"ms": round(t * 1e3, 2), "mp_per_s": round(mp / t, 3),
                                "gflop_per_mp": round(2 * count_macs(p, {k2: v.shape for k2, v in feeds[part].items()})["macs"] / 1e9 / mp, 3)}
                            for (k, p), t in zip(variants.items(), best)},
                         "speedup_lean": round(best[0] / best[1], 3)}
            if len(best) > 2:
                out[part]["speedup_lean_no_subpixel"] = round(best[0] / best[2], 3)
            if part == "decoder":
                out[part]["profile_shipped"] = final_conv_share(variants["shipped"], feeds[part])
                out[part]["profile_lean"] = final_conv_share(variants["lean"], feeds[part])
    return out


def int8_figures(d: Path, side: int, seconds: float) -> dict[str, Any]:
    m = load_manifest(d)
    q, feeds = m["int8"], _feeds(m, side)
    out = {"model": str(d), "model_id": m["model_id"], "side": side_for(m["factor"], side),
           **{k: q[k] for k in ("parts", "psnr_fp32_db", "psnr_int8_db", "psnr_loss_db", "psnr_int8_vs_fp32_db",
                                "check_images", "calibration_images", "calib_data", "check_data")}}
    for part in q["parts"]:
        t32, t8 = time_calls([(one_thread_session(d / m["files"][f"{part}_fp32"]), feeds[part]),
                              (one_thread_session(d / m["files"][part]), feeds[part])], seconds)
        out[f"{part}_speedup"] = round(t32 / t8, 3)
        out[f"{part}_ms"] = {"fp32": round(t32 * 1e3, 2), "int8": round(t8 * 1e3, 2)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m aekit.bench.lean", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for results.json")
    ap.add_argument("--models", nargs="*", default=None, help="shipped models (default: all)")
    ap.add_argument("--side", type=int, nargs="+", default=[256], help="image sides to time at (px)")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per part and side (interleaved)")
    ap.add_argument("--int8", nargs="*", default=[], type=Path, help="model folders exported with --int8")
    args = ap.parse_args(argv)
    import onnxruntime as ort

    from aekit.machine import cpu_name

    res: dict[str, Any] = {"command": "python -m aekit.bench.lean " + " ".join(argv or sys.argv[1:]),
                           "machine": {"cpu": cpu_name(), "onnxruntime": ort.__version__, "threads": 1}, "models": [], "int8": []}
    for name in args.models or zoo.names():
        for side in args.side:
            r = model_figures(name, side, args.seconds)
            res["models"].append(r)
            print(name, side, json.dumps({p: {k: v for k, v in r[p].items() if not k.startswith("profile")} for p in ("encoder", "decoder")}), flush=True)
    for d in args.int8:
        for side in args.side:
            r = int8_figures(d, side, args.seconds)
            res["int8"].append(r)
            print(json.dumps(r), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
