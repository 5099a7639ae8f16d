"""Model configuration shared by training, export and the ONNX runtime (no torch here).

The latent ratio is latent elements / input elements. A model with down-sampling factor
f and c_y latent channels on a C-channel image has ratio C*f*f / c_y, so for sizes that
are multiples of f the latent holds exactly 1/4 or 1/9 of the input's elements.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

# ratio -> down-sampling factor. 1/4 at H/4 and 1/9 at H/6 keep the same latent
# channel count (4 for gray, 12 for RGB) so both ratios share one decoder design.
FACTORS = {4: 4, 9: 6}
# Learned-compression transforms go deeper for the same element count: 1/4 at H/16
# (192 ch RGB, 64 gray: Ballé 2018's factorized-prior shape), 1/9 at H/12 (48 RGB, 16 gray).
DEEP_FACTORS = {4: 16, 9: 12}
# factor -> stride of each down-sampling stage, first (full resolution) to last.
STRIDES = {4: (2, 2), 6: (2, 3), 8: (2, 2, 2), 12: (2, 2, 3), 16: (2, 2, 2, 2)}
# ratio -> the factors an RD model may choose instead (ModelConfig.down_factor): a shallower
# transform keeps more positions and fewer channels (gray 1/4 at H/4: 4 ch, a 28² image -> 7×7).
RD_FACTORS = {4: (4, 8, 16), 9: (6, 12)}
# registered in aekit.models (kept here too so the CLI offers them without importing torch)
ARCHITECTURE_NAMES = ("dcgan", "resnet", "pretrained", "vae", "gdn", "gdn-hp", "klt")
# Architectures with an integer quantiser and a learned factorized prior (rate-distortion
# trained; the codec codes with tables exported from that prior): the rest use the tanh latent.
# "gdn-hp" adds Ballé et al. 2018's scale hyperprior: y is coded under a Gaussian whose scale
# comes from a side latent z, itself coded with the factorized prior.
RD_ARCHITECTURES = ("gdn", "gdn-hp", "klt")
DEEP_ARCHITECTURES = ("gdn", "gdn-hp")  # the learned-compression shapes (DEEP_FACTORS)
BACKBONES = ("resnet18", "resnet34")  # torchvision ResNets whose trunk to layer1 has 64 channels


@dataclass
class ModelConfig:
    arch: str = "dcgan"  # registered architecture name (aekit.models.ARCHITECTURES)
    channels: int = 3  # image channels: 1 (gray) or 3 (RGB)
    ratio: int = 4  # latent ratio denominator: 4 or 9
    width: int = 64  # channels after the first down-sampling conv; doubled after the second
    encoder_width: int = 0  # gdn, gdn-hp: N of the analysis transform g_a alone (0: width); a narrower g_a
    #                         is a faster compress for the same decoder (issue 17)
    hyper_width: int = 0  # gdn-hp: N of the hyperprior's h_a and h_s (0: width); h_s runs at compress and decompress
    blocks: int = 1  # extra 3x3 conv blocks at the latent resolution, in encoder and decoder
    upsample: str = "pixelshuffle"  # decoder up-sampling: "pixelshuffle" or "transpose" (DCGAN)
    latent_levels: int = 256  # quantisation levels of the tanh latent (<= 256: 8-bit symbols)
    quant: str = "noise"  # training-time quantisation proxy: "noise" (uniform) or "ste" (rounding)
    backbone: str = "resnet18"  # arch "pretrained" only: torchvision ResNet whose trunk is the encoder
    res_blocks: int = 0  # gdn, gdn-hp: residual blocks (3×3 conv, LeakyReLU, 3×3 conv, + x) after each GDN / IGDN
    down_factor: int = 0  # RD archs: down-sampling factor f (0: the architecture's, DEEP_FACTORS or FACTORS);
    #                       one of RD_FACTORS[ratio]; c_y = C·f²/ratio keeps the ratio exact

    def __post_init__(self) -> None:
        if self.ratio not in FACTORS:
            raise ValueError(f"ratio {self.ratio} is not supported (expected 4 or 9)")
        if self.channels not in (1, 3):
            raise ValueError(f"channels {self.channels} is not supported (expected 1 or 3)")
        if not 2 <= self.latent_levels <= 256:
            raise ValueError(f"latent_levels {self.latent_levels} must be in 2..256 (8-bit symbols)")
        if self.upsample not in ("pixelshuffle", "transpose"):
            raise ValueError(f"upsample {self.upsample!r} must be 'pixelshuffle' or 'transpose'")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone {self.backbone!r} is not supported (have: {', '.join(BACKBONES)})")
        if self.quant not in ("noise", "ste"):
            raise ValueError(f"quant {self.quant!r} must be 'noise' or 'ste'")
        if self.encoder_width < 0 or self.hyper_width < 0:
            raise ValueError("encoder_width and hyper_width must be >= 0 (0: width)")
        if self.encoder_width and self.arch not in DEEP_ARCHITECTURES:
            raise ValueError(f"encoder_width applies to {' and '.join(DEEP_ARCHITECTURES)} only (arch {self.arch!r})")
        if self.hyper_width and self.arch != "gdn-hp":
            raise ValueError(f"hyper_width applies to gdn-hp only (arch {self.arch!r})")
        if self.res_blocks < 0 or (self.res_blocks and self.arch not in DEEP_ARCHITECTURES):
            raise ValueError(f"res_blocks applies to {' and '.join(DEEP_ARCHITECTURES)} only and must be >= 0")
        if self.down_factor and self.arch not in RD_ARCHITECTURES:
            raise ValueError(f"down_factor applies to {', '.join(RD_ARCHITECTURES)} only (arch {self.arch!r})")
        if self.down_factor and self.down_factor == self._default_factor():
            self.down_factor = 0  # the architecture's own: one config (and resume, warm start) for either spelling
        if self.down_factor:
            if self.down_factor not in RD_FACTORS[self.ratio]:
                raise ValueError(f"factor {self.down_factor} is not offered at ratio 1/{self.ratio} "
                                 f"(have: {', '.join(map(str, RD_FACTORS[self.ratio]))})")

    def _default_factor(self) -> int:
        return DEEP_FACTORS[self.ratio] if self.arch in DEEP_ARCHITECTURES else FACTORS[self.ratio]

    @property
    def factor(self) -> int:
        """Down-sampling factor f: the latent is (c_y, ceil(H/f), ceil(W/f))."""
        return self.down_factor or self._default_factor()

    @property
    def rd(self) -> bool:
        """Integer quantiser + learned factorized prior (see RD_ARCHITECTURES)."""
        return self.arch in RD_ARCHITECTURES

    @property
    def hyperprior(self) -> bool:
        """y coded under a scale hyperprior (a side latent z at 1/4 of y's resolution)."""
        return self.arch == "gdn-hp"

    @property
    def strides(self) -> tuple[int, ...]:
        return STRIDES[self.factor]

    @property
    def latent_channels(self) -> int:
        return self.channels * self.factor**2 // self.ratio

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(c_y, h, w) for an image of height x width (padded up to a multiple of f)."""
        f = self.factor
        return (self.latent_channels, -(-height // f), -(-width // f))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)
