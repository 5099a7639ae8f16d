"""Reconstruction losses: mse, l1, ms-ssim, perceptual (VGG feature loss), weighted sums.

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


# feature-loss recipes: the VGG19 relu2_2 one (Johnson et al.) and a multi-layer VGG16 one
# weighting the early, texture-level layers most
PERCEPTUAL_PRESETS = {
    "vgg19": "vgg19:relu2_2",
    "vgg16": "vgg16:relu1_2=1,relu2_2=0.5,relu3_3=0.25",
}
VGG_CFG = {"vgg16": "D", "vgg19": "E"}  # torchvision.models.vgg.cfgs keys
VGG_FILES = {"vgg16": "vgg16-397923af.pth", "vgg19": "vgg19-dcbb9e9d.pth"}


def parse_perceptual_spec(spec: str) -> tuple[str, list[tuple[str, float]]]:
    """'vgg16:relu1_2=1,relu2_2=0.5' (or a preset name) -> ('vgg16', [('relu1_2', 1.0), ...])."""
    full = PERCEPTUAL_PRESETS.get(spec.strip().lower(), spec.strip().lower())
    net, _, layer_part = full.partition(":")
    if net not in VGG_CFG or not layer_part:
        raise ValueError(f"perceptual spec {spec!r}: expected NET:LAYER[=WEIGHT],... with NET in "
                         f"{', '.join(VGG_CFG)}, or a preset ({', '.join(PERCEPTUAL_PRESETS)})")
    names = vgg_relu_names(net)
    layers = []
    for part in filter(None, (x.strip() for x in layer_part.split(","))):
        name, _, weight = part.partition("=")
        if name not in names:
            raise ValueError(f"perceptual spec {spec!r}: {net} has no layer {name!r} (have: {', '.join(names)})")
        try:
            layers.append((name, float(weight) if weight else 1.0))
        except ValueError:
            raise ValueError(f"perceptual spec {spec!r}: weight {weight!r} of {name} is not a number") from None
    return net, layers


def vgg_relu_names(net: str) -> dict[str, int]:
    """ReLU names of a VGG feature stack ('relu2_2') -> index in torchvision's `features`."""
    from torchvision.models.vgg import cfgs

    names, block, conv, i = {}, 1, 0, 0
    for v in cfgs[VGG_CFG[net]]:
        if v == "M":
            block, conv, i = block + 1, 0, i + 1
        else:
            conv += 1
            names[f"relu{block}_{conv}"] = i + 1  # conv at i, its ReLU at i + 1
            i += 2
    return names


class PerceptualLoss(nn.Module):
    """Feature loss: weighted MSE between frozen ImageNet VGG features of both images.

    `spec` picks the network and layers ('vgg19' = relu2_2, the classic recipe; 'vgg16' =
    relu1_2/relu2_2/relu3_3 weighted 1/0.5/0.25; or 'vgg16:relu1_2=1,relu3_3=0.1').
    Inputs are mapped to [0, 1] and normalised with the ImageNet mean/std; gray images
    are repeated to 3 channels. Weights: see load_vgg_features.
    """

    def __init__(self, weights_file: str | Path | None = None, spec: str = "vgg19"):
        super().__init__()
        self.net, layers = parse_perceptual_spec(spec)
        index = vgg_relu_names(self.net)
        self.taps = [(index[name], w) for name, w in layers]  # (features index of the ReLU, weight)
        self.features = load_vgg_features(self.net, weights_file, max(i for i, _ in self.taps) + 1).eval()
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

    def tapped(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations at the tapped ReLUs, in order (inplace ReLUs: clone what is kept)."""
        out, want = [], {i for i, _ in self.taps}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in want:
                out.append(x.clone())
        return out

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        a, b = self.tapped(self.normalise(x_hat)), self.tapped(self.normalise(x))
        return sum(w * F.mse_loss(fa, fb) for (_, w), fa, fb in zip(self.taps, a, b))


def load_vgg19_features(weights_file: str | Path | None, layers: int = VGG19_RELU2_2) -> nn.Sequential:
    """The first `layers` modules of ImageNet VGG19's feature extractor, weights loaded."""
    return load_vgg_features("vgg19", weights_file, layers)


def load_vgg_features(net: str, weights_file: str | Path | None, layers: int) -> nn.Sequential:
    """The first `layers` modules of ImageNet VGG16/VGG19's feature stack, weights loaded
    from `weights_file` (a torchvision state_dict, full or features-only) or torchvision's
    weights API (its cache or the network). Neither available -> aekit.checkpoint.WeightsError (a
    RuntimeError) saying what to do."""
    import torchvision.models as tvm

    from aekit.checkpoint import WeightsError, load_state_file

    label = net.upper()
    if weights_file is not None:
        from torchvision.models.vgg import cfgs, make_layers

        path, state = Path(weights_file), load_state_file(weights_file, label)

        features = make_layers(cfgs[VGG_CFG[net]])[:layers]  # the feature stack, without the classifier
        # accept a full state_dict ("features.N.weight") or a features-only one ("N.weight")
        state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
        needed = set(features.state_dict())
        missing = sorted(needed - set(state))
        if missing:
            raise WeightsError(f"{path}: {label} weights lack layers {missing[:4]} needed by this feature loss")
        try:
            features.load_state_dict({k: state[k] for k in needed})
        except RuntimeError as e:
            raise WeightsError(f"{path}: {label} weights have the wrong shapes ({str(e).splitlines()[0]})") from None
        return features
    enum = getattr(tvm, f"{label}_Weights")  # VGG16_Weights, VGG19_Weights
    try:
        return getattr(tvm, net)(weights=enum.IMAGENET1K_V1).features[:layers]
    except Exception as e:
        raise WeightsError(
            f"perceptual loss needs ImageNet {label} weights: torchvision could not load "
            f"{enum.__name__}.IMAGENET1K_V1 ({type(e).__name__}: {e}). Put the file "
            f"{VGG_FILES[net]} in $TORCH_HOME/hub/checkpoints or pass --vgg-weights FILE."
        ) from None


class ReconstructionLoss(nn.Module):
    """Weighted sum of the terms of a loss spec; forward returns (total, {name: value})."""

    def __init__(self, spec: str | list[tuple[str, float]], vgg_weights: str | Path | None = None,
                 perceptual: str = "vgg19"):
        super().__init__()
        self.terms = parse_loss_spec(spec) if isinstance(spec, str) else list(spec)
        self.perceptual = (
            PerceptualLoss(vgg_weights, perceptual) if any(n == "perceptual" for n, _ in self.terms) else None
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
