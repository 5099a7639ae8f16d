"""Training-time input corruption and schedules, parsed from the train options.

`--noise gaussian:S | mask:F | defects:P` (parse_noise, corrupt, paste_defects: denoising and
synthetic local defects; targets stay clean) and `--progressive SIZE:EPOCHS,...` (parse_progressive).
"""

from __future__ import annotations

import math

import torch


def parse_noise(spec: str) -> tuple[str, float] | None:
    """'gaussian:0.1' (sigma on the [0, 1] pixel scale), 'mask:0.25' (fraction of pixels
    dropped to black) or 'defects:0.5' (probability that an image gets a synthetic local defect)
    -> (kind, amount); '' -> None."""
    if not spec:
        return None
    kind, _, amount = spec.partition(":")
    if kind not in ("gaussian", "mask", "defects"):
        raise ValueError(f"noise {spec!r}: expected gaussian:SIGMA, mask:FRACTION or defects:PROBABILITY")
    try:
        value = float(amount)
    except ValueError:
        raise ValueError(f"noise {spec!r}: {amount!r} is not a number") from None
    if not (0 < value <= 1):
        raise ValueError(f"noise {spec!r}: amount must be in (0, 1]")
    return kind, value


def corrupt(x: torch.Tensor, noise: tuple[str, float], gen: torch.Generator | None = None) -> torch.Tensor:
    """Corrupted copy of x (B, C, H, W) in [-1, 1]: additive Gaussian noise or masking noise
    (whole pixels, all channels, set to black)."""
    kind, amount = noise
    if kind == "defects":
        return paste_defects(x, amount, gen)
    if kind == "gaussian":
        n = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        return (x + 2 * amount * n).clamp(-1, 1)  # sigma on [0, 1] is 2 sigma on [-1, 1]
    keep = torch.rand((x.shape[0], 1, *x.shape[2:]), generator=gen, device=x.device) >= amount
    return torch.where(keep, x, torch.full_like(x, -1.0))


DEFECT_KINDS = ("square", "scratch", "noise", "cutpaste")  # synthetic local defects of --noise defects:P


def paste_defects(x: torch.Tensor, prob: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """Copy of x (B, C, H, W) in [-1, 1] where each image, with probability prob, gets one local
    defect (DRAEM/CutPaste idea; the target stays clean, so the model learns to repair, not copy):
    a flat square of a random grey, a 1-2 px scratch, a patch of uniform noise, or a patch cut
    from elsewhere in the image. Sides 2 px to a quarter of the image side."""
    out = x.clone()
    b, c, h, w = x.shape
    dev = gen.device if gen is not None else torch.device("cpu")  # draws on the generator's device
    r = torch.rand((b, 8), generator=gen, device=dev).tolist()
    for i, (p, k, u, v, s1, s2, g, a) in enumerate(r):
        if p >= prob:
            continue
        kind = DEFECT_KINDS[int(k * len(DEFECT_KINDS))]
        hi = max(3, min(h, w) // 4 + 1)
        sh, sw = 2 + int(s1 * (hi - 2)), 2 + int(s2 * (hi - 2))
        y0, x0 = int(u * (h - sh + 1)), int(v * (w - sw + 1))
        patch = out[i, :, y0 : y0 + sh, x0 : x0 + sw]
        if kind == "square":
            patch.fill_(2 * g - 1)
        elif kind == "noise":
            patch.copy_(torch.rand(patch.shape, generator=gen, device=dev).to(x) * 2 - 1)
        elif kind == "cutpaste":
            ys, xs = int(g * (h - sh + 1)), int(a * (w - sw + 1))
            patch.copy_(x[i, :, ys : ys + sh, xs : xs + sw])
        else:  # scratch: a thin straight line across a box of side ~2 * max(sh, sw)
            n = 2 * max(sh, sw)
            t = torch.linspace(0, 1, 4 * n, device=x.device)
            yy = (y0 + t * (n - 1) * math.sin(a * math.pi)).long().clamp(0, h - 1)
            xx = (x0 + t * (n - 1) * math.cos(a * math.pi) * (1 if g < 0.5 else -1)).long().clamp(0, w - 1)
            value = 1.0 if g < 0.5 else -1.0
            out[i, :, yy, xx] = value
            if s1 > 0.5:  # 2 px wide
                out[i, :, (yy + 1).clamp(max=h - 1), xx] = value
    return out


def parse_progressive(spec: str, epochs: int) -> list[int | None]:
    """'14:2,21:1' -> the training size of each epoch: [14, 14, 21, None, ...] (None: full size)."""
    sizes: list[int | None] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        size, _, n = part.partition(":")
        try:
            size_i, n_i = int(size), int(n)
        except ValueError:
            raise ValueError(f"progressive {spec!r}: expected SIZE:EPOCHS[,SIZE:EPOCHS]") from None
        if size_i < 1 or n_i < 1:
            raise ValueError(f"progressive {spec!r}: sizes and epochs must be positive")
        sizes += [size_i] * n_i
    if sizes and len(sizes) >= epochs:
        raise ValueError(f"progressive {spec!r} covers {len(sizes)} epochs of {epochs}: "
                         "leave at least one epoch at the full size")
    return sizes + [None] * (epochs - len(sizes))
