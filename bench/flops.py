"""Model FLOPs from the ONNX graph, and the device peak they are compared with.

    macs = count_macs("models/photos-r4/encoder.onnx", {"x": (1, 3, 256, 256)})
Counts multiply-adds of Conv, ConvTranspose, MatMul and Gemm at concrete input shapes
(shapes from ONNX shape inference, else one onnxruntime run); FLOPs = 2 x MACs.
Element-wise ops (activations, bias, pixel shuffle) are not counted, as is customary.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from aekit.export.storage import weight_names
from aekit.export.speed import (  # noqa: F401  (the counter lives in the export layer: manifests use it)
    COUNTED_OPS, _have_all, _inferred_shapes, _node_macs, _runtime_shapes, count_macs,
)

# Dense (no sparsity) peak TFLOP/s from the vendors' datasheets, by precision:
# fp16/bf16 on tensor cores with fp32 accumulate; tf32 tensor cores; fp32 CUDA cores.
# Matched against the device name, most specific key first.
GPU_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"fp16": 989.4, "bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"fp16": 756.0, "bf16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H100 NVL": {"fp16": 835.0, "bf16": 835.0, "tf32": 417.5, "fp32": 60.0},
    "H100": {"fp16": 989.4, "bf16": 989.4, "tf32": 494.7, "fp32": 66.9},  # SXM5
    "GH200": {"fp16": 989.4, "bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "B200": {"fp16": 2250.0, "bf16": 2250.0, "tf32": 1100.0, "fp32": 80.0},
    "A100": {"fp16": 312.0, "bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "A10G": {"fp16": 70.0, "bf16": 70.0, "tf32": 35.0, "fp32": 31.2},
    "A10": {"fp16": 125.0, "bf16": 125.0, "tf32": 62.5, "fp32": 31.2},
    "L40S": {"fp16": 362.0, "bf16": 362.0, "tf32": 183.0, "fp32": 91.6},
    "L40": {"fp16": 181.0, "bf16": 181.0, "tf32": 90.5, "fp32": 90.5},
    "L4": {"fp16": 121.0, "bf16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "T4": {"fp16": 65.0, "fp32": 8.1},
    "V100": {"fp16": 125.0, "fp32": 15.7},
    "RTX 6000 Ada": {"fp16": 364.2, "bf16": 364.2, "tf32": 182.1, "fp32": 91.1},
    "RTX A6000": {"fp16": 154.8, "bf16": 154.8, "tf32": 77.4, "fp32": 38.7},
    "RTX 5090": {"fp16": 209.5, "bf16": 209.5, "tf32": 104.8, "fp32": 104.8},
    "RTX 4090": {"fp16": 165.2, "bf16": 165.2, "tf32": 82.6, "fp32": 82.6},
    "RTX 4080": {"fp16": 97.5, "bf16": 97.5, "tf32": 48.7, "fp32": 48.7},
    "RTX 3090": {"fp16": 71.0, "bf16": 71.0, "tf32": 35.6, "fp32": 35.6},
    "RTX 3080": {"fp16": 59.5, "bf16": 59.5, "tf32": 29.8, "fp32": 29.8},
}


def gpu_peak_tflops(device_name: str, precision: str) -> float | None:
    """Datasheet dense peak for this GPU name and precision (fp32 uses the CUDA-core figure)."""
    for key in sorted(GPU_PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            table = GPU_PEAK_TFLOPS[key]
            return table.get(precision, table.get("fp16") if precision == "bf16" else None)
    return None


def measured_matmul_tflops(n: int = 2048, seconds: float = 0.5) -> float:
    """Achieved fp32 TFLOP/s of a large numpy matmul: the CPU's practical peak."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: thread pool start, page faults
    best, t_end = float("inf"), time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() > t_end:
            break
    return 2 * n**3 / best / 1e12


def measured_ort_matmul_tflops(n: int = 2048, seconds: float = 0.5, threads: int = 0) -> float:
    """Achieved fp32 TFLOP/s of an n x n x n MatMul in onnxruntime's CPU provider (the MLAS
    kernels our convolutions use), best call of `seconds`."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
                          [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "ab"],
                          [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal((n, n), dtype=np.float32) for k in "ab"}
    sess.run(None, feeds)
    best, t_end = float("inf"), time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        sess.run(None, feeds)
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() > t_end:
            break
    return 2 * n**3 / best / 1e12


def peak_activation_bytes(onnx_path: str | Path, input_shapes: dict[str, tuple[int, ...]]) -> int:
    """Estimated working memory of one run: the largest (inputs + outputs) of any node, in bytes.

    onnxruntime reuses buffers between nodes, so the biggest single layer bounds the peak
    from below; the bench multiplies by two for allocator slack before refusing a batch.
    """
    import onnx

    model = onnx.load(str(onnx_path))
    shapes = _inferred_shapes(model, input_shapes)
    if not shapes:
        shapes = _runtime_shapes(model, input_shapes)
    weights = weight_names(model)
    elem = 2 if "fp16" in Path(onnx_path).name else 4
    worst = 0
    for node in model.graph.node:
        names = [n for n in list(node.input) + list(node.output) if n and n not in weights and n in shapes]
        worst = max(worst, sum(int(np.prod(shapes[n], dtype=np.int64)) for n in names) * elem)
    return worst
