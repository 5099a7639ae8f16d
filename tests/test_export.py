"""Export: ONNX parity with PyTorch for both ratios and channel counts, manifest, runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aekit.cli import main
from aekit.export.manifest import ModelError, find_model, load_manifest
from aekit.export.runtime import Runtime


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("ratio", [4, 9])
def test_export_parity_and_manifest(tiny_model, channels, ratio):
    m = load_manifest(tiny_model(channels, ratio))
    assert m["ratio"] == ratio and m["channels"] == channels and m["factor"] == {4: 4, 9: 6}[ratio]
    v = m["verification"]
    assert v["encoder_max_abs_err"] < 1e-4 and v["decoder_max_abs_err"] < 1e-4 and v["images"] >= 4
    assert len(m["model_id"]) == 16 and m["opset"] == 18
    assert np.array(m["latent_hist"]).shape == (m["latent_channels"], 256)


@pytest.mark.parametrize("ratio", [4, 9])
def test_runtime_round_trip_odd_sizes_on_real_images(tiny_model, rgb_photos, ratio):
    rt = Runtime(tiny_model(3, ratio), device="cpu")
    img = rgb_photos[0][:61, :83]  # not a multiple of 4 or 6
    y = rt.encode(img[None])
    assert y.shape == (1, rt.latent_channels, -(-61 // rt.factor), -(-83 // rt.factor))
    q = rt.quantise(y)
    assert q.dtype == np.uint8 and np.abs(rt.dequantise(q) - y).max() <= 1 / 255 + 1e-6
    out = rt.reconstruct(img[None])
    assert out.shape == (1, 61, 83, 3) and out.dtype == np.uint8


def test_latent_elements_are_input_over_ratio(tiny_model):
    for channels, ratio in [(1, 4), (1, 9), (3, 4), (3, 9)]:
        rt = Runtime(tiny_model(channels, ratio), device="cpu")
        f = rt.factor
        y = rt.encode(np.zeros((1, 4 * f, 5 * f, channels), np.uint8))
        assert y.size * ratio == 4 * f * 5 * f * channels


def test_export_refuses_overwrite_and_failed_verification(train_tiny, tmp_path, monkeypatch, capsys):
    run = train_tiny(1, 4)
    out = tmp_path / "m"
    assert main(["export", str(run / "best.pt"), "--out", str(out), "--fp16"]) == 0
    m = load_manifest(out)
    assert {"encoder_fp16", "decoder_fp16"} <= set(m["files"])
    assert main(["export", str(run / "best.pt"), "--out", str(out)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    notes = tmp_path / "notes"  # --force replaces a model folder, never a folder of something else
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    assert main(["export", str(run / "best.pt"), "--out", str(notes), "--force"]) == 2
    assert "is not a model folder" in capsys.readouterr().err and (notes / "todo.txt").read_text() == "keep me"
    import aekit.export.onnx

    monkeypatch.setattr(aekit.export.onnx, "PARITY_TOL", 0.0)
    assert main(["export", str(run / "best.pt"), "--out", str(tmp_path / "m2")]) == 2
    assert "onnxruntime disagrees with PyTorch" in capsys.readouterr().err
    assert not (tmp_path / "m2").exists() and not list(tmp_path.glob(".m2*"))


def test_info_of_a_checkpoint_counts_epochs_as_training_prints_them(train_tiny, capsys):
    """`aekit info RUN/best.pt`: readable lines (model, the epoch it was saved after and its best one,
    counted from 1 as training prints them, the run's summary); --json gives the same fields."""
    import json as _json

    run = train_tiny(1, 9, "")
    best = run / "best.pt"
    from aekit.checkpoint import load_checkpoint

    c = load_checkpoint(best)
    assert main(["info", str(best)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"checkpoint   {best}") and "model        arch " in text
    assert f"saved        after epoch {c['epoch'] + 1}; best validation so far: epoch {c['best_epoch'] + 1}" in text
    assert f"best_epoch {c['summary']['best_epoch']}" in text and "{" not in text
    assert main(["info", str(best), "--json"]) == 0
    got = _json.loads(capsys.readouterr().out)
    assert got["best_epoch"] == c["best_epoch"] + 1 == c["summary"]["best_epoch"]


def test_info_and_find_model(tiny_model, tmp_path, capsys):
    model = tiny_model(1, 9)
    assert main(["info", str(model)]) == 0
    text = capsys.readouterr().out
    assert "ratio        1/9: 4 latent channels at H/6" in text and "verified" in text
    assert main(["info", str(model), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ratio"] == 9
    mid = load_manifest(model)["model_id"]
    assert find_model(mid, [model.parent]) == model
    with pytest.raises(ModelError, match="model 0000 not found"):
        find_model("0000", [model.parent])
    assert main(["info", str(tmp_path)]) == 2
    assert "not an aekit model folder" in capsys.readouterr().err
    from aekit.export.manifest import describe

    m = load_manifest(model)
    assert f"trained      on {m['training']['data']} (" in describe(m)  # the folder is here: shown as recorded
    m["training"]["data"] = "/home/trainer/work/data/photos/train"  # a shipped model's: not on this machine
    assert "trained      on data/photos/train (" in describe(m) and "; the trainer's folder, not on this machine)" in describe(m)
