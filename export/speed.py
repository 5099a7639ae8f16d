"""Speed as a model property: GFLOP per megapixel from the ONNX graph and measured MP/s.

    fields = model_speed(enc_path, dec_path, channels=3, latent_channels=192, factor=16)
Multiply-adds of Conv, ConvTranspose, MatMul and Gemm are counted at concrete shapes (ONNX shape
inference, else one onnxruntime run); FLOPs = 2 x MACs; element-wise ops are not counted. MP/s
is measured with onnxruntime's CPU provider at one intra-op thread (spinning off), best of
repeated calls on one SIDE x SIDE image, on the machine that runs this (named in the result).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from aekit.export.storage import weight_names

COUNTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
SPEED_SIDE = 256  # px: the image side GFLOP/MP and MP/s are stated at (rounded up to a multiple of f)


def count_macs(onnx_path: str | Path, input_shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """Multiply-adds of the counted ops at these input shapes: {'macs', 'by_op', 'method'}."""
    import onnx

    model = onnx.load(str(onnx_path))
    shapes = _inferred_shapes(model, input_shapes)
    method = "onnx shape inference"
    if not _have_all(model, shapes):
        shapes = _runtime_shapes(model, input_shapes)
        method = "onnxruntime run"
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    weights.update({n.output[0]: weights[n.input[0]] for n in model.graph.node
                    if n.op_type == "Cast" and n.input[0] in weights})  # fp16-stored weights (export/storage.py)
    by_op: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in COUNTED_OPS:
            macs = _node_macs(node, shapes, weights)
            by_op[node.op_type] = by_op.get(node.op_type, 0) + macs
    return {"macs": sum(by_op.values()), "by_op": by_op, "method": method}


def _node_macs(node: Any, shapes: dict[str, tuple[int, ...]], weights: dict[str, tuple[int, ...]]) -> int:
    w = weights.get(node.input[1]) or shapes[node.input[1]]
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    if node.op_type == "Conv":  # out (N, Co, *S) x (Ci/g * prod(k)) per output element
        return int(np.prod(shapes[node.output[0]], dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
    if node.op_type == "ConvTranspose":  # weight (Ci, Co/g, *k): every input element scatters Co/g * prod(k)
        return int(np.prod(shapes[node.input[0]], dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
    a = shapes[node.input[0]]
    k = a[-1] if not (node.op_type == "Gemm" and _attr(node, "transA")) else a[0]
    return int(np.prod(shapes[node.output[0]], dtype=np.int64)) * int(k)


def _attr(node: Any, name: str) -> int:
    return next((a.i for a in node.attribute if a.name == name), 0)


def _concrete(model: Any, input_shapes: dict[str, tuple[int, ...]]) -> Any:
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        if inp.name in input_shapes:
            dims = inp.type.tensor_type.shape.dim
            for d, v in zip(dims, input_shapes[inp.name]):
                d.Clear()
                d.dim_value = int(v)
    return m


def _inferred_shapes(model: Any, input_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    import onnx

    try:
        m = onnx.shape_inference.infer_shapes(_concrete(model, input_shapes), data_prop=True)
    except Exception:  # inference is best effort; the runtime fallback is exact
        return {}
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(d.dim_value for d in dims)
    return shapes


def _have_all(model: Any, shapes: dict[str, tuple[int, ...]]) -> bool:
    weights = weight_names(model)
    for node in model.graph.node:
        if node.op_type in COUNTED_OPS:
            needed = [node.input[0], node.output[0]] + ([] if node.input[1] in weights else [node.input[1]])
            if any(n not in shapes for n in needed):
                return False
    return True


def _runtime_shapes(model: Any, input_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Shapes of every counted op's tensors by running the graph once with them exposed as outputs."""
    import onnx
    import onnxruntime as ort

    m = _concrete(model, input_shapes)
    weights = weight_names(m)
    have = {o.name for o in m.graph.output}
    names = []
    for node in m.graph.node:
        if node.op_type in COUNTED_OPS:
            for n in (node.input[0], node.input[1], node.output[0]):
                if n not in weights and n not in have and n not in names and n not in input_shapes:
                    names.append(n)
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.zeros(input_shapes[i.name], dtype=np.float16 if "float16" in i.type else np.float32)
             for i in sess.get_inputs()}
    outs = sess.run(None, feeds)
    shapes = {n: tuple(v) for n, v in input_shapes.items()}
    shapes.update({o.name: tuple(v.shape) for o, v in zip(sess.get_outputs(), outs)})
    return shapes


