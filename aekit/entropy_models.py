"""Learned entropy models for training with the rate the codec really pays (torch).

    prior = FactorizedPrior(192)
    likelihoods = prior.likelihood(y_tilde)           # (B, 192, h, w), in (0, 1]
    counts = prior.integer_pmf(step=1.0, half=127)    # int64 (192, 255): the codec's tables
The factorized prior is the "fully factorized" density of Ballé et al., "Variational image
compression with a scale hyperprior", ICLR 2018, appendix 6.1: per channel, a cumulative
c(y) = sigmoid(f_K ∘ … ∘ f_1(y)), each f_k a small monotone map (softplus matrices, tanh
gates). The probability of a quantisation bin is c(y + Δ/2) − c(y − Δ/2). At export the same
function is evaluated on the codec's integer grid and written as integer tables, so the bits
the training loss counts are the bits constriction's ANS coder spends (up to table rounding).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LIKELIHOOD_BOUND = 1e-9  # floor of a bin's probability (also keeps log2 finite)
TABLE_SCALE = 1 << 30  # pmf -> integer counts; aekit.export.entropy.integer_table reduces them to 2**24


class FactorizedPrior(nn.Module):
    """A learned, non-parametric density per latent channel (Ballé et al. 2018, §6.1).

    filters: hidden widths of the monotone per-channel network (the paper's (3, 3, 3)).
    init_scale: initial spread of the density (CompressAI's default of 10 latent units).
    """

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        self.channels = channels
        dims = (1, *filters, 1)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def logits_cdf(self, v: torch.Tensor) -> torch.Tensor:
        """v (C, 1, N) -> logit of the cumulative c(v), (C, 1, N); monotone in v per channel."""
        for i, (m, b) in enumerate(zip(self.matrices, self.biases)):
            v = torch.matmul(F.softplus(m), v) + b  # (C, d_out, N)
            if i < len(self.factors):
                v = v + torch.tanh(self.factors[i]) * torch.tanh(v)
        return v

    def likelihood(self, y: torch.Tensor, step: float = 1.0) -> torch.Tensor:
        """y (B, C, h, w) noisy or rounded -> probability of its bin of width `step`, same shape."""
        b, c, h, w = y.shape
        v = y.float().permute(1, 0, 2, 3).reshape(c, 1, -1)  # (C, 1, B*h*w)
        lower = self.logits_cdf(v - step / 2)
        upper = self.logits_cdf(v + step / 2)
        # evaluate on the side of the median where the sigmoids are not saturated near 1
        sign = -torch.sign(lower + upper).detach()
        p = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        p = p.clamp_min(LIKELIHOOD_BOUND)
        return p.reshape(c, b, h, w).permute(1, 0, 2, 3)

    @torch.no_grad()
    def integer_pmf(self, step: float, half: int) -> np.ndarray:
        """Integer counts (C, 2·half + 1) of symbols s = clip(round(y / step), −half, half) + half.

        Bin k covers y in ((k − half − ½)·step, (k − half + ½)·step]; the two end bins also
        take the tails, since the quantiser clips there. Counts are pmf · 2^30 floored, so
        every symbol the density allows stays codable once integer_table adds its floor of 1.
        """
        k = torch.arange(-half, half + 2, dtype=torch.float64) - 0.5  # bin edges (2·half + 2,)
        v = (k * step).float().view(1, 1, -1).expand(self.channels, 1, -1)
        cdf = torch.sigmoid(self.logits_cdf(v).double())[:, 0, :]  # (C, 2·half + 2)
        cdf[:, 0], cdf[:, -1] = 0.0, 1.0  # tails into the end bins
        pmf = (cdf[:, 1:] - cdf[:, :-1]).clamp_min(0)
        return np.floor(pmf.numpy() * TABLE_SCALE).astype(np.int64)

    @torch.no_grad()
    def tail_mass(self, step: float, half: int) -> np.ndarray:
        """Per channel (C,), the probability that |round(y / step)| > half (clipped by the codec)."""
        v = (torch.tensor([-half - 0.5, half + 0.5], dtype=torch.float64) * step).float()
        cdf = torch.sigmoid(self.logits_cdf(v.view(1, 1, 2).expand(self.channels, 1, 2)).double())[:, 0, :]
        return (cdf[:, 0] + 1 - cdf[:, 1]).numpy()


def bits(likelihoods: torch.Tensor) -> torch.Tensor:
    """Total code length in bits of a batch of bin probabilities: −Σ log2 p."""
    return -torch.log2(likelihoods).sum()


# -- the scale hyperprior's conditional Gaussian (Ballé et al. 2018, §3) ----------------------

# The codec's quality steps Δ of y (coarsest first; quality n is the n-th that fits the symbols):
# aekit.export.onnx exports one table set per step, aekit.hyperfit trains the hyperprior at them.
QUALITY_STEPS = (32.0, 24.0, 16.0, 12.0, 8.0, 6.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.75)
SCALE_MIN, SCALE_MAX, SCALE_LEVELS = 0.11, 256.0, 64  # the coder's scale table (CompressAI's defaults)


def scale_table() -> np.ndarray:
    """The SCALE_LEVELS scales (float64, ascending, log-spaced SCALE_MIN..SCALE_MAX, in quantisation
    steps) the codec has one integer table for; a position's σ is coded with the smallest table
    scale ≥ σ (aekit.export.entropy.scale_indexes)."""
    return np.exp(np.linspace(math.log(SCALE_MIN), math.log(SCALE_MAX), SCALE_LEVELS))


class _LowerBound(torch.autograd.Function):
    """max(x, bound) whose gradient still flows where it pushes x up (as in Ballé's code)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * ((x >= ctx.bound) | (grad < 0)).to(grad.dtype), None


def gaussian_likelihood(y: torch.Tensor, log_scale: torch.Tensor, step: float = 1.0,
                        mean: torch.Tensor | None = None) -> torch.Tensor:
    """Probability of y's bin of width `step` under N(μ, σ²), σ = max(exp(log_scale), SCALE_MIN·step).

    y, log_scale, mean: (B, c_y, h, w) (noisy or rounded y; the hyper decoder's μ and ln σ, in y
    units; mean None: μ = 0). Returns the same shape, floored at LIKELIHOOD_BOUND. Evaluated on the
    lower tail (Φ((½Δ − |y − μ|)/σ) − Φ((−½Δ − |y − μ|)/σ)) so it does not saturate, as in Ballé et al.'s code.
    """
    sigma = _LowerBound.apply(torch.exp(log_scale.float()), SCALE_MIN * step)
    v = torch.abs(y.float() - (0 if mean is None else mean.float()))
    upper = 0.5 * torch.erfc(-((step / 2 - v) / sigma) / math.sqrt(2))
    lower = 0.5 * torch.erfc(-((-step / 2 - v) / sigma) / math.sqrt(2))
    return (upper - lower).clamp_min(LIKELIHOOD_BOUND)


MEAN_PHASES = 4  # the coder's means are on a grid of 1/4 quantisation step: 4 tables per scale


def gaussian_pmf(half: int) -> np.ndarray:
    """Integer counts (SCALE_LEVELS · MEAN_PHASES, 2·half + 1) of the symbol d = clip(k − b, −half, half) + half
    for k = round(y / Δ), y ~ N((b + φ/4)·Δ, (σ_j Δ)²): row 4j + φ is scale σ_j = scale_table()[j] with the
    mean φ/4 of a step above the integer b. The codec's y tables.

    float64 (math.erfc) at export time, then pmf · 2^30 floored (as FactorizedPrior.integer_pmf);
    the two end bins take the tails. From then on only the integers are used.
    """
    k = np.arange(-half, half + 2, dtype=np.float64) - 0.5  # bin edges
    out = np.zeros((SCALE_LEVELS * MEAN_PHASES, 2 * half + 1), dtype=np.int64)
    for j, s in enumerate(scale_table()):
        for phase in range(MEAN_PHASES):
            cdf = np.array([0.5 * math.erfc(-(e - phase / MEAN_PHASES) / s / math.sqrt(2)) for e in k])
            cdf[0], cdf[-1] = 0.0, 1.0
            out[j * MEAN_PHASES + phase] = np.floor(np.clip(np.diff(cdf), 0, None) * TABLE_SCALE).astype(np.int64)
    return out
