"""Losses: spec parsing, MS-SSIM on small and large images, the VGG19 perceptual loss."""

from __future__ import annotations

import pytest
import torch

from aekit.losses import PerceptualLoss, ReconstructionLoss, load_vgg19_features, ms_ssim_loss, parse_loss_spec


def test_parse_loss_spec():
    assert parse_loss_spec("mse") == [("mse", 1.0)]
    assert parse_loss_spec("l1:1, ms-ssim:0.5") == [("l1", 1.0), ("ms-ssim", 0.5)]
    with pytest.raises(ValueError, match="unknown loss 'ssd'"):
        parse_loss_spec("ssd")
    with pytest.raises(ValueError, match="weight 'x' for mse"):
        parse_loss_spec("mse:x")


@pytest.mark.parametrize("size", [28, 192])
def test_ms_ssim_loss_zero_for_identical_and_grows_with_noise(size):
    x = torch.rand(2, 3, size, size) * 2 - 1
    assert ms_ssim_loss(x, x) < 1e-4
    small = ms_ssim_loss((x + 0.05 * torch.randn_like(x)).clamp(-1, 1), x)
    big = ms_ssim_loss((x + 0.5 * torch.randn_like(x)).clamp(-1, 1), x)
    assert 0 < small < big


def vgg_file(tmp_path):
    """A features-only VGG19 state_dict with random weights (ImageNet ones are not reachable here)."""
    from torchvision.models.vgg import cfgs, make_layers

    path = tmp_path / "vgg.pt"
    torch.save(make_layers(cfgs["E"])[:9].state_dict(), path)
    return path


def test_perceptual_loss_from_local_weights(tmp_path):
    loss = PerceptualLoss(vgg_file(tmp_path))
    x = torch.rand(2, 1, 32, 32) * 2 - 1  # gray images are repeated to 3 channels
    assert loss(x, x) == 0
    assert loss(torch.flip(x, dims=[3]), x) > 0
    assert not any(p.requires_grad for p in loss.features.parameters())
    total, parts = ReconstructionLoss("mse:1,perceptual:0.1", vgg_file(tmp_path))(x * 0.5, x)
    assert set(parts) == {"mse", "perceptual"} and total > 0


def test_vgg_weights_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope.pt: VGG19 weights file not found"):
        load_vgg19_features(tmp_path / "nope.pt")
    torch.save({"0.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match="lack layers"):
        load_vgg19_features(tmp_path / "bad.pt")
    # offline and no cached weights: the error says what to do
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="--vgg-weights FILE"):
        load_vgg19_features(None)
