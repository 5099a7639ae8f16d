"""Lean graphs, int8 export and speed fields (issue 17): exact rewrites, the int8 quality check, manifests."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from aekit.cli import main  # noqa: E402
from aekit.export.lean import PASSES, lean_file  # noqa: E402
from aekit.export.manifest import load_manifest  # noqa: E402
from aekit.export.runtime import Runtime  # noqa: E402

ARCHS = [  # (ModelConfig overrides, graph ops the lean decoder must not keep)
    ({"arch": "dcgan", "ratio": 4}, {"BatchNormalization"}),
    ({"arch": "dcgan", "ratio": 9}, {"BatchNormalization"}),
    ({"arch": "dcgan", "ratio": 4, "upsample": "transpose"}, {"BatchNormalization", "ConvTranspose"}),
    ({"arch": "dcgan", "ratio": 9, "upsample": "transpose"}, {"BatchNormalization", "ConvTranspose"}),
    ({"arch": "gdn", "ratio": 4}, {"ConvTranspose", "Div"}),
    ({"arch": "gdn", "ratio": 9}, {"ConvTranspose", "Div"}),
    ({"arch": "klt", "ratio": 4}, {"ConvTranspose"}),
]


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("over,gone", ARCHS, ids=lambda v: "-".join(map(str, v.values())) if isinstance(v, dict) else "")
def test_lean_graph_matches_pytorch(tmp_path, over, gone):
    """Every pass, the opt-in sub-pixel rewrite included: random weights and BatchNorm statistics
    (so folding is not the identity), odd latent sizes."""
    from aekit.config import ModelConfig
    from aekit.export.onnx import _Decode, _Encode, _to_onnx
    from aekit.export.runtime import make_session
    from aekit.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(channels=3, width=8, **over))
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5), mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5), mod.bias.uniform_(-0.3, 0.3)
    model = model.eval()
    f, cy = model.cfg.factor, model.cfg.latent_channels
    x = torch.rand(2, 3, 3 * f, 5 * f) * 2 - 1
    y = torch.round(torch.randn(2, cy, 3, 5) * 2)
    for net, name_in, name_out, inp, ref in ((_Encode(model), "x", "y", x, model.encode), (_Decode(model), "y_hat", "x_hat", y, model.decode)):
        path = tmp_path / f"{name_out}.onnx"
        _to_onnx(net.eval(), inp, name_in, name_out, path)
        counts = lean_file(path, PASSES)
        with torch.no_grad():
            want = ref(inp).numpy()
        got = make_session(path, ["CPUExecutionProvider"]).run(None, {name_in: inp.numpy()})[0]
        assert np.abs(got - want).max() < 1e-4, (name_out, counts)
    assert counts and not (_ops(tmp_path / "x_hat.onnx") & gone), _ops(tmp_path / "x_hat.onnx")


def test_export_manifest_has_lean_graph_and_speed(tiny_model, capsys):
    d = tiny_model(1, 4)
    m = load_manifest(d)
    assert "BatchNormalization" not in _ops(d / m["files"]["decoder"])
    assert m["graph"]["lean"]["decoder"]["fold_bn_through_d2s"] >= 1
    sp = m["speed"]
    assert sp["gflop_per_mp"]["encoder"] > 0 and sp["gflop_per_mp"]["decoder"] > 0
    assert sp["mp_per_s"]["decoder"] > 0 and sp["measured_on"]["threads"] == 1
    assert main(["info", str(d)]) == 0
    assert "GFLOP/MP" in capsys.readouterr().out


def test_no_lean_keeps_the_exporters_graph(train_tiny, tmp_path):
    out = tmp_path / "plain"
    assert main(["export", str(train_tiny(1, 4) / "best.pt"), "--out", str(out), "--no-lean", "--no-speed"]) == 0
    m = load_manifest(out)
    assert m["graph"] == {"lean": False} and "mp_per_s" not in m["speed"]
    assert "BatchNormalization" in _ops(out / "decoder.onnx")


def test_int8_export_round_trips_and_records_its_loss(train_tiny, tmp_path, rgb_photos):
    run = train_tiny(3, 4)
    out = tmp_path / "int8"
    assert main(["export", str(run / "best.pt"), "--out", str(out), "--int8", "--int8-max-loss", "3", "--no-speed"]) == 0
    m = load_manifest(out)
    assert m["files"]["decoder"] == "decoder_int8.onnx" and m["files"]["encoder"] == "encoder.onnx"
    q = m["int8"]
    assert q["parts"] == ["decoder"] and q["symbols_changed"] == 0 and q["psnr_loss_db"] <= 3
    assert q["check_images"] >= 1 and q["calibration_images"] >= 1 and q["speedup"]["decoder"] > 0
    assert "QuantizeLinear" in _ops(out / "decoder_int8.onnx")
    rt32, rt8 = Runtime(out, device="cpu"), Runtime(out, device="cpu")
    import onnxruntime as ort

    rt32.decoder = ort.InferenceSession(str(out / "decoder.onnx"), providers=["CPUExecutionProvider"])
    img = rgb_photos[0][:48, :64]
    a, b = rt32.reconstruct(img[None])[0], rt8.reconstruct(img[None])[0]
    from aekit.metrics import psnr

    assert b.shape == img.shape and psnr(a, b) > 25  # int8 close to fp32 (tiny model, 3 epochs)
    # a fp32 export of the same checkpoint is a different model: the ids differ
    assert main(["export", str(run / "best.pt"), "--out", str(tmp_path / "fp32"), "--no-speed"]) == 0
    assert load_manifest(tmp_path / "fp32")["model_id"] != m["model_id"]


def test_int8_refuses_an_impossible_threshold(train_tiny, tmp_path, capsys):
    out = tmp_path / "refused"
    argv = ["export", str(train_tiny(1, 4) / "best.pt"), "--out", str(out), "--int8", "--int8-max-loss", "-5", "--no-speed"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "over --int8-max-loss -5 dB; the model was not written" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".refused*"))
    assert main(["export", str(train_tiny(1, 4) / "best.pt"), "--out", str(out), "--int8-encoder"]) == 2
    assert "only apply with --int8" in capsys.readouterr().err


def test_int8_encoder_is_flagged(train_tiny, tmp_path, capsys):
    out = tmp_path / "enc8"
    assert main(["export", str(train_tiny(1, 4) / "best.pt"), "--out", str(out), "--int8", "--int8-encoder",
                 "--int8-max-loss", "5", "--no-speed"]) == 0
    m = load_manifest(out)
    assert m["int8"]["parts"] == ["encoder", "decoder"] and m["files"]["encoder_fp32"] == "encoder.onnx"
    assert main(["info", str(out)]) == 0
    assert "symbols may differ between machines" in capsys.readouterr().out
    json.dumps(m)  # the manifest stays plain JSON


def test_fp16_storage_pass_keeps_the_function_and_fp32_compute(tmp_path):
    """store_weights_fp16: large fp32 initializers become fp16 + Cast, small ones and fp16-overflowing ones stay
    fp32; outputs equal the same graph with fp16-rounded weights; GFLOP counting still sees the weights."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from aekit.export.speed import count_macs
    from aekit.export.storage import store_weights_fp16

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.1, (8, 4, 3, 3)).astype(np.float32)
    big = np.full((32, 8, 1, 1), 1e6, np.float32)  # beyond fp16's 65504: must stay fp32
    b = rng.normal(0, 0.1, 8).astype(np.float32)  # 8 elements: below the size limit
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["h", "big"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 16, 16])],
                          [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (big, "big"), (b, "b"))])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    before = count_macs(path, {"x": (1, 4, 16, 16)})["macs"]
    x = rng.normal(0, 1, (1, 4, 16, 16)).astype(np.float32)
    info = store_weights_fp16(path, min_elements=64)
    assert info == {"tensors": 1, "bytes_saved": w.nbytes // 2}
    m = onnx.load(str(path))
    kinds = {t.name: t.data_type for t in m.graph.initializer}
    assert kinds == {"w__fp16": TensorProto.FLOAT16, "big": TensorProto.FLOAT, "b": TensorProto.FLOAT}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(float)" and sess.get_outputs()[0].type == "tensor(float)"
    w16 = w.astype(np.float16).astype(np.float32)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w16), torch.from_numpy(b), padding=1)
    ref = torch.nn.functional.conv2d(ref, torch.from_numpy(big)).numpy()
    got = sess.run(None, {"x": x})[0]
    assert np.allclose(got, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    assert count_macs(path, {"x": (1, 4, 16, 16)})["macs"] == before


def test_int8_uses_7_bit_weights_and_old_8_bit_networks_run_without_int8_kernels_on_cpus_without_vnni(
        train_tiny, tmp_path, caplog, monkeypatch):
    """export --int8 records the 7-bit weight range (reduce_range: no u8s8 saturation without VNNI) and its
    weights stay within ±64 steps; a manifest whose int8 scheme lacks it, on a CPU without VNNI, gets sessions
    without onnxruntime's integer kernels and one warning per model; with VNNI, or 7-bit weights, neither."""
    import logging

    import onnx
    from onnx import numpy_helper

    import aekit.export.runtime as runtime

    run = train_tiny(3, 4)
    out = tmp_path / "int8"
    assert main(["export", str(run / "best.pt"), "--out", str(out), "--int8", "--int8-max-loss", "3", "--no-speed"]) == 0
    m = load_manifest(out)
    assert "reduce_range" in m["int8"]["scheme"]
    g = onnx.load(str(out / "decoder_int8.onnx")).graph
    w8 = [numpy_helper.to_array(t) for t in g.initializer if t.data_type == onnx.TensorProto.INT8]
    assert w8 and max(int(np.abs(w.astype(np.int16)).max()) for w in w8) <= 64
    monkeypatch.setattr(runtime, "cpu_lacks_vnni", lambda: True)
    caplog.set_level(logging.WARNING)
    assert not Runtime(out, device="cpu")._decoders.no_int8_kernels  # 7-bit: the integer kernels are safe
    assert "8-bit weights" not in caplog.text
    mpath = out / "manifest.json"
    raw = json.loads(mpath.read_text())
    raw["int8"]["scheme"] = "onnxruntime static QDQ: int8 weights per output channel"  # as before reduce_range
    mpath.write_text(json.dumps(raw))
    rt = Runtime(out, device="cpu")
    assert rt._decoders.no_int8_kernels and not rt._encoders.no_int8_kernels  # the fp32 encoder is untouched
    Runtime(out, device="cpu")
    assert caplog.text.count("full-range 8-bit weights") == 1 and m["model_id"] in caplog.text
    import onnxruntime as ort

    assert rt.decoder.get_session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    caplog.clear()
    monkeypatch.setattr(runtime, "cpu_lacks_vnni", lambda: False)
    assert not Runtime(out, device="cpu")._decoders.no_int8_kernels and "8-bit" not in caplog.text
