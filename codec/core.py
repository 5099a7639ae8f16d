"""Images <-> latent files with an exported model: the codec itself (onnxruntime + numpy, no torch).

    codec = Codec("models/photos-r4")
    data = codec.compress(image, "RGB")                   # uint8 (H, W, 3) -> .ael bytes
    image, header = Decoder().decompress(data, "x.ael")  # model found by the id in the file
Large images (above CodecConfig.full_res_max_pixels, or whose model call would not fit the
memory budget) are coded in tiles with an overlap of context in latent space, tiles in parallel
on `workers` threads; the latent is still one map per image and the bytes do not depend on the
tiling's parallelism. Batches and tiles are sized so the estimated bytes of the model calls
running at once stay within CodecConfig.memory_mb (see aekit.export.runtime.ActivationEstimate).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from aekit.images import DEFAULT_MAX_PIXELS, ImageError, ImageLimitError, LazyPixels, display, load_for_channels
from aekit.codec.postfilter import FIT_MAX_PIXELS, FIT_WINDOW_PX, MAX_RADIUS, PostFilter, Window, apply_rows, choose, choose_windows
from aekit.codec.postfilter import apply as apply_filter
from aekit.codec.format import FLAG_TILED, QUANT_INTEGER, QUANT_TANH_UNIFORM, LatentFormatError, LatentHeader, pack, parse
from aekit.export.entropy import (RDOQ_MAX_SYMBOLS, RDOQ_T, ZSTD_GATE, ZSTD_LEVEL, ZSTD_LEVEL_SMALLEST, EntropyError,
                                  EntropyModel)
from aekit.export.manifest import ModelError, find_model, load_model_as
from aekit.export.runtime import ActivationEstimate, MemoryGate, Quantiser, Runtime
from aekit.machine import usable_cores

FALLBACK_OVERLAP = 6  # latent units of tile context when a graph's receptive field cannot be read
TILE_CALLS = 4  # a tile's call is sized to 1/4 of CodecConfig.memory_mb (see CodecConfig.tile_budget)
CALLS_AT_ONCE = 2  # a model call is sized to 1/2 of CodecConfig.memory_mb
MODELS_ENV = "AEKIT_MODELS"  # os.pathsep-separated model folders or folders of model folders


class CodecError(Exception):
    """An image or latent file the codec cannot process; the message names the file."""


class CodecLimitError(CodecError, ImageLimitError):
    """A latent file declaring an image over the pixel limit: too big, not broken."""


@dataclass
class CodecConfig:
    batch_size: int = 64  # images of equal size per ONNX call at most (fewer when memory_mb says so)
    full_res_max_pixels: int = 1 << 22  # larger images are coded in tiles (bounded memory)
    tile_px: int = 512  # largest tile side in pixels (rounded down to a multiple of f; smaller if memory_mb needs)
    overlap: int = 0  # latent units of context on each side of a tile; 0: the model's receptive field (exact tiles)
    max_pixels: int = DEFAULT_MAX_PIXELS  # refuse larger images (decompression bombs)
    levels: int = 0  # tanh models: quantisation levels of the stored latent (0: the model's, usually 256; fewer = smaller files)
    quality: int = 0  # rate-distortion models: quality 1 (smallest) .. N (best); 0: the model's default
    device: str = "auto"  # onnxruntime device: auto | cuda | cpu
    threads: int = 1  # onnxruntime intra-op threads per call (0: every core); parallelism comes from workers
    workers: int = 0  # model calls at once (tiles of one image, images of a folder); 0: the usable cores
    memory_mb: int = 768  # MiB of estimated activations of all model calls running at once (CPU); one call gets half
    int8: bool = False  # run the model's int8 encoder / decoder variants where it ships them (faster on CPU, a little less exact)
    smallest: bool = False  # spend time for smaller files: zstd trial at ZSTD_LEVEL_SMALLEST instead of ZSTD_LEVEL
    rdoq: float = RDOQ_T  # rate-distortion models: RDOQ's price of a bit in Δ² (aekit.export.entropy); 0: plain rounding
    channel_context: bool = True  # models with a channel context: also try coder 6 (smaller files, slower compress)
    spatial_context: bool = True  # rate-distortion models: also try coders 7/8, the neighbours' mean prediction (version 7)
    post_filter: bool = True  # fit a per-image post-filter to the decoded pixels and store it where it pays (version 8)

    @property
    def n_workers(self) -> int:
        return self.workers if self.workers > 0 else usable_cores()

    @property
    def budget(self) -> int:
        """Bytes all model calls running at once may use (the MemoryGate's capacity)."""
        return max(1, self.memory_mb) << 20

    @property
    def tile_budget(self) -> int:
        """Bytes one tile's call may use: a quarter of the budget. Two tiles run at once, and an
        onnxruntime arena grows in steps to up to ~2x what a call needs (measured on photos-r4's
        decoder: 465 MB held for a 229 MB estimate), so large images stay within memory_mb."""
        return self.budget // TILE_CALLS

    def tile_budget_beside(self, held: int) -> int:
        """Bytes one tile's call may use while the image being encoded holds `held` bytes (Pillow's decoded
        image, or its array): a quarter of what the budget leaves beside the image, and at least a quarter
        of tile_budget, so a 178 Mpx photo (712 MB) is encoded in smaller tiles (the same symbols: tiles are
        exact) and compress stays near 0.9-1.0 GB; ordinary tiled images (4-50 Mpx) are barely affected."""
        return max(self.budget - max(0, held), self.budget // TILE_CALLS) // TILE_CALLS

    @property
    def call_budget(self) -> int:
        """Bytes one model call may use: batches and tiles are sized to it. Half the budget, so two
        calls run at once; it does not depend on `workers`, so neither do the tiles, nor the bytes."""
        return self.budget // CALLS_AT_ONCE


def plan_batch(est: ActivationEstimate | None, pixels: int, budget: int, max_batch: int) -> int:
    """Images of `pixels` each per model call so that est.bytes(n * pixels) <= budget: 1..max_batch.

    At least 1 (a single image that does not fit is the tiler's business); max_batch without an
    estimate (GPU). Pure arithmetic: the byte bound the folder jobs rely on (tested).
    """
    if est is None:
        return max(1, max_batch)
    room = budget - est.fixed
    n = int(room // (est.per_pixel * max(pixels, 1))) if room > 0 and est.per_pixel > 0 else 1
    return max(1, min(max_batch, n))


def plan_tile(est: ActivationEstimate | None, factor: int, overlap: int, tile_px: int, budget: int) -> int:
    """Tile core side in latent units: the largest <= tile_px / f whose call, context included
    ((core + 2 * overlap) * f pixels a side), fits budget; at least 1."""
    t = max(1, tile_px // factor)
    while est is not None and t > 1 and est.bytes(((t + 2 * overlap) * factor) ** 2) > budget:
        t -= 1
    return t


def default_model_paths() -> list[Path]:
    """Where decompress looks for models: $AEKIT_MODELS (os.pathsep list), then ./models."""
    env = [Path(p) for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p]
    return env + [Path("models")]


def load_for_model(path: str | Path, channels: int, max_pixels: int = DEFAULT_MAX_PIXELS,
                   lazy_above: int = 0) -> tuple[np.ndarray | LazyPixels, str]:
    """Image file -> (uint8 (H, W, channels), original mode "L" | "RGB"): aekit's one channel rule,
    `aekit.images.load_for_channels` (gray through RGB models replicated and restored on decode;
    colour through a gray model refused). lazy_above: images of more pixels come back as LazyPixels."""
    return load_for_channels(path, channels, max_pixels, lazy_above)


def restore_mode(image: np.ndarray, mode: str) -> np.ndarray:
    """Model output (H, W, C) -> the original mode: RGB output of a gray image back to (H, W, 1)."""
    if mode == "L" and image.shape[2] == 3:
        # ITU-R 601 luma, as Pillow's convert("L"); the channels are near-equal anyway.
        y = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.clip(np.rint(y), 0, 255).astype(np.uint8)[:, :, None]
    return image


def tile_context(rt: Runtime, part: str, cfg: CodecConfig) -> int:
    """Latent units of context per tile side: cfg.overlap if set, else the model's receptive field
    (Runtime.context: tiles then compute exactly what the whole image would; measured on photos-r4,
    2 units give the same symbols and pixels as no tiling, 1 does not), FALLBACK_OVERLAP for a
    graph whose reach is not known."""
    return cfg.overlap if cfg.overlap > 0 else rt.context(part, FALLBACK_OVERLAP)


def tile_spans(n_latent: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Latent rows 0..n split into cores of `tile`: (core_start, core_end, ctx_start, ctx_end).

    Every context window has the same length, min(n, tile + 2 * overlap): at the borders it
    reaches further inward instead of being cut short (each core still has at least `overlap`
    units of context wherever the image has them). One tile shape per image lets onnxruntime's
    arena reuse one set of buffers: with a shape per border tile it grew to about twice the
    estimate (measured 785 MB instead of 450 MB decoding 1800² with photos-r9).
    """
    size = min(n_latent, tile + 2 * overlap)
    spans = []
    for a in range(0, n_latent, tile):
        b = min(a + tile, n_latent)
        s = min(max(0, a - overlap), n_latent - size)
        spans.append((a, b, s, s + size))
    return spans


class TilePool:
    """Threads that run the tiles of one image at once (created on first use, shared by callers)."""

    def __init__(self, workers: int):
        self.workers, self._pool, self._lock = max(1, workers), None, threading.Lock()

    def map(self, fn, jobs: list) -> list:
        """[fn(j) for j in jobs], on up to `workers` threads; the first exception is raised."""
        if self.workers == 1 or len(jobs) < 2:
            return [fn(j) for j in jobs]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="aekit-tile")
        return list(self._pool.map(fn, jobs))


@dataclass(frozen=True)
class FitSample:
    """What the encoder keeps of an image above FIT_MAX_PIXELS to fit its post-filter once the pixels are gone
    (Codec.fit_input): per window, the latent box decoded (rows a..b, columns c..d), the pixel box kept (y0..y1,
    x0..x1, inside the decoded one), the margin of that box around the window's inner pixels (top, bottom, left,
    right) and the original uint8 pixels of the box."""

    windows: list[tuple[tuple[int, int, int, int], tuple[int, int, int, int], tuple[int, int, int, int], np.ndarray]]


def fit_windows(height: int, width: int, factor: int, budget: int,
                side: int = FIT_WINDOW_PX) -> list[tuple[int, int, int, int]]:
    """Latent boxes (r0, r1, c0, c1) of the windows a large image's post-filter is fitted on: squares of about
    `side` pixels (whole latent units, inside the image's whole latent rows and columns), as many as `budget`
    pixels hold, on a grid spread evenly over the image from edge to edge, not overlapping. [] when the image has
    no whole latent row or column."""
    lh, lw = height // factor, width // factor
    s = max(1, min(side, int(np.sqrt(budget))) // factor)
    sr, sc = min(s, lh), min(s, lw)
    if sr == 0 or sc == 0:
        return []
    k = max(1, budget // (sr * sc * factor * factor))
    # the grid (rows gr × columns gc) of the most windows within k, its shape nearest the image's
    grids = [(gr, max(1, min(lw // sc, k // gr))) for gr in range(1, min(k, lh // sr) + 1)]
    gr, gc = max(grids, key=lambda g: (g[0] * g[1], -abs(np.log(g[0] * lw / (g[1] * lh)))))

    def starts(n_latent: int, size: int, n: int) -> list[int]:
        return [(n_latent - size) // 2] if n == 1 else [round(i * (n_latent - size) / (n - 1)) for i in range(n)]

    return [(r, r + sr, c, c + sc) for r in starts(lh, sr, gr) for c in starts(lw, sc, gc)]


class Codec:
    """Compress images with one exported model (thread-safe: folder jobs call it from several workers)."""

    def __init__(self, model_dir: str | Path, cfg: CodecConfig | None = None):
        self.cfg = cfg or CodecConfig()
        self.gate = MemoryGate(self.cfg.budget)
        self.rt = Runtime(model_dir, self.cfg.device, self.cfg.threads, self.gate, int8=self.cfg.int8)
        self.tiles = TilePool(self.cfg.n_workers)
        self.overlap = tile_context(self.rt, "encoder", self.cfg)  # latent units of context per tile side
        self.zstd_level = ZSTD_LEVEL_SMALLEST if self.cfg.smallest else ZSTD_LEVEL
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
        if not 0 <= self.cfg.rdoq <= 1:
            raise CodecError(f"rdoq {self.cfg.rdoq} outside 0..1 (the price of a bit in squared steps)")
        self.rdoq = self.cfg.rdoq if self.rd else 0.0
        if not self.cfg.channel_context and getattr(self.em, "context", None) is not None:
            self.em.context = None  # coder 3/4/5 only (every reader decodes those)
        if not self.cfg.spatial_context and hasattr(self.em, "spatial"):
            self.em.spatial = False  # no coder 7/8: files readers before format version 7 decode
        self.model_id, self.channels, self.factor = self.rt.model_id, self.rt.channels, self.rt.factor
        self._lock, self._decoder = threading.Lock(), None  # the Decoder of `decoded` for tiled images, made once

    def load(self, path: str | Path, lazy: bool = False) -> tuple[np.ndarray | LazyPixels, str]:
        """Image file -> (uint8 (H, W, C), mode) for this model. lazy=True: an image this codec tiles
        (above full_res_max_pixels) comes back as an aekit.images.LazyPixels, read tile by tile from
        Pillow's decoded image, so compress never holds a second whole copy of its pixels (issue 17)."""
        return load_for_model(path, self.channels, self.cfg.max_pixels,
                              max(1, self.cfg.full_res_max_pixels) if lazy else 0)

    def tiled(self, height: int, width: int) -> bool:
        """Coded in tiles: above full_res_max_pixels, or one call would not fit the call budget."""
        if height * width > self.cfg.full_res_max_pixels:
            return True
        est = self.rt.estimate("encoder")
        return est is not None and est.bytes(height * width) > self.cfg.call_budget

    def batch_limit(self, height: int, width: int) -> int:
        """Images of this size per encoder call: cfg.batch_size, fewer if the call budget says so."""
        return plan_batch(self.rt.estimate("encoder"), height * width, self.cfg.call_budget, self.cfg.batch_size)

    def tile_latent(self, held: int = 0) -> int:
        """Tile core side in latent units (see plan_tile): tile_px, smaller if a tile's call would not fit
        the tile budget left beside an image of `held` bytes (CodecConfig.tile_budget_beside)."""
        return plan_tile(self.rt.estimate("encoder"), self.factor, self.overlap, self.cfg.tile_px,
                         self.cfg.tile_budget_beside(held))

    def symbols(self, images: np.ndarray | list, packed: bool = False) -> np.ndarray | list[PackedSymbols]:
        """uint8 (B, H, W, C), or a list of B images (H, W, C) of one size (arrays or LazyPixels) ->
        uint8 symbols (B, c_y, ceil(H/f), ceil(W/f)); batches split to the budget, large images tiled.
        Rate-distortion models round with RDOQ (CodecConfig.rdoq) where a latent has at most
        RDOQ_MAX_SYMBOLS symbols, plainly otherwise. packed=True: tiled images' symbols come back as a list
        of B PackedSymbols (zstd-compressed while the tiles run; np.asarray materialises one), for a caller
        that drops the pixels first (issue 17); latents that RDOQ rounds come back as arrays (≤ 4 MB)."""
        b, (h, w) = len(images), images[0].shape[:2]
        if self.tiled(h, w):
            if packed:
                return [self._symbols_tiled(im, packed=True) for im in images]
            return _stack([self._symbols_tiled(im) for im in images])
        if isinstance(images, list):
            images = np.stack([np.asarray(im) for im in images])
        n = self.batch_limit(h, w)
        return np.concatenate([self.quantise(self.rt.encode(images[i:i + n])) for i in range(0, b, n)])

    def quantise(self, y: np.ndarray) -> np.ndarray:
        """float y (B, c_y, h, w) of whole images -> uint8 symbols, with RDOQ where it is on (per image)."""
        q = self.quantiser.quantise(y)
        if self.rdoq and q[0].size <= RDOQ_MAX_SYMBOLS:
            res = self.quantiser.residual(y)
            q = np.stack([self.em.rdoq(qi, ri, self.rdoq) for qi, ri in zip(q, res)])
        return q

    def _symbols_tiled(self, image: np.ndarray | LazyPixels, packed: bool = False) -> np.ndarray | PackedSymbols:
        """One large image (H, W, C) -> symbols (c_y, h, w), encoded tile by tile (tiles in parallel;
        only each tile's region of a LazyPixels is ever copied out). packed=True: a PackedSymbols, each row
        of tiles compressed as soon as its last tile is done, so the whole latent (1 B per symbol: 134 MB
        for a 178 Mpx photo at 1/4) never sits beside the pixels."""
        f, h, w = self.factor, image.shape[0], image.shape[1]
        c, lh, lw = self.rt.latent_shape(h, w)
        tile = self.tile_latent(int(image.nbytes))
        rows, cols = tile_spans(lh, tile, self.overlap), tile_spans(lw, tile, self.overlap)
        # RDOQ needs the whole latent's residuals (1 B a symbol), so only up to RDOQ_MAX_SYMBOLS (4 MB), whose
        # symbols are then kept whole rather than packed
        res = np.empty((c, lh, lw), np.int8) if self.rdoq and c * lh * lw <= RDOQ_MAX_SYMBOLS else None
        packed = packed and res is None
        q = None if packed else np.empty((c, lh, lw), dtype=np.uint8)
        out = PackedSymbols((c, lh, lw)) if packed else None
        bands: dict[int, list] = {}  # packed: row of tiles -> [its symbols (c, rows, lw), tiles still to come]
        lock = threading.Lock()

        def one(job: tuple) -> None:
            i, (r0, r1, cr0, cr1), (c0, c1, cc0, cc1) = job
            crop = image[cr0 * f:min(h, cr1 * f), cc0 * f:min(w, cc1 * f)]  # (th, tw, C)
            yt = self.rt.encode(crop[None])
            qt = self.quantiser.quantise(yt)[0]  # (c_y, cr1-cr0, cc1-cc0)
            core = qt[:, r0 - cr0:r1 - cr0, c0 - cc0:c1 - cc0]
            if res is not None:
                res[:, r0:r1, c0:c1] = self.quantiser.residual(yt[0, :, r0 - cr0:r1 - cr0, c0 - cc0:c1 - cc0])
            if q is not None:
                q[:, r0:r1, c0:c1] = core  # disjoint cores: no lock
                return
            with lock:
                band = bands.get(i)
                if band is None:
                    band = bands[i] = [np.empty((c, r1 - r0, lw), np.uint8), len(cols)]
            band[0][:, :, c0:c1] = core
            with lock:
                band[1] -= 1
                done = band[1] == 0 and bands.pop(i) is band
            if done:
                out.put(r0, band[0])

        self.tiles.map(one, [(i, r, cc) for i, r in enumerate(rows) for cc in cols])
        self.rt.release_memory("encoder")  # the tiles' activations need not stay while the coder runs
        if res is not None:
            return self.em.rdoq(q, res, self.rdoq)
        return q if q is not None else out

    def header(self, height: int, width: int, mode: str, coder: int, post_filter: bytes = b"") -> LatentHeader:
        return LatentHeader(
            model_id=self.model_id, height=height, width=width, mode=mode, factor=self.factor,
            latent_shape=self.rt.latent_shape(height, width), levels=self.levels,
            quantiser=QUANT_INTEGER if self.rd else QUANT_TANH_UNIFORM, coder=coder,
            flags=FLAG_TILED if self.tiled(height, width) else 0, quality=self.quality, post_filter=post_filter,
        )

    def filters(self, height: int, width: int) -> bool:
        """Images of this size get a post-filter fitted to all their pixels (CodecConfig.post_filter; up to
        FIT_MAX_PIXELS, whether coded whole or in tiles: the same filter either way). Larger ones get one fitted to
        a sample of windows (`fit_input`), since their pixels go before the coder runs (issue 17)."""
        return self.cfg.post_filter and height * width <= FIT_MAX_PIXELS

    def fit_input(self, image: np.ndarray | LazyPixels) -> np.ndarray | FitSample | None:
        """What `pack` fits the post-filter to, taken from an image's pixels (H, W, C) before they are released:
        the pixels themselves up to FIT_MAX_PIXELS; above, a FitSample (windows spread over the image, about
        FIT_MAX_PIXELS in all, each copied with the margin its decode and the filter's taps need); None when
        CodecConfig.post_filter is off."""
        if not self.cfg.post_filter:
            return None
        h, w = image.shape[:2]
        if self.filters(h, w):
            return np.asarray(image)
        f, m = self.factor, MAX_RADIUS  # m: the filter's reach in pixels
        ctx = tile_context(self.rt, "decoder", self.cfg) + 1  # latent units: the decoder's reach and the filter's
        windows = []
        for r0, r1, c0, c1 in fit_windows(h, w, f, FIT_MAX_PIXELS):
            a, b = max(0, r0 - ctx), min(h // f, r1 + ctx)  # latent rows and columns decoded
            c, d = max(0, c0 - ctx), min(w // f, c1 + ctx)
            y0, y1 = max(a * f, r0 * f - m), min(b * f, r1 * f + m)  # pixels kept: the window and the filter's reach
            x0, x1 = max(c * f, c0 * f - m), min(d * f, c1 * f + m)
            windows.append(((a, b, c, d), (y0, y1, x0, x1), (r0 * f - y0, y1 - r1 * f, c0 * f - x0, x1 - c1 * f),
                            np.array(image[y0:y1, x0:x1])))
        return FitSample(windows)

    def choose_sampled(self, q: np.ndarray, header: LatentHeader, sample: FitSample,
                       file_bytes: int) -> PostFilter | None:
        """The post-filter fitted to a FitSample: each window's symbols (with their decode margin) decoded on
        their own, as Decoder.reconstruct decodes the whole latent up to float noise, then `choose_windows`."""
        f, windows = self.factor, []
        for (a, b, c, d), (y0, y1, x0, x1), margin, x in sample.windows:
            part = replace(header, height=(b - a) * f, width=(d - c) * f, latent_shape=(q.shape[0], b - a, d - c),
                           flags=0, post_filter=b"")
            x_hat = self.decoded(np.ascontiguousarray(q[:, a:b, c:d]), part)[y0 - a * f:y1 - a * f, x0 - c * f:x1 - c * f]
            windows.append(Window(x, x_hat, margin))
        self.rt.release_memory("decoder")  # the windows' activations need not stay while the file is written
        return choose_windows(windows, file_bytes)[0]

    def decoded(self, q: np.ndarray, header: LatentHeader) -> np.ndarray:
        """Symbols (c_y, h, w) -> uint8 (H, W, C) of the model's channels, as Decoder.reconstruct decodes them before
        any post-filter (tiled the same way when the image is); this codec's runtime and tables are reused."""
        if not self.tiled(header.height, header.width):
            return self.rt.decode(self.quantiser.dequantise(q[None]), header.height, header.width)[0]
        with self._lock:
            if self._decoder is None:
                self._decoder = Decoder([self.rt.dir], self.cfg)
                self._decoder.share_runtime(self.rt)
                self._decoder._entropy[(self.model_id, self.levels, self.quality)] = (self.em, self.quantiser)
        return self._decoder._reconstruct(header, q[None])[0]

    def pack(self, q: np.ndarray, height: int, width: int, mode: str,
             image: np.ndarray | FitSample | None = None) -> bytes:
        """Symbols (c_y, h, w) of one image -> .ael file bytes. image: its uint8 pixels (H, W, C) as coded (the
        model's channels), or for an image above FIT_MAX_PIXELS the FitSample `fit_input` took from them: the
        encoder then decodes q (there: the sample's windows), fits a post-filter (codec/postfilter.py) and stores
        it where it pays for its bytes (format version 8); None or post_filter=False: no filter."""
        coder, payload = self.em.encode(q, self.zstd_level, None if self.cfg.smallest else ZSTD_GATE)
        header = self.header(height, width, mode, coder)
        data = pack(header, payload)  # refuses what parse would refuse
        flt = None
        if isinstance(image, FitSample):
            flt = self.choose_sampled(q, header, image, len(data))
        elif image is not None and self.filters(height, width):
            flt, _ = choose(np.asarray(image), self.decoded(q, header), len(data))  # fitted to what a decoder gets
        if flt is not None:
            data = pack(replace(header, post_filter=flt.to_bytes()), payload)
        parse(data, "<written file>")  # read the header back: writer and reader agree
        return data

    def compress_batch(self, images: np.ndarray | list, modes: list[str]) -> list[bytes]:
        """uint8 (B, H, W, C) images of one size (or a list of them, see symbols) -> one .ael file content each."""
        q = self.symbols(images)
        h, w = images[0].shape[:2]
        return [self.pack(qi, h, w, m, self.fit_input(images[i])) for i, (qi, m) in enumerate(zip(q, modes))]

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

    def __init__(self, search: list[str | Path] | None = None, cfg: CodecConfig | None = None, named: bool = False):
        """search: model folders or folders of them (default $AEKIT_MODELS, ./models; the shipped models last).
        named: the user named search (`decompress -m`): a file whose model only the shipped models hold is
        still decoded, and one warning per model says so."""
        self.search = [Path(p) for p in search] if search else default_model_paths()
        self._named = named and bool(search)
        self.cfg = cfg or CodecConfig()
        self.gate = MemoryGate(self.cfg.budget)  # shared by every model's calls
        self.tiles = TilePool(self.cfg.n_workers)
        self._lock = threading.RLock()  # the caches below are filled from several worker threads
        self._models: dict[str, dict[str, Any]] = {}
        self._entropy: dict[tuple[str, int, int], tuple[EntropyModel, Quantiser]] = {}
        self._runtimes: dict[str, Runtime] = {}

    def model(self, model_id: str) -> dict[str, Any]:
        """The manifest of a model id; ModelError if no search path has it."""
        with self._lock:
            if model_id not in self._models:
                folder = find_model(model_id, self.search)
                # find_model builds folder from a search root (root or root/NAME): compared unresolved (symlinks)
                if self._named and not {folder, folder.parent} & set(self.search):
                    logging.getLogger(__name__).warning(
                        "model %s is not in %s: decoding with the shipped model %s (the files name it)", model_id,
                        ", ".join(map(str, self.search)), folder.name)
                self._models[model_id] = load_model_as(folder, model_id)  # a superseded id: its qualities only
            return self._models[model_id]

    def entropy(self, model_id: str, levels: int, quality: int = 0) -> tuple[EntropyModel, Quantiser]:
        """The tables and quantiser of a file's (model, levels, quality); EntropyError if the model lacks them."""
        key = (model_id, levels, quality)
        with self._lock:
            if key not in self._entropy:
                m = self.model(model_id)
                self._entropy[key] = (EntropyModel.from_manifest(m, levels, quality or None),
                                      Quantiser.of(m, levels, quality or None))
            return self._entropy[key]

    def share_runtime(self, rt: Runtime) -> None:
        """Decode rt's model with rt itself: a process that also compresses with it (Codec.decoded, serve) then
        holds one set of ONNX sessions and their memory arenas, not two."""
        with self._lock:
            self._runtimes[rt.model_id] = rt

    def runtime(self, model_id: str) -> Runtime:
        with self._lock:
            if model_id not in self._runtimes:
                self._runtimes[model_id] = Runtime(self.model(model_id)["_dir"], self.cfg.device, self.cfg.threads,
                                                   self.gate, int8=self.cfg.int8)
            return self._runtimes[model_id]

    def tiled(self, header: LatentHeader) -> bool:
        """Decoded in tiles: above full_res_max_pixels, or one call would not fit the call budget."""
        if header.height * header.width > self.cfg.full_res_max_pixels:
            return True
        est = self.runtime(header.model_id).estimate("decoder")
        return est is not None and est.bytes(_padded_pixels(header)) > self.cfg.call_budget

    def batch_limit(self, header: LatentHeader) -> int:
        """Files like this one (model, size) per decoder call: cfg.batch_size, fewer if the budget says so."""
        return plan_batch(self.runtime(header.model_id).estimate("decoder"), _padded_pixels(header),
                          self.cfg.call_budget, self.cfg.batch_size)

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
        if h.post_filter and h.post_filter[0] != m["channels"]:
            raise CodecError(f"{name}: post-filter for {h.post_filter[0]} channels, model {h.model_id} decodes "
                             f"{m['channels']}")
        try:
            em, _ = self.entropy(h.model_id, h.levels, h.quality)
            return h, em.decode(h.coder, payload, h.latent_shape)
        except EntropyError as e:
            raise CodecError(f"{name}: {e}") from None

    def reconstruct(self, header: LatentHeader, q: np.ndarray, headers: list[LatentHeader] | None = None) -> np.ndarray:
        """Symbols (B, c_y, h, w) of images sharing header's model and size -> uint8 (B, H, W, C) in its mode.

        Batches are split to the call budget; tiled images are decoded tile by tile, tiles in parallel. Each
        image's post-filter (version 8) is its own: headers[i]'s when given (a batch of several files), else
        header's for every image.
        """
        out = self._reconstruct(header, q)
        for i, h in enumerate(headers or [header] * len(out)):
            if h.post_filter:
                out[i] = apply_filter(out[i], PostFilter.from_bytes(h.post_filter)[0])
        return np.stack([restore_mode(o, header.mode) for o in out]) if header.mode == "L" else out

    def _reconstruct(self, header: LatentHeader, q: np.ndarray) -> np.ndarray:
        """reconstruct before the post-filter and the mode: uint8 (B, H, W, C) of the model's channels."""
        rt = self.runtime(header.model_id)
        _, quantiser = self.entropy(header.model_id, header.levels, header.quality)
        H, W = header.height, header.width
        if self.tiled(header):
            out = _stack([self._decode_tiled(rt, quantiser, qi, H, W) for qi in q])
        else:
            n = self.batch_limit(header)
            out = np.concatenate([rt.decode(quantiser.dequantise(q[i:i + n]), H, W) for i in range(0, len(q), n)])
        return out

    def _tile_grid(self, rt: Runtime, q: np.ndarray) -> tuple[list[tuple], list[tuple]]:
        """(row spans, column spans) of tile_spans for decoding symbols q (c_y, h, w) in tiles of the budget."""
        overlap = tile_context(rt, "decoder", self.cfg)
        tile = plan_tile(rt.estimate("decoder"), rt.factor, overlap, self.cfg.tile_px, self.cfg.tile_budget)
        return tile_spans(q.shape[1], tile, overlap), tile_spans(q.shape[2], tile, overlap)

    def _decode_tiled(self, rt: Runtime, quantiser: Quantiser, q: np.ndarray, height: int, width: int) -> np.ndarray:
        """Symbols (c_y, h, w) of one large image -> uint8 (H, W, C), decoded tile by tile (all tiles in
        parallel), each tile's symbols dequantised on their own (no float copy of the whole latent)."""
        out = np.empty((height, width, rt.channels), dtype=np.uint8)
        row_spans, cols = self._tile_grid(rt, q)
        self.tiles.map(lambda span: _decode_tile(rt, quantiser, q, out, 0, *span), [(r, c) for r in row_spans for c in cols])
        rt.release_memory("decoder")  # the tiles' activations need not stay while the image is written
        return out

    def _tile_rows(self, rt: Runtime, quantiser: Quantiser, q: np.ndarray, height: int,
                   width: int) -> Iterator[np.ndarray]:
        """Symbols (c_y, h, w) of one large image -> its rows of tiles, top to bottom: uint8 bands
        (rows, W, C) summing to H, the tiles of a band in parallel; activations released at the end."""
        f = rt.factor
        row_spans, cols = self._tile_grid(rt, q)
        try:
            for rows in row_spans:
                band = np.empty((min(height, rows[1] * f) - rows[0] * f, width, rt.channels), dtype=np.uint8)
                self.tiles.map(lambda c: _decode_tile(rt, quantiser, q, band, rows[0] * f, rows, c), cols)
                yield band
        finally:  # also when a band fails or the caller stops early
            rt.release_memory("decoder")

    def reconstruct_rows(self, header: LatentHeader, q: np.ndarray) -> Iterator[np.ndarray]:
        """Symbols (c_y, h, w) of one file -> its decoded image as row bands, top to bottom: uint8
        (rows, W, C) in the file's mode, rows summing to H. A tiled image (see `tiled`) comes one row of
        tiles at a time, so a caller that writes each band (aekit.images.write_png_rows) never holds the
        whole image; a small one comes as one band. Same pixels as `reconstruct`."""
        if not self.tiled(header):
            yield self.reconstruct(header, q[None])[0]
            return
        rt = self.runtime(header.model_id)
        _, quantiser = self.entropy(header.model_id, header.levels, header.quality)
        bands = self._tile_rows(rt, quantiser, q, header.height, header.width)
        if header.post_filter:  # each band once the filter's rows below it are decoded
            bands = apply_rows(bands, PostFilter.from_bytes(header.post_filter)[0])
        for band in bands:
            yield restore_mode(band, header.mode) if header.mode == "L" else band

    def decompress(self, data: bytes, name: str = "<bytes>") -> tuple[np.ndarray, LatentHeader]:
        """File bytes -> (uint8 (H, W, 1 | 3) in the original mode, header)."""
        h, q = self.symbols(data, name)
        return self.reconstruct(h, q[None])[0], h


def _decode_tile(rt: Runtime, quantiser: Quantiser, q: np.ndarray, dst: np.ndarray, dst_row: int,
                 rows: tuple[int, int, int, int], cols: tuple[int, int, int, int]) -> None:
    """Decode one tile of symbols q (c_y, h, w) (spans of tile_spans: core and context, latent units) and
    write its core into dst (uint8 (rows, W, C) whose first row is image row dst_row), cut at dst's edges."""
    f = rt.factor
    (r0, r1, cr0, cr1), (c0, c1, cc0, cc1) = rows, cols
    xt = rt.decode(quantiser.dequantise(q[None, :, cr0:cr1, cc0:cc1]))[0]  # ((cr1-cr0)f, (cc1-cc0)f, C)
    top, bottom = r0 * f - dst_row, min(dst.shape[0], r1 * f - dst_row)
    right = min(dst.shape[1], c1 * f)
    dst[top:bottom, c0 * f:right] = xt[(r0 - cr0) * f:(r0 - cr0) * f + bottom - top,
                                       (c0 - cc0) * f:(c0 - cc0) * f + right - c0 * f]


class PackedSymbols:
    """One image's uint8 symbols (c_y, h, w), held as zstd-compressed bands of latent rows (level 1: the
    134 MB of symbols of a smooth 178 Mpx photo at 1/4 took 0.02 s to 0.5 MB, and 0.06 s back; mostly
    zeros at the default qualities). np.asarray(p) gives the array (CodecError if a band is missing).
    Lets a tiled image's symbols be gathered while its pixels still occupy memory (issue 17)."""

    def __init__(self, shape: tuple[int, int, int]):
        self.shape, self._bands, self._lock = tuple(int(v) for v in shape), {}, threading.Lock()

    def put(self, row: int, band: np.ndarray) -> None:
        """Latent rows row..row + band.shape[1] (uint8 (c_y, r, w)), compressed and kept."""
        import zstandard

        data = zstandard.ZstdCompressor(level=1).compress(np.ascontiguousarray(band, np.uint8).data)
        with self._lock:
            self._bands[row] = (band.shape[1], data)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        import zstandard

        c, h, w = self.shape
        q = np.empty(self.shape, np.uint8)
        dec = zstandard.ZstdDecompressor()
        covered = 0
        for row in sorted(self._bands):
            r, data = self._bands[row]
            q[:, row:row + r] = np.frombuffer(dec.decompress(data, max_output_size=c * r * w), np.uint8).reshape(c, r, w)
            covered += r
        if covered != h:
            raise CodecError(f"packed symbols cover {covered} of {h} latent rows")
        return q if dtype is None else q.astype(dtype, copy=False)


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """np.stack without a copy for one array (a 50 Mpx image is 150 MB)."""
    return arrays[0][None] if len(arrays) == 1 else np.stack(arrays)


def _padded_pixels(header: LatentHeader) -> int:
    """Pixels the decoder computes for a file: its latent's h x w times f squared."""
    return header.latent_shape[1] * header.latent_shape[2] * header.factor ** 2


def wrap_errors(name: str | Path, exc: Exception) -> Exception:
    """Any expected failure -> one-line CodecError naming the file once (a non-UTF-8 name as images.display
    prints it: \\xNN escapes); others pass through."""
    shown = display(name)
    if isinstance(exc, (CodecError, ImageError, LatentFormatError)):
        return exc if (str(name) in str(exc) or shown in str(exc)) else CodecError(f"{shown}: {exc}")
    if isinstance(exc, (ModelError, EntropyError, OSError)):
        return CodecError(f"{shown}: {exc}")
    return exc
