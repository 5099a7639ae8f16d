"""aekit import: exported rate-distortion models back to training checkpoints (export/importer.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aekit.checkpoint import load_checkpoint, load_model
from aekit.cli import main
from aekit.config import ModelConfig


@pytest.fixture(scope="module")
def hp_run(tmp_path_factory, photos_dir):
    """A small gdn-hp model at 1/9, RD-trained for seconds on the bundled photos: (run folder, exported model)."""
    from aekit.data import DataConfig
    from aekit.export.onnx import export_model
    from aekit.train import TrainConfig, train

    run = tmp_path_factory.mktemp("imp-run")
    tcfg = TrainConfig(data=str(photos_dir), out=str(run), epochs=2, batch_size=8, lr=1e-3, seed=0, rate_weight=0.01,
                       data_cfg=DataConfig(resize="random-crop", size=96, repeat=2, workers=2))
    train(tcfg, ModelConfig(arch="gdn-hp", channels=3, ratio=9, width=16))
    return run, export_model(run / "best.pt", tmp_path_factory.mktemp("imp-model") / "hp", speed=False)


def _images() -> np.ndarray:
    import skimage.data

    return np.stack([skimage.data.astronaut()[:96, :120], skimage.data.coffee()[:96, :120]])


def test_imported_gdn_hp_reproduces_the_graphs_and_the_codec(hp_run, tmp_path):
    from aekit.codec.core import Codec
    from aekit.export.importer import import_model
    from aekit.export.onnx import export_model
    from aekit.export.runtime import Runtime

    run, model = hp_run
    rec = import_model(model, tmp_path / "imp.pt")
    assert rec["y_error"] < 1e-4 and rec["x_hat_error"] < 1e-4 and rec["h_s_error"] < 1e-4
    assert 0 <= rec["prior_excess_bits"] < 0.05  # the z prior refitted to the exported tables
    net, ckpt = load_model(tmp_path / "imp.pt")
    assert ckpt["summary"]["imported"]["model_id"] == rec["model_id"]
    # the latent gain is taken back out of the folded layers (same function, weights of the usual size)
    original = load_checkpoint(run / "best.pt")["state_dict"]
    assert float(net.y_gain) == pytest.approx(float(original["y_gain"]), rel=0.5)
    images = _images()
    x = torch.from_numpy(images.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)
    with torch.no_grad():
        y = net.encode(x).numpy()
    np.testing.assert_allclose(y, Runtime(model, "cpu").encode(images), atol=1e-4 * max(1.0, np.abs(y).max()))
    # exported again: the same symbols at the default quality, files within 2 %
    again = export_model(tmp_path / "imp.pt", tmp_path / "again", speed=False)
    a, b = Codec(model), Codec(again)
    assert np.array_equal(a.symbols(images), b.symbols(images))
    sizes = [sum(len(c.compress(im)) for im in images) for c in (a, b)]
    assert abs(sizes[1] - sizes[0]) <= 0.02 * sizes[0]


def test_training_goes_on_from_an_imported_model_where_its_run_stopped(hp_run, tmp_path, photos_dir):
    from aekit.data import DataConfig
    from aekit.export.importer import import_model
    from aekit.train import TrainConfig, train

    run, model = hp_run
    import_model(model, tmp_path / "imp.pt")
    src = load_checkpoint(run / "best.pt")["summary"]
    tcfg = TrainConfig(data=str(photos_dir), out=str(tmp_path / "ft"), epochs=1, batch_size=8, lr=1e-12, seed=0,
                       rate_weight=0.01, init_from=str(tmp_path / "imp.pt"), freeze_epochs=0,
                       data_cfg=DataConfig(resize="random-crop", size=96, repeat=2, workers=2))
    summary = train(tcfg, ModelConfig(arch="gdn-hp", channels=3, ratio=9, width=16))
    # the same validation split and crops: the imported weights score what the source run's best did
    assert summary["best_val_psnr"] == pytest.approx(src["best_val_psnr"], abs=0.05)


def test_a_factorized_model_with_residual_units_imports(gray_dir, tmp_path):
    from aekit.data import DataConfig
    from aekit.export.importer import import_model, train_flags
    from aekit.export.onnx import export_model
    from aekit.train import TrainConfig, train

    tcfg = TrainConfig(data=str(gray_dir / "train"), out=str(tmp_path / "run"), epochs=1, batch_size=32, lr=1e-3,
                       seed=0, rate_weight=0.005, data_cfg=DataConfig(resize="none", max_images=256, workers=2))
    train(tcfg, ModelConfig(arch="gdn", channels=1, ratio=4, width=8, res_blocks=1, down_factor=4))
    model = export_model(tmp_path / "run" / "best.pt", tmp_path / "g", speed=False)
    rec = import_model(model, tmp_path / "g.pt")
    assert rec["y_error"] < 1e-4 and rec["x_hat_error"] < 1e-4 and "h_s_error" not in rec
    assert rec["prior_excess_bits"] < 0.05  # the y prior refitted to every quality's tables
    assert train_flags(rec["model_config"]) == "--arch gdn --channels 1 --ratio 4 --width 8 --res-blocks 1 " \
                                               "--factor 4"
    net, _ = load_model(tmp_path / "g.pt")
    assert net.cfg.res_blocks == 1 and net.factor == 4


@pytest.mark.parametrize("name,why", [
    ("photos-r4", "a rescaled model (aekit rescale of photos-r9"),
    ("photos-r9-fast", "its encoder ships as int8 only"),
    ("fmnist-detect", "arch 'dcgan': only rate-distortion models"),
])
def test_models_it_cannot_import_get_one_line_and_exit_2(name, why, tmp_path, capsys):
    assert main(["import", name, "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and why in err[0] and not (tmp_path / "x.pt").exists()


def test_cli_prints_the_train_command_and_refuses_to_overwrite(hp_run, tmp_path, capsys):
    _, model = hp_run
    out = tmp_path / "imp.pt"
    assert main(["import", str(model), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fine-tune it: aekit train DATA --arch gdn-hp --channels 3 --ratio 9 --width 16 " \
           f"--init-from {out} --rate-weight" in text
    assert main(["import", str(model), "--out", str(out)]) == 2
    assert "exists (--force replaces it)" in capsys.readouterr().err
