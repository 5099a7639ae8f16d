"""Python API of the codec: one file at a time, and latents as features for other models.

    from aekit.codec import compress_file, decompress_file, read_latents
    compress_file("cat.png", "cat.png.ael", "models/photos-r4")
    decompress_file("cat.png.ael", "cat.png")        # model found by id (./models, $AEKIT_MODELS)
    y_hat = read_latents("cat.png.ael")              # float32 (c_y, H/f, W/f) in [-1, 1]
A model path loads once per process: the Codec (and its onnxruntime sessions) of a path is kept
in a small LRU keyed by the resolved path, the manifest's mtime and the settings.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import astuple
from pathlib import Path

import numpy as np

from aekit.images import atomic_output, atomic_write_bytes
from aekit.codec.core import Codec, CodecConfig, CodecError, Decoder, default_model_paths, wrap_errors
from aekit.codec.jobs import encode_image_file, is_png_name, stream_png


def _exists_guard(dst: Path, overwrite: bool) -> None:
    if dst.exists() and not overwrite:
        raise CodecError(f"{dst}: exists; pass overwrite=True (CLI: --overwrite) to replace it")


CODEC_CACHE_SIZE = 4  # Codecs kept per process (each holds a model's two sessions, cached underneath too)
_codecs: "OrderedDict[tuple, Codec]" = OrderedDict()
_codecs_lock = threading.Lock()


def cached_codec(model: str | Path, cfg: CodecConfig | None = None) -> Codec:
    """The Codec of a model folder and settings, built once per process (LRU of CODEC_CACHE_SIZE).

    Keyed by the resolved folder, its manifest's mtime and the settings, so a re-exported model
    is loaded again. Raises what Codec raises (ModelError, CodecError).
    """
    cfg = cfg or CodecConfig()
    folder = Path(model).resolve()
    try:
        stamp = (folder / "manifest.json").stat().st_mtime_ns
    except OSError:
        return Codec(model, cfg)  # not a folder we can stamp: let Codec say what is wrong
    key = (str(folder), stamp, astuple(cfg))
    with _codecs_lock:
        if key in _codecs:
            _codecs.move_to_end(key)
            return _codecs[key]
    codec = Codec(model, cfg)
    with _codecs_lock:
        codec = _codecs.setdefault(key, codec)
        while len(_codecs) > CODEC_CACHE_SIZE:
            _codecs.popitem(last=False)
    return codec


def compress_file(src: str | Path, dst: str | Path, model: str | Path | Codec, *,
                  overwrite: bool = False, cfg: CodecConfig | None = None) -> Path:
    """Compress one image file to a .ael file (atomic write); returns dst.

    model: an exported model folder (its Codec is cached per process, see cached_codec) or a Codec.
    Raises CodecError naming src (unreadable image, over the pixel limit, wrong channels) or dst (exists).
    """
    src, dst = Path(src), Path(dst)
    _exists_guard(dst, overwrite)
    codec = model if isinstance(model, Codec) else cached_codec(model, cfg)
    try:
        image, mode = codec.load(src, lazy=True)
        h, w = image.shape[:2]
        q = codec.symbols([image], packed=True)[0]
        pixels = codec.fit_input(image)  # kept for the post-filter's fit: the pixels, or a large image's windows
        del image  # a large image's pixels go before its symbols are unpacked and coded (issue 17)
        data = codec.pack(np.asarray(q), h, w, mode, pixels)
    except Exception as e:
        raise wrap_errors(src, e) from None
    return atomic_write_bytes(dst, data)


_decoders: "OrderedDict[tuple, Decoder]" = OrderedDict()


def cached_decoder(models: list[str | Path] | None = None) -> Decoder:
    """The Decoder of a model search list, kept per process (models are found by content id, so a
    cached manifest never goes stale; a model added later is still found)."""
    search = [Path(p).resolve() for p in (models or default_model_paths())]
    key = tuple(map(str, search))
    with _codecs_lock:
        if key not in _decoders:
            _decoders[key] = Decoder(search)
            while len(_decoders) > CODEC_CACHE_SIZE:
                _decoders.popitem(last=False)
        _decoders.move_to_end(key)
        return _decoders[key]


def decompress_file(src: str | Path, dst: str | Path, models: list[str | Path] | Decoder | None = None, *,
                    overwrite: bool = False) -> Path:
    """Decode one .ael file to an image file (format from dst's suffix, lossless PNG advised); returns dst.

    models: model folders to search (default: $AEKIT_MODELS, ./models; the Decoder is cached per
    process, see cached_decoder) or a Decoder. Raises CodecError naming src (corrupt, unknown model).
    """
    src, dst = Path(src), Path(dst)
    _exists_guard(dst, overwrite)
    decoder = models if isinstance(models, Decoder) else cached_decoder(models)
    try:
        header, q = decoder.symbols(src.read_bytes(), str(src))
        streamed = decoder.tiled(header) and is_png_name(dst)
        image = None if streamed else decoder.reconstruct(header, q[None])[0]
    except Exception as e:
        raise wrap_errors(src, e) from None
    if image is not None:
        return atomic_write_bytes(dst, encode_image_file(image, dst))
    with atomic_output(dst) as tmp, open(tmp, "wb") as f:  # large: decoded into the file a row of tiles at a time
        try:
            stream_png(decoder, header, q, f)
        except OSError:
            raise  # writing dst failed: the error names the temp file beside it
        except Exception as e:
            raise wrap_errors(src, e) from None
    return dst


def read_latents(path: str | Path, models: list[str | Path] | Decoder | None = None, *,
                 dequantised: bool = True) -> np.ndarray:
    """The latent of a .ael file: float32 y_hat (c_y, h, w) (in [-1, 1] for tanh models), or uint8 symbols.

    Needs only the model's manifest (its symbol histogram), not the ONNX networks.
    """
    path = Path(path)
    decoder = models if isinstance(models, Decoder) else cached_decoder(models)
    try:
        header, q = decoder.symbols(path.read_bytes(), str(path))
    except Exception as e:
        raise wrap_errors(path, e) from None
    return decoder.entropy(header.model_id, header.levels, header.quality)[1].dequantise(q) if dequantised else q
