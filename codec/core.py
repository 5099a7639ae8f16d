"""Images <-> latent files with an exported model: the codec itself (onnxruntime + numpy, no torch).

    codec = Codec("models/photos-r4")
    data = codec.compress(image, "RGB")                   # uint8 (H, W, 3) -> .ael bytes
    image, header = Decoder().decompress(data, "x.ael")  # model found by the id in the file
Large images (above CodecConfig.full_res_max_pixels) are coded in tiles with an overlap of
context in latent space, so memory stays bounded; the latent is still one map per image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aekit.images import DEFAULT_MAX_PIXELS, ImageError, ImageLimitError, load_for_channels
from aekit.codec.format import FLAG_TILED, QUANT_INTEGER, QUANT_TANH_UNIFORM, LatentFormatError, LatentHeader, pack, parse
from aekit.export.entropy import EntropyError, EntropyModel
from aekit.export.manifest import ModelError, find_model, load_manifest
from aekit.export.runtime import Quantiser, Runtime

MODELS_ENV = "AEKIT_MODELS"  # os.pathsep-separated model folders or folders of model folders


class CodecError(Exception):
    """An image or latent file the codec cannot process; the message names the file."""


class CodecLimitError(CodecError, ImageLimitError):
    """A latent file declaring an image over the pixel limit: too big, not broken."""


@dataclass
class CodecConfig:
    batch_size: int = 64  # images of equal size per ONNX call
    full_res_max_pixels: int = 1 << 22  # larger images are coded in tiles (bounded memory)
    tile_px: int = 512  # tile side in pixels (rounded down to a multiple of f); 512: ~0.4 GB peak on 28 Mpx
    overlap: int = 6  # latent units of context on each side of a tile (6 * f pixels)
    max_pixels: int = DEFAULT_MAX_PIXELS  # refuse larger images (decompression bombs)
    levels: int = 0  # tanh models: quantisation levels of the stored latent (0: the model's, usually 256; fewer = smaller files)
    quality: int = 0  # rate-distortion models: quality 1 (smallest) .. N (best); 0: the model's default
    device: str = "auto"  # onnxruntime device: auto | cuda | cpu
    threads: int = 0  # onnxruntime intra-op threads (0: its default)


def default_model_paths() -> list[Path]:
    """Where decompress looks for models: $AEKIT_MODELS (os.pathsep list), then ./models."""
    env = [Path(p) for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p]
    return env + [Path("models")]


def load_for_model(path: str | Path, channels: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Image file -> (uint8 (H, W, channels), original mode "L" | "RGB"): aekit's one channel rule,
    `aekit.images.load_for_channels` (gray through RGB models replicated and restored on decode;
    colour through a gray model refused)."""
    return load_for_channels(path, channels, max_pixels)


def restore_mode(image: np.ndarray, mode: str) -> np.ndarray:
    """Model output (H, W, C) -> the original mode: RGB output of a gray image back to (H, W, 1)."""
    if mode == "L" and image.shape[2] == 3:
        # ITU-R 601 luma, as Pillow's convert("L"); the channels are near-equal anyway.
        y = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.clip(np.rint(y), 0, 255).astype(np.uint8)[:, :, None]
    return image


