"""Rate–distortion models: unbounded latent, integer quantiser, learned factorized prior (gdn, klt).

Ballé et al. 2018's factorized-prior transform (`gdn`, on aekit.layers' GDN) and the linear KLT
baseline (`klt`); the prior is aekit.entropy_models.FactorizedPrior, the codec's entropy model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aekit.config import ModelConfig
from aekit.entropy_models import FactorizedPrior, gaussian_likelihood
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
        """−Σ log2 p(ŷ) (and −Σ log2 p(ẑ) with a hyperprior) of the batch, per image pixel."""
        side = entropy_bits(out.side_likelihoods) if out.side_likelihoods is not None else 0.0
        return (entropy_bits(out.likelihoods) + side) / pixels

    def step_bits(self, y: torch.Tensor, step: float, half: int) -> tuple[torch.Tensor, float]:
        """The codec at quality step Δ: y (B, c_y, h, w) -> (ŷ = clip(round(y/Δ), ±half)·Δ, bits of ŷ)."""
        y_hat = torch.clamp(torch.round(y / step), -half, half) * step
        return y_hat, float(-torch.log2(self.entropy.likelihood(y_hat, step=step)).sum())

    def prior_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> what the factorized prior codes: y (B, c_y, h, w)."""
        return self.encode(self.pad(x))

    def param_groups(self) -> list[list[nn.Parameter]]:
        """The transforms' parameters; the prior's come from `entropy_parameters` (own lr)."""
        prior = {id(p) for p in self.entropy.parameters()}
        return [[p for p in self.parameters() if id(p) not in prior]]

    def entropy_parameters(self) -> list[nn.Parameter]:
        return list(self.entropy.parameters())


