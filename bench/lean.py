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
from aekit.export.lean import DEFAULT_PASSES, PASSES, lean_file
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


def exporter_graphs(checkpoint: Path, out: Path) -> dict[str, Path]:
    """encoder.onnx / decoder.onnx of a checkpoint exactly as torch's exporter writes them (no lean passes)."""
    import torch

    from aekit.checkpoint import load_model
    from aekit.export.onnx import _Decode, _Encode, _to_onnx

    model = load_model(checkpoint)[0].float().eval()
    f, cfg = model.cfg.factor, model.cfg
    _to_onnx(_Encode(model).eval(), torch.zeros(2, cfg.channels, 4 * f, 4 * f).uniform_(-1, 1), "x", "y", out / "encoder.onnx")
    _to_onnx(_Decode(model).eval(), torch.zeros(2, cfg.latent_channels, 4, 4).uniform_(-1, 1), "y_hat", "x_hat", out / "decoder.onnx")
    return {"encoder": out / "encoder.onnx", "decoder": out / "decoder.onnx"}


def model_figures(name: str, side: int, seconds: float, checkpoint: Path | None = None) -> dict[str, Any]:
    """Shipped graph (or, with checkpoint, the exporter's graph of that checkpoint: "before") vs lean,
    with a second copy of the first as a control: its ratio shows the timing noise of the run."""
    d = zoo.path(name)
    m = load_manifest(d)
    feeds = _feeds(m, side)
    s = side_for(m["factor"], side)
    out: dict[str, Any] = {"name": name, "arch": m.get("arch"), "side": s, "before": str(checkpoint or "shipped graph")}
    with tempfile.TemporaryDirectory() as tmp:
        before = exporter_graphs(checkpoint, Path(tmp)) if checkpoint else {p: d / m["files"][p] for p in ("encoder", "decoder")}
        for part in ("encoder", "decoder"):
            variants = {"shipped": before[part]}
            variants["lean"] = Path(tmp) / f"{part}-lean.onnx"
            shutil.copy(variants["shipped"], variants["lean"])
            counts = lean_file(variants["lean"], PASSES)  # every pass (the recorded "lean" column)
            if counts.get("convtranspose_to_subpixel"):
                variants["lean_no_subpixel"] = Path(tmp) / f"{part}-lean-nosub.onnx"
                shutil.copy(variants["shipped"], variants["lean_no_subpixel"])
                lean_file(variants["lean_no_subpixel"], DEFAULT_PASSES)  # the export default
            variants["control"] = variants["shipped"]  # the same graph again: the noise floor of the ratios
            got = [one_thread_session(p).run(None, feeds[part])[0] for p in variants.values()]
            out[part + "_max_abs_diff"] = float(max(np.abs(g - got[0]).max() for g in got))
            best = time_calls([(one_thread_session(p), feeds[part]) for p in variants.values()], seconds)
            mp = s * s / 1e6
            out[part] = {"lean_passes": counts,
                         **{k: {"ms": round(t * 1e3, 2), "mp_per_s": round(mp / t, 3),
                                "gflop_per_mp": round(2 * count_macs(p, {k2: v.shape for k2, v in feeds[part].items()})["macs"] / 1e9 / mp, 3)}
                            for (k, p), t in zip(variants.items(), best)},
                         "speedup_lean": round(best[0] / best[1], 3), "control_ratio": round(best[0] / best[-1], 3)}
            if len(best) > 3:
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
    ap.add_argument("--checkpoint", action="append", default=[], help="NAME=PATH: time NAME's graph as torch "
                    "exports PATH (its training checkpoint) as the 'before', e.g. when the shipped one is already lean")
    ap.add_argument("--int8", nargs="*", default=[], type=Path, help="model folders exported with --int8")
    args = ap.parse_args(argv)
    import onnxruntime as ort

    from aekit.machine import cpu_name

    res: dict[str, Any] = {"command": "python -m aekit.bench.lean " + " ".join(argv or sys.argv[1:]),
                           "machine": {"cpu": cpu_name(), "onnxruntime": ort.__version__, "threads": 1}, "models": [], "int8": []}
    ckpts = dict(c.split("=", 1) for c in args.checkpoint)
    for name in zoo.names() if args.models is None else args.models:  # --models with no names: int8 only
        for side in args.side:
            r = model_figures(name, side, args.seconds, Path(ckpts[name]) if name in ckpts else None)
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