def tile_spans(n_latent: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Latent rows 0..n split into cores of `tile`: (core_start, core_end, ctx_start, ctx_end)."""
    spans = []
    for a in range(0, n_latent, tile):
        b = min(a + tile, n_latent)
        spans.append((a, b, max(0, a - overlap), min(n_latent, b + overlap)))
    return spans


class Codec:
    """Compress images with one exported model."""

    def __init__(self, model_dir: str | Path, cfg: CodecConfig | None = None):
        self.cfg = cfg or CodecConfig()
        self.rt = Runtime(model_dir, self.cfg.device, self.cfg.threads)
        self.rd = self.rt.quantiser.kind == "integer"
        if self.rd and self.cfg.levels:
            raise CodecError(f"model {self.rt.model_id} is rate-distortion trained: choose --quality, not --levels")
        if not self.rd and self.cfg.quality:
            raise CodecError(f"model {self.rt.model_id} has no quality levels (a tanh-latent model): use --levels")
        self.levels = self.cfg.levels or self.rt.levels
        if not 2 <= self.levels <= 256:
            raise CodecError(f"levels {self.levels} outside 2..256")
        quality = self.cfg.quality or None
        try:
            self.quantiser = Quantiser.of(self.rt.manifest, self.levels, quality)
            self.em = EntropyModel.from_manifest(self.rt.manifest, self.levels, quality)
        except EntropyError as e:
            raise CodecError(str(e)) from None
        ent = self.rt.manifest.get("entropy") or {}
        self.quality = (quality or int(ent.get("default_quality", 0))) if self.rd else 0
        self.model_id, self.channels, self.factor = self.rt.model_id, self.rt.channels, self.rt.factor

    def load(self, path: str | Path) -> tuple[np.ndarray, str]:
        return load_for_model(path, self.channels, self.cfg.max_pixels)

    def tiled(self, height: int, width: int) -> bool:
        return height * width > self.cfg.full_res_max_pixels

    def symbols(self, images: np.ndarray) -> np.ndarray:
        """uint8 (B, H, W, C) -> uint8 symbols (B, c_y, ceil(H/f), ceil(W/f))."""
        b, h, w, _ = images.shape
        if self.tiled(h, w):
            return np.stack([self._symbols_tiled(im) for im in images])
        return self.quantiser.quantise(self.rt.encode(images))

    def _symbols_tiled(self, image: np.ndarray) -> np.ndarray:
        """One large image (H, W, C) -> symbols (c_y, h, w), encoded tile by tile."""
        f, h, w = self.factor, image.shape[0], image.shape[1]
        c, lh, lw = self.rt.latent_shape(h, w)
        tile = max(1, self.cfg.tile_px // f)
        q = np.empty((c, lh, lw), dtype=np.uint8)
        for r0, r1, cr0, cr1 in tile_spans(lh, tile, self.cfg.overlap):
            for c0, c1, cc0, cc1 in tile_spans(lw, tile, self.cfg.overlap):
                crop = image[cr0 * f:min(h, cr1 * f), cc0 * f:min(w, cc1 * f)]  # (th, tw, C)
                qt = self.quantiser.quantise(self.rt.encode(crop[None]))[0]  # (c_y, cr1-cr0, cc1-cc0)
                q[:, r0:r1, c0:c1] = qt[:, r0 - cr0:r1 - cr0, c0 - cc0:c1 - cc0]
        return q

    def header(self, height: int, width: int, mode: str, coder: int) -> LatentHeader:
        return LatentHeader(
            model_id=self.model_id, height=height, width=width, mode=mode, factor=self.factor,
            latent_shape=self.rt.latent_shape(height, width), levels=self.levels,
            quantiser=QUANT_INTEGER if self.rd else QUANT_TANH_UNIFORM, coder=coder,
            flags=FLAG_TILED if self.tiled(height, width) else 0, quality=self.quality,
        )

    def pack(self, q: np.ndarray, height: int, width: int, mode: str) -> bytes:
        """Symbols (c_y, h, w) of one image -> .ael file bytes."""
        coder, payload = self.em.encode(q)
        data = pack(self.header(height, width, mode, coder), payload)  # refuses what parse would refuse
        parse(data, "<written file>")  # read the header back: writer and reader agree
        return data

    def compress_batch(self, images: np.ndarray, modes: list[str]) -> list[bytes]:
        """uint8 (B, H, W, C) images of one size -> one .ael file content each."""
        q = self.symbols(images)
        h, w = images.shape[1:3]
        return [self.pack(qi, h, w, m) for qi, m in zip(q, modes)]

    def compress(self, image: np.ndarray, mode: str | None = None) -> bytes:
        """uint8 (H, W, C) -> .ael bytes; C may be 1 for an RGB model (replicated, mode "L")."""
        if image.ndim == 2:
            image = image[:, :, None]
        if image.shape[2] != self.channels:
            if image.shape[2] == 1 and self.channels == 3:
                image, mode = np.repeat(image, 3, axis=2), "L"
            else:
                raise CodecError(f"image with {image.shape[2]} channels, model {self.model_id} takes {self.channels}")
        return self.compress_batch(image[None], [mode or ("L" if self.channels == 1 else "RGB")])[0]


class Decoder:
    """Decode latent files, finding each file's model by the id it stores (models cached)."""

    def __init__(self, search: list[str | Path] | None = None, cfg: CodecConfig | None = None):
        self.search = [Path(p) for p in search] if search else default_model_paths()
        self.cfg = cfg or CodecConfig()
        self._models: dict[str, dict[str, Any]] = {}
        self._entropy: dict[tuple[str, int, int], tuple[EntropyModel, Quantiser]] = {}
        self._runtimes: dict[str, Runtime] = {}

    def model(self, model_id: str) -> dict[str, Any]:
        """The manifest of a model id; ModelError if no search path has it."""
        if model_id not in self._models:
            self._models[model_id] = load_manifest(find_model(model_id, self.search))
        return self._models[model_id]

    def entropy(self, model_id: str, levels: int, quality: int = 0) -> tuple[EntropyModel, Quantiser]:
        """The tables and quantiser of a file's (model, levels, quality); EntropyError if the model lacks them."""
        key = (model_id, levels, quality)
        if key not in self._entropy:
            m = self.model(model_id)
            self._entropy[key] = (EntropyModel.from_manifest(m, levels, quality or None),
                                  Quantiser.of(m, levels, quality or None))
        return self._entropy[key]

    def runtime(self, model_id: str) -> Runtime:
        if model_id not in self._runtimes:
            self._runtimes[model_id] = Runtime(self.model(model_id)["_dir"], self.cfg.device, self.cfg.threads)
        return self._runtimes[model_id]

    def symbols(self, data: bytes, name: str = "<bytes>") -> tuple[LatentHeader, np.ndarray]:
        """File bytes -> (header, uint8 symbols (c_y, h, w)); no ONNX involved."""
        h, payload = parse(data, name)
        if h.height * h.width > self.cfg.max_pixels:
            raise CodecLimitError(f"{name}: {h.width}x{h.height} image exceeds the limit of {self.cfg.max_pixels} pixels")
        m = self.model(h.model_id)
        expect = (m["latent_channels"], m["factor"])
        if (h.latent_shape[0], h.factor) != expect:
            raise CodecError(f"{name}: header (c_y, f) = {(h.latent_shape[0], h.factor)} "
                             f"disagrees with model {h.model_id} {expect}")
        if h.mode == "RGB" and m["channels"] == 1:
            raise CodecError(f"{name}: an RGB image cannot come from gray model {h.model_id}")
        rd = m["latent"].get("quantiser") == "integer"
        if rd != (h.quantiser == QUANT_INTEGER) or (rd and h.levels != m["latent"]["levels"]):
            raise CodecError(f"{name}: quantiser {h.quantiser} with {h.levels} levels does not fit model {h.model_id}")
        try:
            em, _ = self.entropy(h.model_id, h.levels, h.quality)
            return h, em.decode(h.coder, payload, h.latent_shape)
        except EntropyError as e:
            raise CodecError(f"{name}: {e}") from None

    def reconstruct(self, header: LatentHeader, q: np.ndarray) -> np.ndarray:
        """Symbols (B, c_y, h, w) of images sharing header's model and size -> uint8 (B, H, W, C) in its mode."""
        rt = self.runtime(header.model_id)
        _, quantiser = self.entropy(header.model_id, header.levels, header.quality)
        H, W = header.height, header.width
        if H * W > self.cfg.full_res_max_pixels:
            out = np.stack([self._decode_tiled(rt, quantiser.dequantise(qi), H, W) for qi in q])
        else:
            out = rt.decode(quantiser.dequantise(q), H, W)
        return np.stack([restore_mode(o, header.mode) for o in out]) if header.mode == "L" else out

    def _decode_tiled(self, rt: Runtime, y_hat: np.ndarray, height: int, width: int) -> np.ndarray:
        """y_hat (c_y, h, w) of one large image -> uint8 (H, W, C), decoded tile by tile."""
        f = rt.factor
        tile = max(1, self.cfg.tile_px // f)
        out = np.empty((height, width, rt.channels), dtype=np.uint8)
        for r0, r1, cr0, cr1 in tile_spans(y_hat.shape[1], tile, self.cfg.overlap):
            for c0, c1, cc0, cc1 in tile_spans(y_hat.shape[2], tile, self.cfg.overlap):
                xt = rt.decode(y_hat[None, :, cr0:cr1, cc0:cc1])[0]  # ((cr1-cr0)f, (cc1-cc0)f, C)
                core = xt[(r0 - cr0) * f:(r1 - cr0) * f, (c0 - cc0) * f:(c1 - cc0) * f]
                out[r0 * f:min(height, r1 * f), c0 * f:min(width, c1 * f)] = core[:min(height, r1 * f) - r0 * f,
                                                                                   :min(width, c1 * f) - c0 * f]
        return out

    def decompress(self, data: bytes, name: str = "<bytes>") -> tuple[np.ndarray, LatentHeader]:
        """File bytes -> (uint8 (H, W, 1 | 3) in the original mode, header)."""
        h, q = self.symbols(data, name)
        return self.reconstruct(h, q[None])[0], h


def wrap_errors(name: str | Path, exc: Exception) -> Exception:
    """Any expected failure -> one-line CodecError naming the file (others pass through)."""
    if isinstance(exc, (CodecError, ImageError, LatentFormatError)):
        return exc if str(name) in str(exc) else CodecError(f"{name}: {exc}")
    if isinstance(exc, (ModelError, EntropyError, OSError)):
        return CodecError(f"{name}: {exc}")
    return exc
