"""Models: latent shapes give exactly the stated ratio, any input size, quantisation grid."""

from __future__ import annotations

import pytest
import torch

from aekit.config import ModelConfig
from aekit.models import ARCHITECTURES, build_model


@pytest.mark.parametrize("upsample", ["pixelshuffle", "transpose"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("ratio", [4, 9])
def test_latent_ratio_is_exact(channels, ratio, upsample):
    cfg = ModelConfig(channels=channels, ratio=ratio, width=8, upsample=upsample)
    model = build_model(cfg).eval()
    f = cfg.factor
    x = torch.rand(2, channels, 4 * f, 6 * f) * 2 - 1
    out = model(x)
    assert out.y.shape == (2, cfg.latent_channels, 4, 6)
    assert out.y.numel() * ratio == x.numel()  # latent elements / input elements = 1/ratio
    assert out.x_hat.shape == x.shape and out.x_hat.abs().max() <= 1


@pytest.mark.parametrize("ratio", [4, 9])
def test_odd_sizes_pad_and_crop_back(ratio):
    cfg = ModelConfig(channels=3, ratio=ratio, width=8)
    model = build_model(cfg).eval()
    x = torch.rand(1, 3, 29, 35) * 2 - 1
    out = model(x)
    assert out.x_hat.shape == x.shape
    assert out.y.shape[-2:] == cfg.latent_shape(29, 35)[1:] == (-(-29 // cfg.factor), -(-35 // cfg.factor))


def test_quantisation_rounds_in_eval_and_is_noisy_in_training():
    model = build_model(ModelConfig(channels=1, ratio=4, width=8, latent_levels=256))
    y = torch.rand(2, 4, 3, 3) * 2 - 1
    q = model.eval().quantise(y)
    symbols = (q + 1) * 127.5
    assert torch.allclose(symbols, symbols.round(), atol=1e-4) and (q - y).abs().max() <= model.step / 2 + 1e-6
    noisy = model.train().quantise(y)
    assert not torch.allclose(noisy, q) and (noisy - y).abs().max() <= model.step / 2 + 1e-6
    ste = build_model(ModelConfig(channels=1, width=8, quant="ste")).train()
    y.requires_grad_(True)
    ste.quantise(y).sum().backward()
    assert torch.allclose(y.grad, torch.ones_like(y))  # straight-through gradient


def test_config_and_registry_errors():
    with pytest.raises(ValueError, match="ratio 5 is not supported"):
        ModelConfig(ratio=5)
    with pytest.raises(ValueError, match="channels 4"):
        ModelConfig(channels=4)
    with pytest.raises(ValueError, match="unknown architecture 'nope'"):
        build_model(ModelConfig(arch="nope"))
    assert "dcgan" in ARCHITECTURES
    assert ModelConfig(channels=3, ratio=4).latent_channels == 12 and ModelConfig(channels=1, ratio=9).factor == 6


def test_rate_estimate_is_positive_and_differentiable():
    model = build_model(ModelConfig(channels=1, ratio=4, width=8)).train()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    out = model(x)
    bpp = model.rate_bpp(out, 2 * 16 * 16)
    bpp.backward()
    assert bpp > 0 and model.encoder[0][0].weight.grad is not None


@pytest.mark.parametrize("arch, ratio, factor, channels, res_blocks", [
    ("gdn", 4, 4, 1, 2), ("gdn-hp", 4, 8, 3, 1), ("gdn", 9, 6, 3, 0), ("klt", 4, 16, 1, 0)])
def test_rd_factor_option_keeps_the_ratio_exact(arch, ratio, factor, channels, res_blocks):
    cfg = ModelConfig(arch=arch, channels=channels, ratio=ratio, width=8, down_factor=factor, res_blocks=res_blocks)
    assert cfg.factor == factor and cfg.latent_channels * ratio == channels * factor**2
    out = build_model(cfg).eval()(torch.rand(1, channels, 28, 28) * 2 - 1)
    assert out.y.shape == (1, cfg.latent_channels, -(-28 // factor), -(-28 // factor))
    assert out.x_hat.shape == (1, channels, 28, 28)


def test_rd_factor_option_errors():
    with pytest.raises(ValueError, match="factor 8 is not offered at ratio 1/9 \\(have: 6, 12\\)"):
        ModelConfig(arch="gdn", ratio=9, down_factor=8)
    with pytest.raises(ValueError, match="down_factor applies to gdn, gdn-hp, klt only"):
        ModelConfig(arch="dcgan", down_factor=4)
    with pytest.raises(ValueError, match="res_blocks applies to gdn and gdn-hp only"):
        ModelConfig(arch="klt", res_blocks=1)


def test_res_blocks_zero_keeps_the_gdn_layout():
    """Checkpoints made before res_blocks existed load unchanged: g_a is conv, GDN, conv, GDN, conv, GDN, conv."""
    sd = build_model(ModelConfig(arch="gdn-hp", width=8)).state_dict()
    assert sorted({k.split(".")[1] for k in sd if k.startswith("encoder.")}) == [str(i) for i in range(7)]
    assert sd["encoder.6.weight"].shape[0] == 192 and "encoder.1.b" in sd and "decoder.1.g" in sd
    deeper = build_model(ModelConfig(arch="gdn-hp", width=8, res_blocks=1)).state_dict()
    assert "encoder.2.body.0.weight" in deeper and "decoder.2.body.2.weight" in deeper
