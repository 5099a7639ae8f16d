"""The tanh-latent architectures: dcgan, resnet, pretrained and vae (registered by `--arch` name).

Each builds `encoder`/`decoder` on aekit.models.blocks; the latent is tanh-bounded to [-1, 1] and
quantised to `latent_levels` uniform levels (aekit.models.base.Autoencoder).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from aekit.config import ModelConfig
from aekit.models.base import AEOutput, Autoencoder, register_arch
from aekit.models.blocks import ResBlock, ResNetTrunk, conv_block, dcgan_decoder, down_conv, up_conv

@register_arch("dcgan")
class DCGANAutoencoder(Autoencoder):
    """DCGAN-style: strided convs, batch norm, LeakyReLU(0.2); tanh output.

    Encoder: conv/s (no BN, as DCGAN's first layer) -> conv/s BN -> blocks -> 3x3 to c_y.
    Decoder mirrors it with pixel-shuffle (default) or transposed-conv up-sampling.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        w, c, cy = cfg.width, cfg.channels, cfg.latent_channels
        s1, s2 = cfg.strides  # e.g. (2, 2) for f=4, (2, 3) for f=6
        self.encoder = nn.Sequential(
            down_conv(c, w, s1, bn=False),  # (B, w, H/s1, W/s1)
            down_conv(w, 2 * w, s2),  # (B, 2w, H/f, W/f)
            *[conv_block(2 * w, 2 * w) for _ in range(cfg.blocks)],
            nn.Conv2d(2 * w, cy, 3, 1, 1),  # (B, c_y, H/f, W/f), tanh applied in encode()
        )
        self.decoder = nn.Sequential(
            conv_block(cy, 2 * w),  # (B, 2w, H/f, W/f)
            *[conv_block(2 * w, 2 * w) for _ in range(cfg.blocks)],
            up_conv(2 * w, w, s2, cfg.upsample),  # (B, w, H/s1, W/s1)
            up_conv(w, w, s1, cfg.upsample),  # (B, w, H, W)
            nn.Conv2d(w, c, 3, 1, 1),
            nn.Tanh(),  # (B, C, H, W) in [-1, 1]
        )


@register_arch("resnet")
class ResNetAutoencoder(Autoencoder):
    """Residual encoder/decoder: the DCGAN stages with a residual block after each
    resolution change; `blocks` residual blocks at the latent resolution on both sides."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        w, c, cy = cfg.width, cfg.channels, cfg.latent_channels
        s1, s2 = cfg.strides
        self.encoder = nn.Sequential(
            down_conv(c, w, s1, bn=False), ResBlock(w),  # (B, w, H/s1, W/s1)
            down_conv(w, 2 * w, s2), ResBlock(2 * w),  # (B, 2w, H/f, W/f)
            *[ResBlock(2 * w) for _ in range(cfg.blocks)],
            nn.Conv2d(2 * w, cy, 3, 1, 1),  # (B, c_y, H/f, W/f)
        )
        self.decoder = nn.Sequential(
            conv_block(cy, 2 * w), ResBlock(2 * w),
            *[ResBlock(2 * w) for _ in range(cfg.blocks)],
            up_conv(2 * w, w, s2, cfg.upsample), ResBlock(w),  # (B, w, H/s1, W/s1)
            up_conv(w, w, s1, cfg.upsample),  # (B, w, H, W)
            nn.Conv2d(w, c, 3, 1, 1),
            nn.Tanh(),
        )


@register_arch("pretrained")
class PretrainedEncoderAutoencoder(Autoencoder):
    """Encoder = a ResNet trunk (ImageNet weights when available) + a 3x3 conv head to c_y;
    decoder = the DCGAN decoder. Trained in two phases (see TrainConfig.freeze_epochs):
    decoder only with the trunk frozen, then everything with discriminative learning rates."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.trunk = ResNetTrunk(cfg.backbone, cfg.factor)
        self.head = nn.Conv2d(64, cfg.latent_channels, 3, 1, 1)  # (B, c_y, H/f, W/f)
        self.encoder = nn.Sequential(self.trunk, self.head)
        self.decoder = dcgan_decoder(cfg, cfg.latent_channels)
        self._frozen = False

    def param_groups(self) -> list[list[nn.Parameter]]:
        trunk = self.trunk
        return [list(trunk.stem.parameters()), list(trunk.layer1.parameters()),
                [*self.head.parameters(), *self.decoder.parameters(), *self.prior.parameters()]]

    def set_trunk_frozen(self, frozen: bool) -> None:
        self._frozen = frozen
        for p in self.trunk.parameters():
            p.requires_grad_(not frozen)
        if frozen:
            self.trunk.eval()  # frozen batch-norm statistics too

    def train(self, mode: bool = True) -> "PretrainedEncoderAutoencoder":
        super().train(mode)
        if self._frozen:
            self.trunk.eval()
        return self


@register_arch("vae")
class ConvVAE(Autoencoder):
    """Convolutional VAE on the DCGAN encoder/decoder.

    The encoder predicts a mean (tanh-bounded, so it fits the codec's latent grid) and a
    log-variance per latent element; training decodes z = mu + sigma * eps (then the
    quantisation proxy) and adds KL(N(mu, sigma^2) || N(0, s^2)) with s = PRIOR_STD, so the
    prior lies inside [-1, 1]. Inference and export use the deterministic mean: encode(x) = mu.
    """

    PRIOR_STD = 0.5

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        w, c, cy = cfg.width, cfg.channels, cfg.latent_channels
        s1, s2 = cfg.strides
        self.body = nn.Sequential(
            down_conv(c, w, s1, bn=False),
            down_conv(w, 2 * w, s2),
            *[conv_block(2 * w, 2 * w) for _ in range(cfg.blocks)],
        )
        self.mu_head = nn.Conv2d(2 * w, cy, 3, 1, 1)  # (B, c_y, H/f, W/f)
        self.logvar_head = nn.Conv2d(2 * w, cy, 3, 1, 1)  # (B, c_y, H/f, W/f)
        self.encoder = nn.Sequential(self.body, self.mu_head)  # encode() = tanh(mu head): the mean
        self.decoder = dcgan_decoder(cfg, cy)

    def forward(self, x: torch.Tensor) -> AEOutput:
        if not self.training:
            return super().forward(x)
        h, w = x.shape[-2:]
        feats = self.body(self.pad(x))
        mu = torch.tanh(self.mu_head(feats))  # (B, c_y, h', w') in [-1, 1]
        logvar = self.logvar_head(feats).clamp(-12, 4)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        y_hat = self.quantise(z)  # the decoder also learns to live with the latent grid
        x_hat = self.decode(y_hat)[..., :h, :w]
        s2 = self.PRIOR_STD**2
        kl = 0.5 * (torch.exp(logvar) / s2 + mu**2 / s2 - 1 - logvar + math.log(s2))  # per element
        return AEOutput(x_hat=x_hat, y=mu, y_hat=y_hat, kl=kl.sum() / x.numel())

    @torch.no_grad()
    def sample(self, n: int, height: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n new images (n, C, height, width) in [-1, 1] decoded from prior draws on the latent grid."""
        cy, h, w = self.cfg.latent_shape(height, width)
        dev = next(self.parameters()).device
        z = torch.randn(n, cy, h, w, generator=generator).to(dev) * self.PRIOR_STD
        was = self.training
        self.eval()
        x = self.decode(self.quantise(z.clamp(-1, 1)))[..., :height, :width]
        self.train(was)
        return x
