"""FLOP counting from ONNX graphs, the peak table, and the pixel-wrapped graphs the bench runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from aekit.bench.flops import count_macs, gpu_peak_tflops, peak_activation_bytes  # noqa: E402


def _w(name: str, shape: tuple[int, ...]):
    return numpy_helper.from_array(np.zeros(shape, np.float32), name)


def synthetic(path: Path) -> Path:
    """x (N,4,8,8) -> grouped conv -> transposed conv -> flatten -> matmul -> gemm."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2),  # (N,6,8,8)
        helper.make_node("ConvTranspose", ["a", "w2"], ["b"], kernel_shape=[2, 2], strides=[2, 2]),  # (N,5,16,16)
        helper.make_node("Reshape", ["b", "shape"], ["c"]),  # (N, 1280)
        helper.make_node("MatMul", ["c", "w3"], ["d"]),  # (N, 10)
        helper.make_node("Gemm", ["d", "w4"], ["e"]),  # (N, 3)
    ]
    inits = [_w("w1", (6, 2, 3, 3)), _w("w2", (6, 5, 2, 2)), _w("w3", (1280, 10)), _w("w4", (10, 3)),
             numpy_helper.from_array(np.array([-1, 1280], np.int64), "shape")]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, "H", "W"])],
                          [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_counts_each_op_by_hand(tmp_path):
    p = synthetic(tmp_path / "t.onnx")
    n = 3
    got = count_macs(p, {"x": (n, 4, 8, 8)})
    conv = n * 6 * 8 * 8 * (2 * 3 * 3)  # every output element: Cin/group x k x k
    convt = n * 6 * 8 * 8 * (5 * 2 * 2)  # every input element scatters Cout x k x k
    assert got["by_op"] == {"Conv": conv, "ConvTranspose": convt, "MatMul": n * 10 * 1280, "Gemm": n * 3 * 10}
    assert got["macs"] == conv + convt + n * 10 * 1280 + n * 3 * 10


def test_runtime_fallback_agrees(tmp_path, monkeypatch):
    import aekit.export.speed as fl  # the counter lives in the export layer (bench.flops re-exports it)

    p = synthetic(tmp_path / "t.onnx")
    want = count_macs(p, {"x": (2, 4, 8, 8)})
    monkeypatch.setattr(fl, "_inferred_shapes", lambda model, shapes: {})
    got = count_macs(p, {"x": (2, 4, 8, 8)})
    assert got["method"] == "onnxruntime run" and got["macs"] == want["macs"]


def test_exported_model_matches_its_architecture(tiny_model):
    """dcgan width 8, blocks 0, RGB, f=4: three encoder convs, hand-counted at 32x32."""
    d = tiny_model(3, 4)
    got = count_macs(d / "encoder.onnx", {"x": (1, 3, 32, 32)})["macs"]
    want = 16 * 16 * 8 * (3 * 4 * 4) + 8 * 8 * 16 * (8 * 4 * 4) + 8 * 8 * 12 * (16 * 3 * 3)
    assert got == want
    dec = count_macs(d / "decoder.onnx", {"y_hat": (2, 12, 8, 8)})["macs"]
    assert dec > 0 and dec % 2 == 0  # batch 2: twice one image
    assert dec == 2 * count_macs(d / "decoder.onnx", {"y_hat": (1, 12, 8, 8)})["macs"]
    assert peak_activation_bytes(d / "decoder.onnx", {"y_hat": (1, 12, 8, 8)}) > 0


def test_peak_table():
    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3", "fp16") == pytest.approx(989.4)
    assert gpu_peak_tflops("NVIDIA H100 PCIe", "fp16") == pytest.approx(756.0)  # most specific name wins
    assert gpu_peak_tflops("NVIDIA A10G", "fp32") == pytest.approx(31.2)  # A10G is not the A10
    assert gpu_peak_tflops("NVIDIA GeForce RTX 4090", "bf16") == pytest.approx(165.2)
    assert gpu_peak_tflops("Some Unknown GPU", "fp16") is None


def test_pixel_graphs_match_the_runtime(tiny_model, rgb_photos):
    """uint8 NHWC in and out, bit-exact with aekit.export.runtime's numpy pre/post-processing (fp32)."""
    import onnxruntime as ort

    from aekit.bench.graphs import pixel_decoder, pixel_encoder
    from aekit.bench.inputs import fit
    from aekit.export.runtime import Runtime

    d = tiny_model(3, 4)
    rt = Runtime(d, device="cpu")
    images = np.stack([fit(im, 48, 64) for im in rgb_photos])
    enc = ort.InferenceSession(pixel_encoder(onnx.load(str(d / "encoder.onnx")), 3).SerializeToString(),
                               providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(pixel_decoder(onnx.load(str(d / "decoder.onnx"))).SerializeToString(),
                               providers=["CPUExecutionProvider"])
    y = enc.run(None, {"pixels": images})[0]
    np.testing.assert_array_equal(y, rt.encode(images))
    y_hat = rt.dequantise(rt.quantise(y))
    px = dec.run(None, {"y_hat": y_hat})[0]
    assert px.dtype == np.uint8 and px.shape == images.shape
    np.testing.assert_array_equal(px, rt.decode(y_hat))
