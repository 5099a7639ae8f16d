"""Python API of the codec: one file at a time, and latents as features for other models.

    from aekit.codec import compress_file, decompress_file, read_latents
    compress_file("cat.png", "cat.png.ael", "models/photos-r4")
    decompress_file("cat.png.ael", "cat.png")        # model found by id (./models, $AEKIT_MODELS)
    y_hat = read_latents("cat.png.ael")              # float32 (c_y, H/f, W/f) in [-1, 1]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aekit.images import atomic_write_bytes
from aekit.codec.core import Codec, CodecConfig, CodecError, Decoder, wrap_errors
from aekit.codec.jobs import encode_image_file


def _exists_guard(dst: Path, overwrite: bool) -> None:
    if dst.exists() and not overwrite:
        raise CodecError(f"{dst}: exists; pass overwrite=True (CLI: --overwrite) to replace it")


def compress_file(src: str | Path, dst: str | Path, model: str | Path | Codec, *,
                  overwrite: bool = False, cfg: CodecConfig | None = None) -> Path:
    """Compress one image file to a .ael file (atomic write); returns dst."""
    src, dst = Path(src), Path(dst)
    _exists_guard(dst, overwrite)
    codec = model if isinstance(model, Codec) else Codec(model, cfg)
    try:
        image, mode = codec.load(src)
        data = codec.compress_batch(image[None], [mode])[0]
    except Exception as e:
        raise wrap_errors(src, e) from None
    return atomic_write_bytes(dst, data)


def decompress_file(src: str | Path, dst: str | Path, models: list[str | Path] | Decoder | None = None, *,
                    overwrite: bool = False) -> Path:
    """Decode one .ael file to an image file (format from dst's suffix, lossless PNG advised)."""
    src, dst = Path(src), Path(dst)
    _exists_guard(dst, overwrite)
    decoder = models if isinstance(models, Decoder) else Decoder(models)
    try:
        image, _ = decoder.decompress(src.read_bytes(), str(src))
    except Exception as e:
        raise wrap_errors(src, e) from None
    return atomic_write_bytes(dst, encode_image_file(image, dst))


def read_latents(path: str | Path, models: list[str | Path] | Decoder | None = None, *,
                 dequantised: bool = True) -> np.ndarray:
    """The latent of a .ael file: float32 y_hat (c_y, h, w) (in [-1, 1] for tanh models), or uint8 symbols.

    Needs only the model's manifest (its symbol histogram), not the ONNX networks.
    """
    path = Path(path)
    decoder = models if isinstance(models, Decoder) else Decoder(models)
    try:
        header, q = decoder.symbols(path.read_bytes(), str(path))
    except Exception as e:
        raise wrap_errors(path, e) from None
    return decoder.entropy(header.model_id, header.levels, header.quality)[1].dequantise(q) if dequantised else q
