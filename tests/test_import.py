"""aekit import: exported rate-distortion models back to training checkpoints (export/importer.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aekit.checkpoint import load_checkpoint, load_model
from aekit.cli import main
from aekit.config import ModelConfig


@pytest.fixture(scope="module")
def hp_run(hp_model):
    """conftest's small gdn-hp model: (its run folder, the exported model)."""
    from pathlib import Path

    from aekit.export.manifest import load_manifest

    return Path(load_manifest(hp_model)["training"]["checkpoint"]).parent, hp_model


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
    ("photos-r9-fast", "its encoder ships as int8 only"),
    ("fmnist-detect", "arch 'dcgan': only rate-distortion models"),
])
def test_models_it_cannot_import_get_one_line_and_exit_2(name, why, tmp_path, capsys):
    assert main(["import", name, "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and why in err[0] and not (tmp_path / "x.pt").exists()


def test_a_rescaled_model_imports_as_its_source_transform_on_the_finer_grid(tmp_path, capsys):
    """photos-r4 (aekit rescale of photos-r9-g15 by 1.5): the checkpoint is the 1/9 source transform with grid_scale
    1.5, and that transform run on the image resampled 1.5x (Pillow's bicubic, as the graph's Resize) gives the
    shipped 1/4 model's y."""
    from aekit.export.manifest import resolve_model
    from aekit.export.runtime import Runtime
    from aekit.images import resample_matrix

    out = tmp_path / "r4.pt"
    assert main(["import", "photos-r4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "a rescaled model: its source transform (photos-r9-g15" in text and "--ratio 9 --width 128 --grid-scale 1.5 " \
        in text and "aekit rescale --ratio 4" in text
    net, ckpt = load_model(out)
    rec = ckpt["summary"]["imported"]
    assert rec["rescaled"]["grid_scale"] == 1.5 and rec["model_config"]["ratio"] == 9 and net.factor == 12
    assert ckpt["train_config"]["grid_scale"] == 1.5 and ckpt["summary"]["grid_scale"] == 1.5
    images = _images()  # 96 × 120: a multiple of photos-r4's 8 -> 144 × 180 on the source's grid, a multiple of 12
    x = images.astype(np.float32) / 127.5 - 1
    x = np.einsum("ph,bhwc,qw->bcpq", resample_matrix(96, 144), x, resample_matrix(120, 180)).astype(np.float32)
    with torch.no_grad():
        y = net.encode(torch.from_numpy(x)).numpy()
    y_ref = Runtime(resolve_model("photos-r4"), "cpu").encode(images)
    assert y.shape == y_ref.shape == (2, 48, 12, 15)
    np.testing.assert_allclose(y, y_ref, atol=1e-3 * np.abs(y_ref).max())


def test_cli_prints_the_train_command_and_refuses_to_overwrite(hp_run, tmp_path, capsys):
    _, model = hp_run
    out = tmp_path / "imp.pt"
    assert main(["import", str(model), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fine-tune it: aekit train DATA --arch gdn-hp --channels 3 --ratio 9 --width 16 " \
           f"--init-from {out} --rate-weight" in text
    assert main(["import", str(model), "--out", str(out)]) == 2
    assert "exists (--force replaces it)" in capsys.readouterr().err


def test_resample_matrices_are_pillows_bicubic_resize():
    from PIL import Image

    from aekit.images import resample_matrix

    x = np.random.default_rng(0).random((40, 52)).astype(np.float32)
    for h, w in ((60, 78), (27, 35)):  # enlarging, and shrinking (the kernel stretched: antialiased)
        ref = np.asarray(Image.fromarray(x, mode="F").resize((w, h), Image.Resampling.BICUBIC))
        np.testing.assert_allclose(resample_matrix(40, h) @ x @ resample_matrix(52, w).T, ref, atol=1e-5)
    with pytest.raises(ValueError, match="sizes must be >= 1"):
        resample_matrix(0, 3)


def test_grid_scale_trains_for_the_rescaled_grid_and_is_refused_where_it_means_nothing(gray_dir, tmp_path):
    from aekit.data import DataConfig
    from aekit.export.onnx import export_model
    from aekit.export.rescale import rescale_model
    from aekit.train import Trainer, TrainConfig, train

    data = DataConfig(resize="none", max_images=64, workers=2)
    tcfg = TrainConfig(data=str(gray_dir / "train"), out=str(tmp_path / "run"), epochs=1, batch_size=16, lr=1e-3,
                       seed=0, rate_weight=0.005, grid_scale=1.5, data_cfg=data)
    mcfg = ModelConfig(arch="gdn", channels=1, ratio=9, width=8, down_factor=6)  # 4 channels at H/6
    trainer = Trainer(tcfg, mcfg)
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    out = trainer._forward(trainer.model.eval(), x)
    assert out.x_hat.shape == x.shape and out.y.shape[-2:] == (7, 7)  # 42 px on the 1.5x grid: H/6 there
    summary = trainer.run()
    assert summary["grid_scale"] == 1.5
    model = export_model(tmp_path / "run" / "best.pt", tmp_path / "m9", speed=False)
    m = rescale_model(model, tmp_path / "m4", 4)  # 4 channels at H/4: the 1.5x grid's latent shape, 1/4
    assert (m["ratio"], m["factor"]) == (4, 4)
    with pytest.raises(ValueError, match="--grid-scale 1.5: applies to rate-distortion archs only"):
        train(TrainConfig(data=str(gray_dir / "train"), out=str(tmp_path / "d"), epochs=1, grid_scale=1.5,
                          data_cfg=data), ModelConfig(arch="dcgan", channels=1, ratio=4))


def test_refit_caches_latents_on_the_grid_the_checkpoint_was_trained_for(hp_run, tmp_path, photos_dir, monkeypatch):
    from aekit import hyperfit
    from aekit.checkpoint import save_checkpoint

    run, _ = hp_run
    ckpt = load_checkpoint(run / "best.pt")
    ckpt["summary"] = {**ckpt.get("summary", {}), "grid_scale": 1.5}
    save_checkpoint(tmp_path / "g.pt", {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    # a run stopped before its end: best.pt has no summary, the grid is in its train_config (session 16's
    # photos-r4 was first refitted on the native grid because of this)
    stopped = {k: v for k, v in ckpt.items() if k not in ("format", "version", "summary")}
    stopped["train_config"] = {**(stopped.get("train_config") or {}), "grid_scale": 1.5}
    save_checkpoint(tmp_path / "s.pt", stopped)
    seen = []

    class Stop(Exception):
        pass

    def cache(model, images, scales, mirror=True):
        seen.append(tuple(round(s, 6) for s in scales))
        if len(seen) == 2:
            raise Stop
        return []

    monkeypatch.setattr(hyperfit, "latent_cache", cache)
    for name, grid, want in (("g", 0.0, 1.5), ("g", 2.0, 2.0), ("s", 0.0, 1.5)):  # the checkpoint's own grid, or the option's
        seen.clear()
        with pytest.raises(Stop):
            hyperfit.refit_hyperprior(hyperfit.RefitConfig(str(tmp_path / f"{name}.pt"), str(photos_dir),
                                                           str(tmp_path / f"rf{name}{grid}"),
                                                           val_data=str(photos_dir), grid_scale=grid))
        assert seen == [tuple(round(s * want, 6) for s in (1.0, 0.7, 0.5)), (want,)]
