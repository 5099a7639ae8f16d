"""The autoencoder base and the architecture registry: what every model shares.

`Autoencoder` pads to the factor, encodes, quantises, decodes and crops back; `AEOutput` is what
`forward` returns; `register_arch` adds a class under its `--arch` name and `build_model` builds one.
    model = build_model(ModelConfig(channels=3, ratio=4)); out = model(x)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from aekit.config import ModelConfig

ARCHITECTURES: dict[str, Callable[[ModelConfig], "Autoencoder"]] = {}


def register_arch(name: str):
    """Class decorator adding an architecture to the registry (CLI choices come from it)."""

    def add(cls):
        ARCHITECTURES[name] = cls
        return cls

    return add


def build_model(cfg: ModelConfig) -> "Autoencoder":
    if cfg.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {cfg.arch!r} (have: {', '.join(sorted(ARCHITECTURES))})")
    return ARCHITECTURES[cfg.arch](cfg)


@dataclass
class AEOutput:
    x_hat: torch.Tensor  # (B, C, H, W) reconstruction in [-1, 1], cropped to the input size
    y: torch.Tensor  # (B, c_y, H/f, W/f) bounded latent before quantisation
    y_hat: torch.Tensor  # (B, c_y, H/f, W/f) quantised (or noisy, in training) latent
    kl: torch.Tensor | None = None  # VAE only: KL(q(z|x) || prior) in nats per image element
    likelihoods: torch.Tensor | None = None  # RD models: (B, c_y, h, w) bin probabilities of y_hat
    side_likelihoods: torch.Tensor | None = None  # hyperprior models: (B, c_z, h/4, w/4) bin probabilities of z_hat


class LatentPrior(nn.Module):
    """Learned factorised density of each latent channel, for the rate term of training.

    A mixture of K logistics per channel on [-1, 1]; the probability of a quantisation
    bin is CDF(y + step/2) - CDF(y - step/2), so -log2 of it is the code length an
    entropy coder with this model would spend (Balle et al.'s additive-noise relaxation).
    Training only: the exported codec codes with the empirical symbol histogram.
    """

    def __init__(self, channels: int, k: int = 3):
        super().__init__()
        self.means = nn.Parameter(torch.linspace(-0.5, 0.5, k).repeat(channels, 1))  # (c_y, K)
        self.log_scales = nn.Parameter(torch.full((channels, k), -2.0))  # (c_y, K)
        self.logits = nn.Parameter(torch.zeros(channels, k))  # (c_y, K)

    def bits(self, y_hat: torch.Tensor, step: float) -> torch.Tensor:
        """(B, c_y, h, w) noisy or rounded latent -> (B, c_y, h, w) code length in bits."""
        y = y_hat.float().unsqueeze(-1)  # (B, c_y, h, w, 1)
        m = self.means[None, :, None, None, :]
        inv_s = torch.exp(-self.log_scales)[None, :, None, None, :]
        w = torch.softmax(self.logits, dim=-1)[None, :, None, None, :]
        upper = torch.sigmoid((y + step / 2 - m) * inv_s)
        lower = torch.sigmoid((y - step / 2 - m) * inv_s)
        p = (w * (upper - lower)).sum(-1)
        return -torch.log2(p.clamp_min(1e-9))


class Autoencoder(nn.Module):
    """Base class: pads to the factor, encodes, quantises, decodes, crops back.

    Subclasses build `self.encoder` (x -> pre-activation latent) and `self.decoder`
    (y_hat -> x_hat in [-1, 1]). The latent is tanh-bounded to [-1, 1] and quantised
    to `latent_levels` uniform levels; training replaces rounding by additive uniform
    noise (or straight-through rounding) so decoding holds up after 8-bit rounding.
    """

    encoder: nn.Module
    decoder: nn.Module

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.prior = LatentPrior(cfg.latent_channels)  # used only when training with a rate term

    def rate_bpp(self, out: "AEOutput", pixels: int) -> torch.Tensor:
        """Estimated coded size of the batch's latents in bits per image pixel."""
        return self.prior.bits(out.y_hat, self.step).sum() / pixels

    @property
    def factor(self) -> int:
        return self.cfg.factor

    @property
    def latent_channels(self) -> int:
        return self.cfg.latent_channels

    @property
    def ratio(self) -> int:
        return self.cfg.ratio

    @property
    def step(self) -> float:
        """Quantisation step of the latent on [-1, 1]."""
        return 2.0 / (self.cfg.latent_levels - 1)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.factor, (-w) % self.factor
        return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), H and W multiples of f -> y (B, c_y, H/f, W/f) in [-1, 1]."""
        return torch.tanh(self.encoder(x))

    def decode(self, y_hat: torch.Tensor) -> torch.Tensor:
        """y_hat (B, c_y, h, w) -> x_hat (B, C, h*f, w*f) in [-1, 1]."""
        return self.decoder(y_hat)

    def quantise(self, y: torch.Tensor) -> torch.Tensor:
        """Round to the latent grid in eval; a differentiable proxy in training."""
        d = self.step
        if not self.training:
            return torch.round((y + 1) / d) * d - 1
        if self.cfg.quant == "noise":
            return (y + (torch.rand_like(y) - 0.5) * d).clamp(-1, 1)
        return y + (torch.round((y + 1) / d) * d - 1 - y).detach()

    def forward(self, x: torch.Tensor) -> AEOutput:
        h, w = x.shape[-2:]
        y = self.encode(self.pad(x))  # (B, c_y, ceil(H/f), ceil(W/f))
        y_hat = self.quantise(y)
        x_hat = self.decode(y_hat)[..., :h, :w]
        return AEOutput(x_hat=x_hat, y=y, y_hat=y_hat)

    def param_groups(self) -> list[list[nn.Parameter]]:
        """Parameters from the earliest encoder layer to the decoder, for discriminative
        learning rates; one group unless an architecture has a pretrained trunk."""
        return [list(self.parameters())]

    def set_trunk_frozen(self, frozen: bool) -> None:
        """Freeze a pretrained encoder trunk (two-phase training); no trunk: nothing to do."""
