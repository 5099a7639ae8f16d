"""Size and quality next to the timings: whole .ael files against whole JPEG files of about the same size.

    codec, decoder = open_codec("models/fmnist-r4", threads=1)
    row = quality_row(codec, decoder, images, "28x28")   # ours_bytes, ours_psnr_db, jpeg_quality, jpeg_psnr_db ...
Ours are the files `aekit compress` writes (aekit.codec.core, header included), decoded by
`aekit decompress`'s Decoder; JPEG is the codec's one baseline (aekit.codec.baseline) at the
quality whose mean file size is closest; PSNR is aekit.metrics' per-image mean.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from aekit.codec.core import Codec, Decoder

OURS_BYTES_ARE = "whole .ael files (header + entropy-coded payload)"


def open_codec(model_dir: str, threads: int) -> tuple[Codec, Decoder]:
    """The model's Codec and a Decoder that finds it, on the CPU. ImportError when a runtime
    dependency of the codec (the entropy coder) is missing."""
    from aekit.codec.core import Codec, CodecConfig, Decoder

    cfg = CodecConfig(device="cpu", threads=threads)
    return Codec(model_dir, cfg), Decoder([model_dir], cfg)


def quality_row(codec: Codec, decoder: Decoder, images: np.ndarray, size: str) -> dict[str, Any]:
    """uint8 (N, H, W, C) images -> the row of BenchReport.quality for this size."""
    from aekit.bench.jpeg import match_quality
    from aekit.export.entropy import CODER_NAMES
    from aekit.metrics import mean_psnr

    files = [codec.compress(im) for im in images]
    decoded = [decoder.decompress(f) for f in files]  # (image, header) each
    ours_psnr = mean_psnr((a, b.reshape(a.shape)) for a, (b, _) in zip(images, decoded))
    coders: dict[str, int] = {}
    for _, header in decoded:
        name = CODER_NAMES.get(header.coder, str(header.coder))
        coders[name] = coders.get(name, 0) + 1
    mean = float(np.mean([len(f) for f in files]))
    j = match_quality(list(images), mean)
    h, w = images.shape[1:3]
    row = {"size": size, "images": len(images), "ours_bytes": mean, "ours_bytes_are": OURS_BYTES_ARE,
           "ours_psnr_db": ours_psnr, "raw_bytes": int(np.prod(images.shape[1:])), "coders": coders,
           "symbols_per_image": int(np.prod(codec.rt.latent_shape(h, w))),
           "jpeg_quality": j["quality"], "jpeg_bytes": j["mean_bytes"], "jpeg_psnr_db": j["psnr_db"]}
    if "note" in j:
        row["note"] = j["note"]
    return row
