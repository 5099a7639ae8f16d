"""Convolutional autoencoders: encoder/decoder modules, latent quantisation, registry.

Tensors are named after the maths of learned compression: x (image in [-1, 1]),
y (bounded latent), y_hat (quantised latent), x_hat (reconstruction).
    model = build_model(ModelConfig(channels=3, ratio=4)); out = model(x)
"""

from __future__ import annotations

import warnings

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from aekit.config import BACKBONES, ModelConfig
from aekit.entropy_models import FactorizedPrior
from aekit.entropy_models import bits as entropy_bits
from aekit.layers import GDN, down, up

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


def conv_block(c_in: int, c_out: int, k: int = 3, s: int = 1, p: int = 1, bn: bool = True) -> nn.Sequential:
    """Conv -> BatchNorm -> LeakyReLU(0.2), the DCGAN unit."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, s, p, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def down_conv(c_in: int, c_out: int, stride: int, bn: bool = True) -> nn.Sequential:
    """Strided conv dividing H and W exactly by stride (2: k4 p1; 3: k5 p1)."""
    k, p = {2: (4, 1), 3: (5, 1)}[stride]
    return conv_block(c_in, c_out, k, stride, p, bn)


def up_conv(c_in: int, c_out: int, stride: int, mode: str) -> nn.Sequential:
    """Up-sampling by stride: sub-pixel conv (pixel shuffle) or DCGAN transposed conv."""
    if mode == "pixelshuffle":
        # conv to c_out*s^2 channels then rearrange: no checkerboard from uneven overlap
        return nn.Sequential(
            nn.Conv2d(c_in, c_out * stride * stride, 3, 1, 1, bias=False),
            nn.PixelShuffle(stride),
            nn.BatchNorm2d(c_out),
            nn.LeakyReLU(0.2, inplace=True),
        )
    k, p = {2: (4, 1), 3: (3, 0)}[stride]
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, k, stride, p, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
    )


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


class ResBlock(nn.Module):
    """x + BN(conv(LReLU(BN(conv(x))))), then LeakyReLU(0.2): a pre-summation residual unit."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c),
        )
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


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


def dcgan_decoder(cfg: ModelConfig, c_in: int) -> nn.Sequential:
    """The DCGAN decoder from c_in latent-resolution channels to (B, C, H, W) in [-1, 1]."""
    w, s1, s2 = cfg.width, *cfg.strides
    return nn.Sequential(
        conv_block(c_in, 2 * w),
        *[conv_block(2 * w, 2 * w) for _ in range(cfg.blocks)],
        up_conv(2 * w, w, s2, cfg.upsample),
        up_conv(w, w, s1, cfg.upsample),
        nn.Conv2d(w, cfg.channels, 3, 1, 1),
        nn.Tanh(),
    )




