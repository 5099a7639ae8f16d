"""Building blocks of the tanh-latent architectures: DCGAN conv units, residual blocks, the DCGAN
decoder and a pretrained ResNet trunk (the learned-compression layers, GDN, are in aekit.layers).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from aekit.config import BACKBONES, ModelConfig

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
