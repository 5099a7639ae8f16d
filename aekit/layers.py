"""Layers of learned image compression: GDN / IGDN (Ballé, Laparra, Simoncelli 2016).

    gdn = GDN(128); y = gdn(x)                  # x, y: (B, 128, H, W)
GDN is a divisive normalisation, y_i = x_i / sqrt(β_i + Σ_j γ_ij x_j²); its inverse
approximation IGDN multiplies instead. It Gaussianises local image statistics far better
than pointwise activations, so a few GDN stages replace many ReLU layers in a codec.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GDN(nn.Module):
    """Generalised divisive normalisation over channels, (B, C, H, W) -> (B, C, H, W).

    Ballé et al., "Density modeling of images using a generalized normalization
    transformation", ICLR 2016, eq. (5) with ε = ½ (the square root). β and γ must stay
    non-negative: they are stored as square roots (β = b² + β_min, γ = g²), which keeps
    gradients alive near zero without the projections of the original paper and exports
    to ONNX as plain Pow/Conv nodes. inverse=True gives IGDN, y_i = x_i · sqrt(β_i + Σ_j γ_ij x_j²).
    """

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1):
        super().__init__()
        self.inverse = inverse
        self.beta_min = beta_min
        self.b = nn.Parameter(torch.ones(channels))  # β = b² + β_min, initially 1
        self.g = nn.Parameter(torch.eye(channels) * gamma_init ** 0.5)  # γ = g², initially 0.1·I

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        beta = self.b * self.b + self.beta_min  # (C,)
        gamma = (self.g * self.g).view(c, c, 1, 1)  # (C_out, C_in, 1, 1)
        norm = torch.sqrt(F.conv2d(x * x, gamma, beta))  # (B, C, H, W)
        return x * norm if self.inverse else x / norm


def down(c_in: int, c_out: int, stride: int) -> nn.Conv2d:
    """5×5 conv dividing H and W exactly by stride 2 (padding 2) or 3 (padding 1)."""
    return nn.Conv2d(c_in, c_out, 5, stride, {2: 2, 3: 1}[stride])


def up(c_in: int, c_out: int, stride: int) -> nn.ConvTranspose2d:
    """5×5 transposed conv multiplying H and W exactly by stride 2 or 3 (the mirror of `down`)."""
    padding, output_padding = {2: (2, 1), 3: (1, 0)}[stride]
    return nn.ConvTranspose2d(c_in, c_out, 5, stride, padding, output_padding)