class ResidualUnit(nn.Module):
    """x + conv3×3(LeakyReLU(conv3×3(x))), (B, N, H, W) -> (B, N, H, W): no normalisation layer, so it
    exports as plain convs (the residual unit of Cheng et al. 2020's transforms, without attention)."""

    def __init__(self, n: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n, n, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(n, n, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@register_arch("gdn")
class GDNAutoencoder(RDAutoencoder):
    """Ballé et al. 2018's factorized-prior transform: 5×5 strided convs with GDN / IGDN.

    g_a: conv(N) GDN conv(N) GDN … conv(c_y), one conv per stride of cfg.strides (f = 16 at
    1/4: 2, 2, 2, 2; f = 12 at 1/9: 2, 2, 3; `--factor` picks another f, e.g. 4: 2, 2 for 28² images);
    g_s mirrors it with transposed convs and IGDN. cfg.res_blocks R > 0 adds R ResidualUnits after each
    GDN and IGDN (a deeper transform at the same latent shape; R = 0 is the original layout).
    N = cfg.width (the paper uses 128 with 192 latent channels); g_a alone may be narrower
    (cfg.encoder_width: the same decoder behind a cheaper analysis transform, issue 17).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        n, c, cy, strides = cfg.width, cfg.channels, cfg.latent_channels, cfg.strides
        ne = cfg.encoder_width or n
        r = cfg.res_blocks
        enc: list[nn.Module] = []
        for i, s in enumerate(strides):
            last = i == len(strides) - 1
            enc += [down(c if i == 0 else ne, cy if last else ne, s)]
            enc += [] if last else [GDN(ne), *(ResidualUnit(ne) for _ in range(r))]
        dec: list[nn.Module] = []
        for i, s in enumerate(reversed(strides)):
            last = i == len(strides) - 1
            dec += [up(cy if i == 0 else n, c if last else n, s)]
            dec += [] if last else [GDN(n, inverse=True), *(ResidualUnit(n) for _ in range(r))]
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


@register_arch("gdn-hp")
class HyperpriorAutoencoder(GDNAutoencoder):
    """Ballé et al. 2018's scale hyperprior on the gdn transforms ("Variational image compression
    with a scale hyperprior", ICLR 2018, fig. 4; mean-free Gaussian as in the paper).

    z = h_a(y) (3×3 conv, ReLU, two stride-2 5×5 convs, width N = cfg.hyper_width or cfg.width: c_z = 2 c_y / 3
    channels at y's resolution / 4); ẑ is coded with the factorized prior (`self.entropy`);
    (μ, ln σ) = h_s(ẑ) (two stride-2 5×5 transposed convs with ReLU, then a 3×3 conv to 2·c_y)
    give each element of y its own mean and scale, and ŷ is coded under N(μ, σ²). A mean-free
    Gaussian cost photos with flat regions up to 3× zstd's bytes: channels whose flat-region latent
    sits at a constant non-zero value. The codec runs h_s in exact integer arithmetic
    (aekit.export.hyperprior.IntegerHyperDecoder) so encoder and decoder choose the same table
    everywhere; h_s predicts ln σ so that choice is a comparison of integers, and μ is rounded to a
    quarter step by integer division. y keeps the exact element count of the ratio; z is side information (1/24
    of y's element count) and its bits are in every file size and in the training rate.
    """

    HYPER_FACTOR = 4  # z is at y's resolution / 4 (y is zero-padded up to a multiple of 4)

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        n, cy = cfg.hyper_width or cfg.width, cfg.latent_channels
        cz = self.side_channels(cy)
        self.entropy = FactorizedPrior(cz)  # the prior of z (y's is the conditional Gaussian)
        self.hyper_encoder = nn.Sequential(  # y (B, c_y, h, w) -> z (B, c_z, h/4, w/4)
            nn.Conv2d(cy, n, 3, 1, 1), nn.ReLU(), nn.Conv2d(n, n, 5, 2, 2), nn.ReLU(), nn.Conv2d(n, cz, 5, 2, 2))
        self.hyper_decoder = nn.Sequential(  # ẑ (B, c_z, h/4, w/4) -> μ, ln σ (B, 2·c_y, h, w)
            nn.ConvTranspose2d(cz, n, 5, 2, 2, 1), nn.ReLU(), nn.ConvTranspose2d(n, n, 5, 2, 2, 1), nn.ReLU(),
            nn.Conv2d(n, 2 * cy, 3, 1, 1))
        with torch.no_grad():  # start at μ = 0, σ ≈ 0.6 steps: most of a trained y rounds to 0
            self.hyper_decoder[-1].weight.mul_(0.1)
            self.hyper_decoder[-1].bias[:cy].fill_(0.0)
            self.hyper_decoder[-1].bias[cy:].fill_(-0.5)
        self.warm_transforms = False  # set by the trainer when g_a, g_s come from another run

    def set_trunk_frozen(self, frozen: bool) -> None:
        """Warm-started transforms (`warm_transforms`) stay fixed while frozen, so the new hyperprior
        learns y's scales before the rate term moves y (unfrozen at once, they were disrupted:
        −5.6 dB in the first epoch on the photo models)."""
        for p in (*self.encoder.parameters(), *self.decoder.parameters()):
            p.requires_grad_(not (frozen and self.warm_transforms))

    @staticmethod
    def side_channels(cy: int) -> int:
        """c_z = 2/3 of c_y (Ballé et al.'s 128 for 192): z holds c_z / (16 c_y) = 4 % of y's elements."""
        return max(8, 2 * cy // 3)

    def param_groups(self) -> list[list[nn.Parameter]]:
        """g_a and g_s; the hyperprior's come from `hyper_parameters` (own lr), the prior's from
        `entropy_parameters`."""
        other = {id(p) for p in (*self.entropy.parameters(), *self.hyper_parameters())}
        return [[p for p in self.parameters() if id(p) not in other]]

    def hyper_parameters(self) -> list[nn.Parameter]:
        return [*self.hyper_encoder.parameters(), *self.hyper_decoder.parameters()]

    def prior_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> what the factorized prior codes: z = h_a(ŷ) (B, c_z, h/4, w/4), ŷ = round(y)."""
        return self.hyper_analysis(torch.round(self.encode(self.pad(x))))

    def hyper_analysis(self, y: torch.Tensor) -> torch.Tensor:
        """y or ŷ (B, c_y, h, w) -> z (B, c_z, ceil(h/4), ceil(w/4)); y zero-padded bottom/right.

        h_a sees the signed y (Minnen et al. 2018), not |y| (Ballé et al.'s scale-only input): from
        |y| the mean cannot be predicted, and a flat sky whose latent sits at +10 in one channel cost
        Storm 2.8× zstd's bytes."""
        k = self.HYPER_FACTOR
        h, w = y.shape[-2:]
        return self.hyper_encoder(F.pad(y, (0, -w % k, 0, -h % k)))

    def gaussian_params(self, z_hat: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """ẑ (B, c_z, h', w') -> (μ, ln σ), each (B, c_y, h, w) cropped to y's size, in y units."""
        out = self.hyper_decoder(z_hat)[..., :h, :w]
        return out[:, : self.latent_channels], out[:, self.latent_channels:]

    def forward(self, x: torch.Tensor) -> AEOutput:
        h, w = x.shape[-2:]
        y = self.encode(self.pad(x))
        y_hat = self.quantise(y)
        z_hat = self.quantise(self.hyper_analysis(y))
        mean, log_scale = self.gaussian_params(z_hat, *y.shape[-2:])
        x_hat = self.decode(y_hat)[..., :h, :w]
        return AEOutput(x_hat=x_hat, y=y, y_hat=y_hat, likelihoods=gaussian_likelihood(y_hat, log_scale, mean=mean),
                        side_likelihoods=self.entropy.likelihood(z_hat))

    def step_bits(self, y: torch.Tensor, step: float, half: int) -> tuple[torch.Tensor, float]:
        """As the codec: z from ŷ, ẑ = clip(round(z), ±half), y's bits under σ(ẑ) at step Δ, plus ẑ's."""
        y_hat = torch.clamp(torch.round(y / step), -half, half) * step
        z_hat = torch.clamp(torch.round(self.hyper_analysis(y_hat)), -half, half)
        mean, log_scale = self.gaussian_params(z_hat, *y.shape[-2:])
        bits = entropy_bits(gaussian_likelihood(y_hat, log_scale, step, mean)) + entropy_bits(self.entropy.likelihood(z_hat))
        return y_hat, float(bits)
