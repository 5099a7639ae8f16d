"""The channel-conditional context network (aekit.context trains it; aekit.export.context runs it in integers)."""

from __future__ import annotations

import torch
from torch import nn

from aekit.context import CONTEXT_SLOPE


class ChannelContext(nn.Module):
    """Per-slice corrections to the hyperprior's (μ, ln σ) from the slices decoded before (see the module doc).

    channels: c_y (a multiple of slices); width: the first hidden layer's channels (the second has 2/3 of it).
    Raises ValueError for a slice count that does not divide c_y.
    """

    def __init__(self, channels: int, slices: int = 4, width: int = 96):
        super().__init__()
        if slices < 2 or channels % slices:
            raise ValueError(f"{slices} slices do not split {channels} latent channels evenly (need >= 2 slices "
                             "dividing c_y)")
        if width < 3:
            raise ValueError(f"width {width}: at least 3 hidden channels")
        self.channels, self.slices, self.width = channels, slices, width
        self.per_slice = channels // slices
        self.nets = nn.ModuleList()
        for k in range(slices):
            net = nn.Sequential(nn.Conv2d(2 * channels + k * self.per_slice, width, 3, 1, 1), nn.LeakyReLU(CONTEXT_SLOPE),
                                nn.Conv2d(width, width * 2 // 3, 3, 1, 1), nn.LeakyReLU(CONTEXT_SLOPE),
                                nn.Conv2d(width * 2 // 3, 2 * self.per_slice, 3, 1, 1))
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)
            self.nets.append(net)

    def config(self) -> dict[str, int]:
        return {"channels": self.channels, "slices": self.slices, "width": self.width}

    def forward(self, y_hat: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ŷ, μ, ln σ: float (B, c_y, h, w) in y units -> (μ', ln σ'), each (B, c_y, h, w): slice k's corrected by
        its network from μ, ln σ and ŷ's slices before k (teacher forcing: all slices in one pass)."""
        cs, mus, lss = self.per_slice, [], []
        for k, net in enumerate(self.nets):
            d = net(torch.cat([mean, log_scale, y_hat[:, :k * cs]], 1))
            mus.append(mean[:, k * cs:(k + 1) * cs] + d[:, :cs])
            lss.append(log_scale[:, k * cs:(k + 1) * cs] + d[:, cs:])
        return torch.cat(mus, 1), torch.cat(lss, 1)
