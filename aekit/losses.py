"""Reconstruction losses: mse, l1, ms-ssim, perceptual (VGG19 relu2_2), weighted sums.

A loss spec is "name[:weight],..." e.g. "mse", "l1:1,ms-ssim:0.5" or "mse:1,perceptual:0.1".
Images are in [-1, 1]; every term is "lower is better".
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

LOSS_NAMES = ("mse", "l1", "ms-ssim", "perceptual")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG19_RELU2_2 = 9  # torchvision vgg19().features[:9] ends at relu2_2


def parse_loss_spec(spec: str) -> list[tuple[str, float]]:
    """'mse:1,perceptual:0.1' -> [('mse', 1.0), ('perceptual', 0.1)]."""
    terms = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, weight = part.partition(":")
        name = name.strip().lower()
        if name not in LOSS_NAMES:
            raise ValueError(f"unknown loss {name!r} in {spec!r} (have: {', '.join(LOSS_NAMES)})")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"loss weight {weight!r} for {name} is not a number") from None
        terms.append((name, w))
    if not terms:
        raise ValueError(f"empty loss spec {spec!r}")
    return terms


def ms_ssim_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """1 - MS-SSIM (pytorch-msssim) on [0, 1] images.

    MS-SSIM's five scales need a side over 160 px with its 11-px window; smaller
    images (e.g. 28x28 Fashion-MNIST) use single-scale SSIM with a 7-px window.
    """
    from pytorch_msssim import ms_ssim, ssim

    a, b = (x_hat.float() + 1) / 2, (x.float() + 1) / 2
    if min(a.shape[-2:]) > 160:
        return 1 - ms_ssim(a, b, data_range=1.0)
    win = 7 if min(a.shape[-2:]) >= 7 else 1 + 2 * ((min(a.shape[-2:]) - 1) // 2)
    return 1 - ssim(a, b, data_range=1.0, win_size=win)


class PerceptualLoss(nn.Module):
    """MSE between frozen ImageNet VGG19 features up to relu2_2 of both images.

    Weights come from `weights_file` (a torchvision vgg19 state_dict, full or
    features-only) or torchvision's weights API (VGG19_Weights.IMAGENET1K_V1, from its
    cache or the network). Neither available -> RuntimeError saying what to do.
    """

    def __init__(self, weights_file: str | Path | None = None, layers: int = VGG19_RELU2_2):
        super().__init__()
        self.features = load_vgg19_features(weights_file, layers).eval()
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        self.features.eval()  # frozen: never leave eval mode
        return self

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = (x + 1) / 2  # [-1, 1] -> [0, 1]
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.features(self.normalise(x_hat)), self.features(self.normalise(x)))


def load_vgg19_features(weights_file: str | Path | None, layers: int = VGG19_RELU2_2) -> nn.Sequential:
    """The first `layers` modules of ImageNet VGG19's feature extractor, weights loaded."""
    from torchvision.models import VGG19_Weights, vgg19

    if weights_file is not None:
        path = Path(weights_file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: VGG19 weights file not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise RuntimeError(f"{path}: not a readable VGG19 state_dict ({e})") from None
        if not isinstance(state, dict):
            raise RuntimeError(f"{path}: not a VGG19 state_dict")
        from torchvision.models.vgg import cfgs, make_layers

        features = make_layers(cfgs["E"])[:layers]  # VGG19's feature stack, without the classifier
        # accept a full vgg19 state_dict ("features.N.weight") or a features-only one ("N.weight")
        state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
        needed = set(features.state_dict())
        missing = sorted(needed - set(state))
        if missing:
            raise RuntimeError(f"{path}: VGG19 weights lack layers {missing[:4]} needed up to relu2_2")
        try:
            features.load_state_dict({k: state[k] for k in needed})
        except RuntimeError as e:
            raise RuntimeError(f"{path}: VGG19 weights have the wrong shapes ({e})") from None
        return features
    try:
        return vgg19(weights=VGG19_Weights.IMAGENET1K_V1).features[:layers]
    except Exception as e:
        raise RuntimeError(
            "perceptual loss needs ImageNet VGG19 weights: torchvision could not load "
            f"VGG19_Weights.IMAGENET1K_V1 ({type(e).__name__}: {e}). Put the file "
            "vgg19-dcbb9e9d.pth in $TORCH_HOME/hub/checkpoints or pass --vgg-weights FILE."
        ) from None


class ReconstructionLoss(nn.Module):
    """Weighted sum of the terms of a loss spec; forward returns (total, {name: value})."""

    def __init__(self, spec: str | list[tuple[str, float]], vgg_weights: str | Path | None = None):
        super().__init__()
        self.terms = parse_loss_spec(spec) if isinstance(spec, str) else list(spec)
        self.perceptual = (
            PerceptualLoss(vgg_weights) if any(n == "perceptual" for n, _ in self.terms) else None
        )

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        total, parts = x_hat.new_zeros(()), {}
        for name, weight in self.terms:
            value = self._term(name, x_hat, x)
            parts[name] = float(value.detach())
            total = total + weight * value
        return total, parts

    def _term(self, name: str, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if name == "mse":
            return F.mse_loss(x_hat, x)
        if name == "l1":
            return F.l1_loss(x_hat, x)
        if name == "ms-ssim":
            return ms_ssim_loss(x_hat, x)
        assert self.perceptual is not None
        return self.perceptual(x_hat, x)
