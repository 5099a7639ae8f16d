"""Rate–distortion models: unbounded latent, integer quantiser, learned factorized prior (gdn, klt).

Ballé et al. 2018's factorized-prior transform (`gdn`, on aekit.layers' GDN) and the linear KLT
baseline (`klt`); the prior is aekit.entropy_models.FactorizedPrior, the codec's entropy model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aekit.config import ModelConfig
from aekit.entropy_models import FactorizedPrior
from aekit.entropy_models import bits as entropy_bits
from aekit.layers import GDN, down, up
from aekit.models.base import AEOutput, Autoencoder, register_arch

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
