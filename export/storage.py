"""Half-size model files: fp32 weights stored as fp16 in the ONNX file, cast back to fp32 in the graph.

    info = store_weights_fp16("decoder.onnx")   # rewrites in place, returns counts and bytes saved
Every float32 initializer of at least MIN_ELEMENTS elements is rounded to float16 and read through
a Cast node back to float32, so the file is about half the size while the graph still computes in
fp32 (onnxruntime's constant folding turns the Casts back into fp32 weights when the session is
built: same kernels, same speed). The rounding is the only change: relative weight error at most
2^-11 (IEEE 754 binary16), measured on the photo models as a decoded-image change far below the
codec's own error (README: Export). Values outside fp16's range keep fp32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MIN_ELEMENTS = 1024  # smaller tensors (biases, GDN betas) stay fp32: they are a few KB in all
FP16_MAX = float(np.finfo(np.float16).max)


def store_model_fp16(model: Any, min_elements: int = MIN_ELEMENTS) -> dict[str, int]:
    """Rewrite an onnx ModelProto in place; returns {"tensors": n converted, "bytes_saved": b}.

    Raises ValueError if the graph already has a value named like a converted copy.
    """
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    names = {t.name for t in g.initializer} | {v for n in g.node for v in (*n.input, *n.output)}
    casts, saved, count = [], 0, 0
    for t in list(g.initializer):
        if t.data_type != TensorProto.FLOAT or int(np.prod(t.dims, dtype=np.int64)) < min_elements:
            continue
        w = numpy_helper.to_array(t)
        if not np.isfinite(w).all() or np.abs(w).max() > FP16_MAX:
            continue  # would overflow fp16: keep this tensor exact
        half = f"{t.name}__fp16"
        if half in names:
            raise ValueError(f"graph already has a value named {half}")
        g.initializer.remove(t)
        g.initializer.append(numpy_helper.from_array(w.astype(np.float16), half))
        casts.append(helper.make_node("Cast", [half], [t.name], to=TensorProto.FLOAT, name=f"{t.name}__cast"))
        saved += w.nbytes // 2
        count += 1
    for i, node in enumerate(casts):  # first in the node list: the graph stays topologically sorted
        g.node.insert(i, node)
    return {"tensors": count, "bytes_saved": saved}


def store_weights_fp16(path: str | Path, min_elements: int = MIN_ELEMENTS) -> dict[str, int]:
    """store_model_fp16 on an ONNX file, rewritten in place (the caller writes into a temp folder)."""
    import onnx

    model = onnx.load(str(path))
    info = store_model_fp16(model, min_elements)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return info


def unstore_model_fp16(model: Any) -> int:
    """Undo store_model_fp16 on an onnx ModelProto in place: every Cast-to-float32 of a float16
    initializer becomes a float32 initializer of the Cast's output name, holding exactly the values
    the stored graph computes with (fp16 -> fp32 is exact). Returns the number of tensors restored.
    Used where a tool needs plain fp32 weights, e.g. int8 quantisation (`aekit add-int8`)."""
    from onnx import TensorProto, numpy_helper

    g = model.graph
    halves = {t.name: t for t in g.initializer if t.data_type == TensorProto.FLOAT16}
    done = 0
    for node in list(g.node):
        if node.op_type != "Cast" or node.input[0] not in halves or \
                next((a.i for a in node.attribute if a.name == "to"), None) != TensorProto.FLOAT:
            continue
        w = numpy_helper.to_array(halves[node.input[0]]).astype(np.float32)
        g.node.remove(node)
        g.initializer.append(numpy_helper.from_array(w, node.output[0]))
        done += 1
    used = {v for n in g.node for v in n.input}
    for name, t in halves.items():
        if name not in used:
            g.initializer.remove(t)
    return done


def unstore_weights_fp16(path: str | Path) -> int:
    """unstore_model_fp16 on an ONNX file, rewritten in place; returns the tensors restored."""
    import onnx

    model = onnx.load(str(path))
    done = unstore_model_fp16(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return done


def weight_names(model: Any) -> set[str]:
    """Names of the graph's constant weights: initializers, and the Casts that read fp16-stored ones."""
    names = {t.name for t in model.graph.initializer}
    return names | {n.output[0] for n in model.graph.node if n.op_type == "Cast" and n.input[0] in names}
