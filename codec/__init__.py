"""The codec: compress images into compact latent files (.ael) with an exported autoencoder.

    aekit compress photos/ -m models/photos-r4 -o latents/   # mirrored tree of .ael files
    aekit decompress latents/ -o decoded/                    # model found by the id in each file
Python: compress_file, decompress_file, read_latents (aekit.codec.api). Format: codec/FORMAT.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["compress_file", "decompress_file", "read_latents", "Codec", "Decoder", "CodecConfig", "CodecError"]


def __getattr__(name: str) -> Any:  # lazy, so `aekit --help` does not load numpy/onnxruntime
    if name in ("compress_file", "decompress_file", "read_latents"):
        from aekit.codec import api

        return getattr(api, name)
    if name in ("Codec", "Decoder", "CodecConfig", "CodecError"):
        from aekit.codec import core

        return getattr(core, name)
    raise AttributeError(f"module 'codec' has no attribute {name!r}")