class ResNetTrunk(nn.Module):
    """A torchvision ResNet cut after layer1: (B, C, H, W) in [-1, 1] -> (B, 64, H/f, W/f).

    ImageNet normalisation is built in (gray images are repeated to 3 channels). For f=4
    the trunk is torchvision's own (conv1 /2, maxpool /2); for f=6 the parameter-free
    max-pool takes stride 3 instead, so every pretrained weight still applies.
    """

    def __init__(self, backbone: str, factor: int):
        super().__init__()
        import torchvision.models as tvm

        if backbone not in BACKBONES:
            raise ValueError(f"backbone {backbone!r} is not supported (have: {', '.join(BACKBONES)})")
        net = getattr(tvm, backbone)(weights=None)
        pool = net.maxpool if factor == 4 else nn.MaxPool2d(3, stride=factor // 2, padding=0)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, pool)  # (B, 64, H/f, W/f)
        self.layer1 = net.layer1  # (B, 64, H/f, W/f)
        self.backbone, self.factor = backbone, factor
        self.register_buffer("mean", torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x + 1) / 2  # [-1, 1] -> [0, 1]
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        if self.factor != 4:  # stride-3 pool without padding: pad conv1's output to a multiple of 3
            x = self.stem[:3](x)
            h, w = x.shape[-2:]
            x = self.stem[3](F.pad(x, (0, (-w) % 3, 0, (-h) % 3), mode="replicate"))
            return self.layer1(x)
        return self.layer1(self.stem(x))

    def load_pretrained(self, weights_file: str | Path | None) -> str:
        """ImageNet weights from a local state_dict, else torchvision's weights API (its cache
        or the network); returns where they came from, or "random init" when neither exists."""
        if weights_file:
            from aekit.checkpoint import load_state_file

            state, source = load_state_file(weights_file, self.backbone), str(weights_file)
        else:
            import torchvision.models as tvm

            enum = getattr(tvm, {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights"}[self.backbone])
            try:
                state = enum.IMAGENET1K_V1.get_state_dict(progress=False)
                source = f"torchvision {enum.__name__}.IMAGENET1K_V1"
            except Exception as e:
                warnings.warn(f"no ImageNet weights for {self.backbone} ({type(e).__name__}: {e}); "
                              "the encoder trunk starts from random init (pass --encoder-weights FILE)", stacklevel=2)
                return "random init"
        self._load_state(state, source)
        return source

    def _load_state(self, state: dict, source: str) -> None:
        mapping = {"conv1.": "stem.0.", "bn1.": "stem.1.", "layer1.": "layer1."}
        mine = {}
        for k, v in state.items():
            for src, dst in mapping.items():
                if k.startswith(src):
                    mine[dst + k[len(src):]] = v
        own = {k for k in self.state_dict() if k not in ("mean", "std")}
        missing = sorted(own - set(mine))
        if missing:
            raise RuntimeError(f"{source}: {self.backbone} weights lack {missing[:3]}")
        try:
            self.load_state_dict({k: mine[k] for k in own}, strict=False)
        except RuntimeError as e:
            raise RuntimeError(f"{source}: {self.backbone} weights have the wrong shapes ({e})") from None


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


class RDAutoencoder(Autoencoder):
    """Base of rate–distortion models: unbounded y, integer quantiser, learned factorized prior.

    y = g_a(x) is not squashed; the codec's symbols are ŷ = round(y / Δ) with a quality
    step Δ (1 at training; see aekit.export.onnx for the exported table sets). Training
    replaces rounding by additive uniform noise for decoder and rate alike (Ballé et al.
    2017/2018; straight-through rounding for the decoder left the deeper 1/4 model decoding
    all-zero latents for its first epochs on a short CPU budget). Validation decodes truly
    rounded latents. `rate_bpp` is −Σ log2 p(ŷ) under `self.entropy`, the density the
    exported integer tables come from: the loss counts the bits the codec spends.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        del self.prior  # the tanh models' mixture prior: replaced by the factorized prior below
        self.entropy = FactorizedPrior(cfg.latent_channels)

    @property
    def step(self) -> float:
        return 1.0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), H and W multiples of f -> y (B, c_y, H/f, W/f), unbounded."""
        return self.encoder(x)

    def quantise(self, y: torch.Tensor) -> torch.Tensor:
        """round(y) in eval; y + U(-½, ½) in training (Ballé et al.'s relaxation)."""
        if not self.training:
            return torch.round(y)
        return y + torch.empty_like(y).uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> AEOutput:
        h, w = x.shape[-2:]
        y = self.encode(self.pad(x))  # (B, c_y, ceil(H/f), ceil(W/f))
        y_hat = self.quantise(y)  # rounded (eval) or noisy (training), for decoder and rate alike
        x_hat = self.decode(y_hat)[..., :h, :w]
        return AEOutput(x_hat=x_hat, y=y, y_hat=y_hat, likelihoods=self.entropy.likelihood(y_hat))

    def rate_bpp(self, out: AEOutput, pixels: int) -> torch.Tensor:
        """−Σ log2 p(ŷ) of the batch under the factorized prior, per image pixel."""
        return entropy_bits(out.likelihoods) / pixels

    def param_groups(self) -> list[list[nn.Parameter]]:
        """The transforms' parameters; the prior's come from `entropy_parameters` (own lr)."""
        prior = {id(p) for p in self.entropy.parameters()}
        return [[p for p in self.parameters() if id(p) not in prior]]

    def entropy_parameters(self) -> list[nn.Parameter]:
        return list(self.entropy.parameters())


@register_arch("gdn")
class GDNAutoencoder(RDAutoencoder):
    """Ballé et al. 2018's factorized-prior transform: 5×5 strided convs with GDN / IGDN.

    g_a: conv(N) GDN conv(N) GDN … conv(c_y), one conv per stride of cfg.strides (f = 16 at
    1/4: 2, 2, 2, 2; f = 12 at 1/9: 2, 2, 3); g_s mirrors it with transposed convs and IGDN.
    N = cfg.width (the paper uses 128 with 192 latent channels).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        n, c, cy, strides = cfg.width, cfg.channels, cfg.latent_channels, cfg.strides
        enc: list[nn.Module] = []
        for i, s in enumerate(strides):
            last = i == len(strides) - 1
            enc += [down(c if i == 0 else n, cy if last else n, s)] + ([] if last else [GDN(n)])
        dec: list[nn.Module] = []
        for i, s in enumerate(reversed(strides)):
            last = i == len(strides) - 1
            dec += [up(cy if i == 0 else n, c if last else n, s)] + ([] if last else [GDN(n, inverse=True)])
        self.encoder = nn.Sequential(*enc)  # (B, C, H, W) -> (B, c_y, H/f, W/f), before the gain
        self.decoder = nn.Sequential(*dec)  # (B, c_y, h, w) -> (B, C, h·f, w·f), after the gain
        self.register_buffer("y_gain", torch.tensor(1.0))  # fixed latent gain, set by init_from_data

    INIT_Y_STD = 4.0  # latent spread at init, in quantisation steps

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), H and W multiples of f -> y = gain · g_a(x) (B, c_y, H/f, W/f)."""
        return self.encoder(x) * self.y_gain

    def decode(self, y_hat: torch.Tensor) -> torch.Tensor:
        """y_hat (B, c_y, h, w) -> x_hat = g_s(y_hat / gain) (B, C, h·f, w·f)."""
        return self.decoder(y_hat / self.y_gain)

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor) -> None:
        """Set the fixed latent gain so y has INIT_Y_STD on real images x (B, C, H, W).

        PyTorch's default init leaves g_a's output at std ~0.06 behind four GDN stages, so
        training noise of ±½ drowns the signal and the first epochs learn almost nothing. A
        constant gain (a buffer, not a weight: rescaling weights instead would change Adam's
        effective step and diverge) starts training where the latent carries information.
        """
        self.y_gain.fill_(1.0)
        self.y_gain.fill_(self.INIT_Y_STD / float(self.encode(self.pad(x.float())).std().clamp_min(1e-6)))


@register_arch("klt")
class KLTAutoencoder(RDAutoencoder):
    """The linear baseline: a patch transform of the exact latent shape (KLT / PCA init).

    The encoder is one f×f stride-f conv (each f×f×C patch -> c_y coefficients), the decoder
    its transposed conv. `init_from_data` sets them to the principal components of training
    patches, scaled so one quantisation step is `KLT_STEP` grey levels, then rate–distortion
    training fine-tunes transform and prior together (seconds to minutes). Any nonlinear model
    must beat it.
    """

    KLT_STEP = 8.0  # initial quantisation step of the coefficients, in 8-bit grey levels

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        f, c, cy = cfg.factor, cfg.channels, cfg.latent_channels
        self.encoder = nn.Conv2d(c, cy, f, f)  # (B, C, H, W) -> (B, c_y, H/f, W/f)
        self.decoder = nn.ConvTranspose2d(cy, c, f, f)  # (B, c_y, h, w) -> (B, C, h·f, w·f)

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor) -> None:
        """PCA of the f×f patches of x (B, C, H, W) in [-1, 1]: top-c_y components."""
        f, cy = self.factor, self.latent_channels
        c = x.shape[1]
        patches = F.unfold(self.pad(x.float()), f, stride=f).transpose(1, 2).reshape(-1, c * f * f)
        mean_c = patches.view(-1, c, f * f).mean((0, 2))  # (C,): the decoder's per-channel bias
        centred = patches - mean_c.repeat_interleave(f * f)
        _, vecs = torch.linalg.eigh(torch.cov(centred.T.double()))  # ascending eigenvalues
        basis = vecs[:, -cy:].flip(1).T.float()  # (c_y, C·f·f), orthonormal rows, largest first
        gain = 255.0 / 2 / self.KLT_STEP  # x is in [-1, 1]: one latent unit = KLT_STEP grey levels
        self.encoder.weight.copy_((basis * gain).view_as(self.encoder.weight))
        self.encoder.bias.copy_(-(basis @ mean_c.repeat_interleave(f * f)) * gain)
        self.decoder.weight.copy_((basis / gain).view_as(self.decoder.weight))
        self.decoder.bias.copy_(mean_c)
