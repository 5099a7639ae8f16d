"""Wrap the exported encoder/decoder so a device runs the whole pixel path.

    enc = pixel_encoder(onnx.load("models/m/encoder.onnx"), channels=3)  # uint8 NHWC -> float32 y
    dec = pixel_decoder(onnx.load("models/m/decoder.onnx"))              # float32 y_hat -> uint8 NHWC
Normalisation (x = p / 127.5 - 1), layout change and output rounding run inside the graph,
exactly as aekit.images does them in numpy, so 1 byte per pixel crosses the bus, not 4.
fp16 models get casts at the boundary: callers always see float32 latents.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ANY4 = ["d0", "d1", "d2", "d3"]  # rank-4, every dimension dynamic


def _elem_type(model: Any, name: str) -> int:
    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.name == name:
            return vi.type.tensor_type.elem_type
    raise ValueError(f"graph has no input/output named {name!r}")


def _wrap(model: Any, pre: Any | None, post: Any | None, in_name: str, out_name: str) -> Any:
    from onnx import compose

    m = model
    if pre is not None:
        m = compose.merge_models(pre, m, io_map=[("pre_out", in_name)], prefix1="pre_")
    if post is not None:
        m = compose.merge_models(m, post, io_map=[(out_name, "post_in")], prefix2="post_")
    return m


def _graph(model: Any, nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any]) -> Any:
    from onnx import helper

    g = helper.make_graph(nodes, "wrap", inputs, outputs, initializer=inits)
    return helper.make_model(g, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def pixel_encoder(model: Any, channels: int) -> Any:
    """encoder (x float (B,C,H,W) -> y) to (pixels uint8 (B,H,W,C) -> y float32)."""
    from onnx import TensorProto, helper, numpy_helper

    x_type = _elem_type(model, "x")
    y_type = _elem_type(model, "y")
    inits = [numpy_helper.from_array(np.array(1 / 127.5, dtype=np.float32), "scale"),
             numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")]
    nodes = [
        helper.make_node("Transpose", ["pixels"], ["nchw"], perm=[0, 3, 1, 2]),  # (B, C, H, W)
        helper.make_node("Cast", ["nchw"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "scale"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "one"], ["xf"]),  # same float32 ops as to_model_input
        helper.make_node("Cast", ["xf"], ["pre_out"], to=x_type),
    ]
    pre = _graph(model, nodes,
                 [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["B", "H", "W", channels])],
                 [helper.make_tensor_value_info("pre_out", x_type, ["B", channels, "H", "W"])], inits)
    post = None
    if y_type != TensorProto.FLOAT:
        post = _graph(model, [helper.make_node("Cast", ["post_in"], ["y32"], to=TensorProto.FLOAT)],
                      [helper.make_tensor_value_info("post_in", y_type, ANY4)],
                      [helper.make_tensor_value_info("y32", TensorProto.FLOAT, ANY4)], [])
    m = _wrap(model, pre, post, "x", "y")
    return _rename_output(_rename_input(m, "pixels"), "y")


def pixel_decoder(model: Any) -> Any:
    """decoder (y_hat -> x_hat float (B,C,H,W)) to (y_hat float32 -> pixels uint8 (B,H,W,C))."""
    from onnx import TensorProto, helper, numpy_helper

    in_type = _elem_type(model, "y_hat")
    out_type = _elem_type(model, "x_hat")
    pre = None
    if in_type != TensorProto.FLOAT:
        pre = _graph(model, [helper.make_node("Cast", ["y32"], ["pre_out"], to=in_type)],
                     [helper.make_tensor_value_info("y32", TensorProto.FLOAT, ANY4)],
                     [helper.make_tensor_value_info("pre_out", in_type, ANY4)], [])
    inits = [numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
             numpy_helper.from_array(np.array(127.5, dtype=np.float32), "half"),
             numpy_helper.from_array(np.array(0.0, dtype=np.float32), "lo"),
             numpy_helper.from_array(np.array(255.0, dtype=np.float32), "hi")]
    nodes = [
        helper.make_node("Cast", ["post_in"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["f", "one"], ["a"]),
        helper.make_node("Mul", ["a", "half"], ["b"]),
        helper.make_node("Round", ["b"], ["r"]),  # half to even, as np.rint
        helper.make_node("Clip", ["r", "lo", "hi"], ["c"]),
        helper.make_node("Cast", ["c"], ["u8"], to=TensorProto.UINT8),
        helper.make_node("Transpose", ["u8"], ["pixels"], perm=[0, 2, 3, 1]),  # (B, H, W, C)
    ]
    post = _graph(model, nodes, [helper.make_tensor_value_info("post_in", out_type, ANY4)],
                  [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["B", "H", "W", "C"])], inits)
    m = _wrap(model, pre, post, "y_hat", "x_hat")
    return _rename_output(_rename_input(m, "y_hat"), "pixels")


def _rename(m: Any, old: str, new: str) -> None:
    for node in m.graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
        node.output[:] = [new if o == old else o for o in node.output]
    for vi in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
        if vi.name == old:
            vi.name = new


def _rename_output(m: Any, name: str) -> Any:
    """Name the graph's (single) output `name`; an inner tensor already so named moves aside."""
    old = m.graph.output[0].name
    if old != name:
        _rename(m, name, f"{name}_inner")
        _rename(m, old, name)
    return m


def _rename_input(m: Any, name: str) -> Any:
    old = m.graph.input[0].name
    if old != name:
        _rename(m, name, f"{name}_inner")
        _rename(m, old, name)
    return m