def side_for(factor: int, side: int = SPEED_SIDE) -> int:
    """The smallest multiple of the model's factor f that is >= side (no padding in the measurement)."""
    return factor * -(-side // factor)


def gflop_per_mp(enc: str | Path, dec: str | Path, channels: int, latent_channels: int, factor: int,
                 side: int = SPEED_SIDE) -> dict[str, float]:
    """GFLOP per megapixel of input, encoder and decoder, counted at one side x side image (exact for
    any size that is a multiple of f: the networks are convolutional)."""
    s = side_for(factor, side)
    mp = s * s / 1e6
    e = count_macs(enc, {"x": (1, channels, s, s)})["macs"]
    d = count_macs(dec, {"y_hat": (1, latent_channels, s // factor, s // factor)})["macs"]
    return {"encoder": round(2 * e / 1e9 / mp, 3), "decoder": round(2 * d / 1e9 / mp, 3)}


def one_thread_session(path: str | Path) -> Any:
    """An onnxruntime CPU session at one intra-op thread with spinning off (what the figures assume)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def time_calls(runs: list[tuple[Any, dict[str, np.ndarray]]], seconds: float, min_calls: int = 3) -> list[float]:
    """Best seconds per call of each (session, feeds), calls interleaved round-robin so that load
    on a shared machine hits every entry alike; at least min_calls each, about `seconds` in all."""
    for sess, feeds in runs:  # warm-up: allocations, thread pool
        sess.run(None, feeds)
    best = [float("inf")] * len(runs)
    t_end, calls = time.perf_counter() + seconds, 0
    while calls < min_calls or time.perf_counter() < t_end:
        for i, (sess, feeds) in enumerate(runs):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            best[i] = min(best[i], time.perf_counter() - t0)
        calls += 1
    return best


def measure_mp_s(enc: str | Path, dec: str | Path, channels: int, latent_channels: int, factor: int,
                 side: int = SPEED_SIDE, seconds: float = 1.0) -> dict[str, float]:
    """Encoder and decoder megapixels per second (best call, one thread) on a random side x side image."""
    s = side_for(factor, side)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (1, channels, s, s)).astype(np.float32)
    y = rng.uniform(-1, 1, (1, latent_channels, s // factor, s // factor)).astype(np.float32)
    te, td = time_calls([(one_thread_session(enc), {"x": x}), (one_thread_session(dec), {"y_hat": y})], seconds)
    mp = s * s / 1e6
    return {"encoder": round(mp / te, 3), "decoder": round(mp / td, 3)}


def model_speed(enc: str | Path, dec: str | Path, channels: int, latent_channels: int, factor: int,
                side: int = SPEED_SIDE, seconds: float = 1.0, measure: bool = True) -> dict[str, Any]:
    """The manifest's / card's "speed" section: GFLOP/MP and (if measure) MP/s with the machine named.

    {"side": px, "gflop_per_mp": {"encoder", "decoder"}, "mp_per_s": {"encoder", "decoder"},
     "measured_on": {"cpu", "onnxruntime", "threads": 1}}; MP/s depend on the machine and its load.
    """
    import onnxruntime as ort

    from aekit.machine import cpu_name

    out: dict[str, Any] = {"side": side_for(factor, side),
                           "gflop_per_mp": gflop_per_mp(enc, dec, channels, latent_channels, factor, side)}
    if measure:
        out["mp_per_s"] = measure_mp_s(enc, dec, channels, latent_channels, factor, side, seconds)
        out["measured_on"] = {"cpu": cpu_name(), "onnxruntime": ort.__version__, "threads": 1,
                              "note": "onnxruntime CPU provider, 1 intra-op thread, best call"}
    return out


def speedup(pairs: dict[str, tuple[str | Path, str | Path, dict[str, np.ndarray]]], seconds: float = 1.0) -> dict[str, float]:
    """{name: (baseline.onnx, candidate.onnx, feeds)} -> {name: baseline time / candidate time},
    both timed in one interleaved run at one thread (a ratio, robust to the machine's load)."""
    out = {}
    for name, (base, cand, feeds) in pairs.items():
        if Path(base).resolve() == Path(cand).resolve():
            continue
        t0, t1 = time_calls([(one_thread_session(base), feeds), (one_thread_session(cand), feeds)], seconds)
        out[name] = round(t0 / t1, 3)
    return out
