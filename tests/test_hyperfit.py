"""aekit refit-hyperprior: the hyperprior retrained on frozen transforms lowers the codec's bits,
leaves the transforms (so the decoded images) untouched, resumes exactly and exports."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from aekit.config import ModelConfig


@pytest.fixture(scope="module")
def hp_run(tmp_path_factory, photos_dir):
    """A gdn-hp model at 1/9 trained for one short epoch, and a training folder of 4 RGB photos."""
    from aekit.data import DataConfig
    from aekit.train import TrainConfig, train

    data = tmp_path_factory.mktemp("refit-data")
    for name in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.png"):
        shutil.copy(photos_dir / name, data / name)
    run = tmp_path_factory.mktemp("refit-run")
    tcfg = TrainConfig(data=str(data), out=str(run), epochs=1, batch_size=8, lr=1e-3, seed=0, rate_weight=0.01,
                       data_cfg=DataConfig(resize="random-crop", size=96, repeat=2, workers=2))
    train(tcfg, ModelConfig(arch="gdn-hp", channels=3, ratio=9, width=16))
    return run / "best.pt", data


def _cfg(ckpt, data, out, **kw):
    from aekit.hyperfit import RefitConfig

    return RefitConfig(str(ckpt), str(data), str(out), lr=3e-3, crop=8, scales=(0.5,), log_every=10, **kw)


def test_refit_lowers_the_codec_bits_and_keeps_the_transforms(hp_run, tmp_path):
    from aekit.checkpoint import load_model
    from aekit.hyperfit import _images, codec_bits, latent_cache, refit_hyperprior

    ckpt, data = hp_run
    best = refit_hyperprior(_cfg(ckpt, data, tmp_path / "rf", steps=60))
    before, _ = load_model(ckpt)
    after, meta = load_model(best)
    for name, p in before.state_dict().items():
        same = torch.equal(p, after.state_dict()[name])
        if name.startswith(("encoder.", "decoder.")) or name == "y_gain":
            assert same, name  # g_a, g_s untouched: every quality decodes the same images
    assert not all(torch.equal(p, after.state_dict()[n]) for n, p in before.state_dict().items()
                   if n.startswith("hyper_decoder."))
    ys = latent_cache(before, _images(str(data), 3), (0.5,), mirror=False)
    for step in (1.0, 2.0):
        assert codec_bits(after, ys, step) < codec_bits(before, ys, step)
    assert meta["refit_hyperprior"]["steps"] == 60 and "refit" not in meta
    assert (tmp_path / "rf" / "log.jsonl").read_text().count("\n") == 6


def test_refit_reinit_starts_the_hyperprior_afresh(hp_run, tmp_path):
    """--reinit: h_a, h_s and z's prior start from a new model's seeded init (a collapsed hyperprior cannot
    recover from its own weights); the transforms stay the checkpoint's."""
    from aekit.checkpoint import load_model
    from aekit.config import ModelConfig
    from aekit.hyperfit import refit_hyperprior
    from aekit.models import build_model

    ckpt, data = hp_run
    cfg = _cfg(ckpt, data, tmp_path / "rf", steps=1, reinit=True)
    cfg.lr = 1e-9
    best = refit_hyperprior(cfg)
    before, meta = load_model(ckpt)
    after, _ = load_model(best)
    torch.manual_seed(0)
    fresh = build_model(ModelConfig.from_dict(meta["model_config"])).state_dict()
    for name, p in after.state_dict().items():
        if name.startswith(("encoder.", "decoder.")) or name == "y_gain":
            assert torch.equal(p, before.state_dict()[name]), name
        elif name.startswith("hyper_encoder.") and p.dim() > 1:  # lr 1e-9: still the fresh init, not the old weights
            assert torch.allclose(p, fresh[name], atol=1e-6) and not torch.allclose(p, before.state_dict()[name]), name


def test_refit_resumes_to_the_same_weights(hp_run, tmp_path):
    from aekit.hyperfit import refit_hyperprior

    ckpt, data = hp_run
    straight = torch.load(refit_hyperprior(_cfg(ckpt, data, tmp_path / "a", steps=20)), weights_only=True)
    # a stop after step 10: rebuild last.pt at step 10 by running 10 steps of a 20-step schedule
    from aekit import hyperfit

    class Stop(Exception):
        pass

    cfg = _cfg(ckpt, data, tmp_path / "d", steps=20)
    real_save = hyperfit._save
    calls = []

    def save_then_stop(path, *a):
        real_save(path, *a)
        calls.append(path)
        if len(calls) == 1:
            raise Stop

    hyperfit._save = save_then_stop
    try:
        with pytest.raises(Stop):
            refit_hyperprior(cfg)
    finally:
        hyperfit._save = real_save
    assert torch.load(tmp_path / "d" / "last.pt", weights_only=True)["refit"]["step"] == 10
    cfg.resume = True
    resumed = torch.load(refit_hyperprior(cfg), weights_only=True)
    for name, p in straight["state_dict"].items():
        assert torch.equal(p, resumed["state_dict"][name]), name


def test_refit_never_writes_into_the_source_run(hp_run):
    from aekit.hyperfit import refit_hyperprior

    ckpt, data = hp_run
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match="own run folder"):
        refit_hyperprior(_cfg(ckpt, data, ckpt.parent, steps=1))
    assert ckpt.read_bytes() == before


def test_refit_refuses_a_model_without_hyperprior(photos_dir, tmp_path):
    from aekit.hyperfit import RefitConfig, refit_hyperprior
    from aekit.models import build_model
    from aekit.checkpoint import save_checkpoint

    cfg = ModelConfig(arch="gdn", channels=3, ratio=9, width=16)
    save_checkpoint(tmp_path / "gdn.pt", {"format": "aekit-checkpoint", "version": 1, "model_config": cfg.to_dict(),
                                          "state_dict": build_model(cfg).state_dict()})
    with pytest.raises(ValueError, match="no hyperprior to refit"):
        refit_hyperprior(RefitConfig(str(tmp_path / "gdn.pt"), str(photos_dir), str(tmp_path / "out")))


def test_refitted_checkpoint_exports_and_decodes_the_same_images(hp_run, tmp_path, rgb_photos):
    """Exported before and after the refit, the codec decodes identical pixels (same g_a, g_s, steps);
    only the coded bytes differ."""
    import aekit.codec.core as core
    from aekit.export.onnx import export_model
    from aekit.hyperfit import refit_hyperprior

    ckpt, data = hp_run
    best = refit_hyperprior(_cfg(ckpt, data, tmp_path / "rf", steps=10))
    image = rgb_photos[0][:160, :160]
    decoded, blobs = [], []
    for name, c in (("before", ckpt), ("after", best)):
        model_dir = export_model(c, tmp_path / name, speed=False)
        blobs.append(core.Codec(model_dir, core.CodecConfig(quality=1)).compress(image))
        decoded.append(core.Decoder([model_dir]).decompress(blobs[-1])[0])
    assert decoded[0].shape == image.shape and np.array_equal(decoded[0], decoded[1])
    assert blobs[0] != blobs[1]
