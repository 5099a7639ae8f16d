"""The mean-scale hyperprior's runtime (coder 3; no torch): the integer hyper decoder and its coder.

    em = HyperpriorEntropyModel.from_manifest(load_manifest("models/photos-r9"))  # via EntropyModel.from_manifest
    coder_id, payload = em.encode(q)            # q: uint8 ŷ symbols (c_y, h, w)

Ballé et al. 2018's scale hyperprior with Minnen et al. 2018's mean. h_s runs in exact integer
arithmetic (IntegerHyperDecoder) so encoder and decoder choose the same Gaussian table for every
element on every machine; the contract is codec/FORMAT.md, "Hyperprior models". The factorized
coder, the tables' arithmetic and the zstd / raw fallbacks are aekit.export.entropy's.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import mmap
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aekit.export.entropy import (CODER_CHANNEL_CONTEXT, CODER_CHANNEL_SPATIAL, CODER_HYPER, CODER_HYPER_CONTEXT,
                                  CODER_HYPER_OFFSETS, CODER_SPATIAL, PRECISION, RDOQ_MAX_SYMBOLS,
                                  RDOQ_T, ZSTD_GATE, ZSTD_LEVEL, EntropyError, _check_symbols, _constriction,
                                  _decode_symbols, _smallest, _untrim, integer_table, quality_entry,
                                  rdoq_choose)

HYPER_FRAC_BITS = 16  # F_a: hyper decoder activations are integers in units of 2^-16
HYPER_ACT_BITS = 26  # activations are clamped to 0 .. 2^26 - 1 (1024 in real units) after each ReLU
EXACT_BITS = 53  # float64 holds every integer below 2^53 exactly
CHUNK_BYTES = 16 << 20  # the integer hyper decoder's im2col block per matrix product (bounds its memory)
Z_FACTOR = 4  # z = h_a(y) is at y / 4 (two stride-2 layers); h_s upsamples by 4
# Large latents run h_a and h_s in bands of z rows with a halo (memory bounded per image, issue 17):
# about 3 KB (h_a: float im2col and activations) and 1 KB (h_s: int32 activations) per y position.
HYPER_A_BAND_POSITIONS = 1 << 15  # y positions (rows x columns) per h_a band
HYPER_S_BAND_POSITIONS = 1 << 16  # y positions per h_s band
HYPER_A_HALO_Z = 3  # z rows of context on each side of an h_a band: 3x3 s1, 5x5 s2, 5x5 s2 see 7 y rows (1.75 z rows)


class IntegerHyperDecoder:
    """The hyper decoder h_s in exact integer arithmetic: ẑ symbols -> y's tables, bit-exact everywhere.

    Layers (manifest entropy.hyper.layers, weights in hyper_decoder.npz): conv or transposed conv with
    integer weights W_q = round(W · 2^s) and biases b_q = round(b · 2^(s + F_a)); activations a are
    integers in units of 2^-F_a (the input is ẑ · 2^F_a). Each layer computes acc = conv(a, W_q) + b_q,
    an integer in units of 2^-(s + F_a); hidden layers then take a' = min(floor((max(acc, 0) + 2^(s−1)) / 2^s),
    2^26 − 1) (rounded half up: a floor's bias moved 5 % of the scale indexes at F_a = 10). The last
    layer's acc holds μ (first c_y channels) and ln σ (last c_y) in units of 2^-(s + F_a); `tables`
    turns them into a table number and an integer base per element with integer operations only.

    The sums run as float64 matrix products (BLAS), which is exact here: every operand and every
    partial sum is an integer of magnitude < 2^53 (the exporter checks K · max|W_q| · 2^26 + max|b_q|
    < 2^53 per layer, K = kernel size × input channels), so the result does not depend on summation
    order, FMA, thread count or CPU. Raises EntropyError on malformed weights.
    """

    def __init__(self, layers: list[dict[str, Any]], arrays: dict[str, np.ndarray]):
        self.layers = []  # (kind, shift, bias, parts): parts = [(phase_y, phase_x, wmat, (kh, kw), (lo_y, lo_x))]
        for i, spec in enumerate(layers):
            try:
                w, b = np.asarray(arrays[f"w{i}"], dtype=np.int64), np.asarray(arrays[f"b{i}"], dtype=np.int64)
                kind, shift = spec["kind"], int(spec["shift"])
                stride, pad, out_pad = int(spec.get("stride", 1)), int(spec["padding"]), int(spec.get("output_padding", 0))
            except (KeyError, TypeError, ValueError) as e:
                raise EntropyError(f"hyper decoder layer {i}: malformed ({e})") from None
            if not ((kind == "conv" and stride == 1) or (kind == "conv_transpose" and i < len(layers) - 1)):
                raise EntropyError(f"hyper decoder layer {i}: unsupported kind {kind!r} / stride {stride}")
            k_in = (w.shape[0] if kind == "conv_transpose" else w.shape[1]) * w.shape[2] * w.shape[3] if w.ndim == 4 else 0
            if w.ndim != 4 or w.shape[2] != w.shape[3] or b.shape != ((w.shape[1] if kind == "conv_transpose" else w.shape[0]),) \
                    or not 0 <= shift <= 30 or not 0 <= pad < w.shape[2] or \
                    k_in * int(np.abs(w).max(initial=0)) * (1 << HYPER_ACT_BITS) + int(np.abs(b).max(initial=0)) >= 1 << EXACT_BITS:
                raise EntropyError(f"hyper decoder layer {i}: weights outside the exact-arithmetic bound")
            k = w.shape[2]
            if kind == "conv":
                parts = [(0, 0, _wmat(w), (k, k), (-pad, -pad))]
            else:  # transposed conv as stride² polyphase convs on the input (no zero-upsampling: 1/stride² the work)
                parts = []
                for ty in range(stride):
                    for tx in range(stride):
                        taps, lo = [], []
                        for t in (ty, tx):
                            r = (t + pad) % stride
                            n = -(-(k - r) // stride)  # taps r, r + s, ... < k
                            taps.append([r + stride * (n - 1 - j) for j in range(n)])  # flipped: a correlation
                            lo.append((t + pad - r) // stride - (n - 1))  # input row of the window's first tap
                        sub = w[:, :, taps[0]][:, :, :, taps[1]].transpose(1, 0, 2, 3)  # (out, in, ny, nx)
                        parts.append((ty, tx, _wmat(sub), (len(taps[0]), len(taps[1])), (lo[0], lo[1])))
            self.layers.append((kind, stride, pad, out_pad, shift, b.astype(np.float64), parts, k))

    def outputs(self, z_sym: np.ndarray, h: int, w: int, rows: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """uint8 ẑ symbols (c_z, h', w') -> (row, acc) blocks of the last layer's integer accumulator
        (float64 holding integers, (2·c_y, r, w): μ then ln σ) for y rows row..row+r of a (c_y, h, w) latent.

        rows: output rows per matrix product (0: as many as keep its im2col block near CHUNK_BYTES).
        A channels-first view of `outputs_hwc`, which computes it."""
        for r0, acc in self.outputs_hwc(z_sym, h, w, rows):
            yield r0, acc.transpose(2, 0, 1)

    def outputs_hwc(self, z_sym: np.ndarray, h: int, w: int, rows: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """As `outputs`, each block channels-last: (row, acc (r, w, 2·c_y)).

        Activations between layers are held channels-last as int32 (they are below 2^26), so each im2col
        row is copied as contiguous runs of channels and the matrix product's output needs no transpose
        (the zoo's h_s ran 1.2-1.4x faster than channels-first, with the same integers: any summation order
        is exact). A
        transposed conv of stride s runs as s² stride-1 convs, one per output phase, on the input itself."""
        a = np.ascontiguousarray(((z_sym.astype(np.int32) - 127) << HYPER_FRAC_BITS).transpose(1, 2, 0))
        cap = float((1 << HYPER_ACT_BITS) - 1)
        for i, (kind, stride, pad, out_pad, shift, bias, parts, k) in enumerate(self.layers):
            last = i == len(self.layers) - 1
            if kind == "conv":
                out_h, out_w = a.shape[0] + 2 * pad - k + 1, a.shape[1] + 2 * pad - k + 1
            else:
                out_h, out_w = [(n - 1) * stride - 2 * pad + k + out_pad for n in a.shape[:2]]
            if last:  # a conv (checked): stream its row blocks
                out_h, out_w = min(out_h, h), min(out_w, w)
                yield from _conv_blocks(a, parts[0], bias, out_h, out_w, rows)
                return
            nxt = np.empty((out_h, out_w, bias.size), dtype=np.int32)
            half, scale = float(1 << shift >> 1), 1.0 / float(1 << shift)  # a power of two: exact
            for part in parts:
                ty, tx = part[0], part[1]
                ph, pw = len(range(ty, out_h, stride)), len(range(tx, out_w, stride))
                dst = nxt[ty::stride, tx::stride] if kind == "conv_transpose" else nxt
                for r0, acc in _conv_blocks(a, part, bias, ph, pw, rows):
                    # round half up: floor((max(acc, 0) + 2^(s-1)) / 2^s), capped; in place on the block
                    np.maximum(acc, 0, out=acc)
                    acc += half
                    acc *= scale
                    np.floor(acc, out=acc)
                    np.minimum(acc, cap, out=acc)
                    dst[r0:r0 + acc.shape[0]] = acc
            a = nxt

    @property
    def frac_bits(self) -> int:
        """F = s + F_a of the last layer: its accumulator is μ and ln σ in units of 2^-F."""
        return self.layers[-1][4] + HYPER_FRAC_BITS

    def tables(self, z_sym: np.ndarray, h: int, w: int, thresholds: np.ndarray,
               step4: int, split: bool = False) -> tuple[Any, Any]:
        """See _tables; BLAS limited to one thread (codec workers run one thread each, issue 17; the result
        is exact at any thread count, so a concurrent call restoring the count early changes only speed)."""
        with one_blas_thread():
            return self._tables(z_sym, h, w, thresholds, step4, split=split)

    @functools.cached_property
    def halo(self) -> int:
        """z rows of context a band of outputs needs on each side: every layer's reach in its input rows
        (conv: max(pad, k − 1 − pad); transposed conv of stride s: that over s), in z rows, rounded up, + 1.
        Exact integers make a band's core rows equal the whole computation's (tested with 1-row bands)."""
        reach, rows_per_z = 0.0, 1
        for kind, stride, pad, _, _, _, _, k in self.layers:
            r = max(pad, k - 1 - pad)
            reach += (-(-r // stride) if kind == "conv_transpose" else r) / rows_per_z
            rows_per_z *= stride if kind == "conv_transpose" else 1
        return int(np.ceil(reach)) + 1

    def _tables(self, z_sym: np.ndarray, h: int, w: int, thresholds: np.ndarray,
                step4: int, band: int = 0, split: bool = False) -> tuple[Any, Any]:
        """uint8 ẑ (c_z, ceil(h/4), ceil(w/4)) -> (table, base), each (c_y, h, w); split=True: each a list
        of c_y arrays (h, w), which the encoder's grouping (HyperpriorEntropyModel._group) frees channel by
        channel (the same integers).

        Scale index j = #{k: acc_σ > T_k} (the smallest table scale ≥ σ); the mean in quarter steps
        m = floor((16·acc_μ + D·2^(F−1)) / (D·2^F)) = round(4μ/Δ) (D = 4Δ, an integer; int64 floor
        division); base = clip(floor(m / 4), −127, 127) (int8) and table = 4j + (m mod 4) (uint8, 0..255).
        Computed in bands of `band` z rows (0: HYPER_S_BAND_POSITIONS y positions) with `halo` rows of
        context each side: the same integers as one pass, with memory bounded by the band.
        """
        t = np.asarray(thresholds, dtype=np.float64)  # integers < 2^53: exact in float64
        f = self.frac_bits
        cy = self.layers[-1][5].size // 2
        if split:
            table = [_released_array((h, w), np.uint8) for _ in range(cy)]
            base = [_released_array((h, w), np.int8) for _ in range(cy)]
        else:
            table, base = np.empty((cy, h, w), dtype=np.uint8), np.empty((cy, h, w), dtype=np.int8)  # base: ±127
        for a0, a1, acc in self._bands(z_sym, h, w, band):
            tj, bm = choose_tables(acc[..., :cy], acc[..., cy:], t, step4, f)
            tj, bm = tj.transpose(2, 0, 1), bm.transpose(2, 0, 1)
            for c in range(cy):  # a view of an array's channel, or a list's array
                table[c][a0:a1] = tj[c]
                base[c][a0:a1] = bm[c]
        return table, base

    def params(self, z_sym: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ẑ (c_z, ceil(h/4), ceil(w/4)) -> (μ, ln σ) accumulators, each int64 (c_y, h, w) in units of
        2^-frac_bits (the integers `tables` chooses from; the channel context of coder 6 corrects them)."""
        cy = self.layers[-1][5].size // 2
        mu, ls = np.empty((cy, h, w), dtype=np.int64), np.empty((cy, h, w), dtype=np.int64)
        with one_blas_thread():
            for a0, a1, acc in self._bands(z_sym, h, w, 0):
                mu[:, a0:a1] = acc[..., :cy].transpose(2, 0, 1)
                ls[:, a0:a1] = acc[..., cy:].transpose(2, 0, 1)
        return mu, ls

    def _bands(self, z_sym: np.ndarray, h: int, w: int, band: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """(y row a0, a1, acc (a1 − a0, w, 2·c_y)) of the last layer, computed in bands of `band` z rows (0:
        HYPER_S_BAND_POSITIONS y positions) with `halo` rows of context each side: the same integers as one
        pass, with memory bounded by the band."""
        zh = z_sym.shape[1]
        band = band or max(1, HYPER_S_BAND_POSITIONS // (Z_FACTOR * w))
        for z0 in range(0, zh, band):
            z1 = min(zh, z0 + band)
            s0, s1 = max(0, z0 - self.halo), min(zh, z1 + self.halo)
            y0, y1 = Z_FACTOR * z0, min(h, Z_FACTOR * z1)  # this band's rows of y
            off = Z_FACTOR * s0
            for r0, acc in self.outputs_hwc(z_sym[:, s0:s1], min(h, Z_FACTOR * s1) - off, w):
                a0, a1 = max(off + r0, y0), min(off + r0 + acc.shape[0], y1)
                if a1 > a0:
                    yield a0, a1, acc[a0 - off - r0:a1 - off - r0]


def choose_tables(mu: np.ndarray, log_scale: np.ndarray, thresholds: np.ndarray, step4: int,
                  f: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer μ and ln σ accumulators (any shape; int64 or float64 holding integers) in units of 2^-f ->
    (uint8 table, int8 base) of the same shape: scale index j = #{k: ln σ > T_k}, the mean in quarter steps
    m = floor((16·μ + D·2^(f−1)) / (D·2^f)) = round(4μ/Δ) (D = 4Δ, int64 floor division),
    base = clip(floor(m / 4), −127, 127) and table = 4j + (m mod 4). Integers only (codec/FORMAT.md)."""
    j = np.searchsorted(np.asarray(thresholds, dtype=np.float64), np.asarray(log_scale, dtype=np.float64), side="left")
    m4 = (16 * np.asarray(mu).astype(np.int64) + (step4 << (f - 1))) // (step4 << f)
    return (4 * j + (m4 & 3)).astype(np.uint8), np.clip(m4 >> 2, -127, 127).astype(np.int8)


@dataclass
class HyperpriorEntropyModel:
    """Codes a scale-hyperprior model's symbols (coder 3; see codec/FORMAT.md, "hyperprior").

    ŷ symbols (c_y, h, w) -> ẑ = clip(round(h_a(ŷ)), ±127) (the model's hyper_encoder.onnx, run
    by the encoder only: ẑ is in the file) -> per element a table (scale × quarter-step mean phase)
    and an integer base by IntegerHyperDecoder -> one ANS stream: ẑ per channel under the factorized
    prior's tables (popped first), then d = k − base + 254 (k = q − 127) grouped by table (0..255,
    C order within a group) under the Gaussian tables.
    """

    step: float  # the quality's Δ (ŷ = (q − 127)·Δ feeds h_a)
    levels: int  # 255 (the symbols q)
    scale_tables: np.ndarray  # int64 (256, 2·L − 1): d = k − base + 254, rows sum to 2^24
    z_tables: np.ndarray  # int64 (c_z, L)
    thresholds: np.ndarray  # int64 (63,): the quality's T_k
    step4: int  # D = 4Δ (an integer)
    decoder: IntegerHyperDecoder
    encoder_path: Path
    channels: int  # c_y
    context: Any = None  # aekit.export.context.IntegerChannelContext of the model folder (coder 6), or None
    spatial: bool = True  # also try coder 7 (and 8 with a context): the spatial prediction of the mean
    _cache: dict[str, list[Any]] = field(default_factory=dict, repr=False, compare=False)
    # RDOQ's (ẑ, table, base) for the symbols it returned, keyed by their digest: the coder codes them under
    # the very tables RDOQ chose them by instead of running h_a and h_s again (RDOQ_SIDE_KEEP at most)
    _rdoq_side: OrderedDict = field(default_factory=OrderedDict, repr=False, compare=False)
    _rdoq_lock: Any = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], quality: int | None = None) -> "HyperpriorEntropyModel":
        ent, mid = manifest["entropy"], manifest.get("model_id")
        hyper, folder = ent["hyper"], Path(manifest.get("_dir", "."))
        entry = quality_entry(manifest, quality)
        levels = int(manifest["latent"]["levels"])
        try:
            scale = _untrim(ent["scale_tables"], 2 * levels - 1)
            z = _untrim(hyper["tables"], levels)
            thresholds = np.asarray(entry["thresholds"], dtype=np.int64)
            step4 = int(entry["step4"])
            for key in ("encoder", "decoder"):  # the model id pins these hashes (they are in the entropy JSON)
                name = Path(hyper[key]).name
                if hashlib.sha256((folder / name).read_bytes()).hexdigest() != hyper[f"{key}_sha256"]:
                    raise EntropyError(f"model {mid}: {name} does not match the hash in its manifest "
                                       "(changed or swapped); re-export the model")
            with np.load(folder / Path(hyper["decoder"]).name, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (KeyError, TypeError, ValueError, OSError) as e:
            raise EntropyError(f"model {mid}: malformed hyperprior ({e})") from None
        n_scales = scale.shape[0] // 4
        if scale.shape[0] != 256 or thresholds.shape != (n_scales - 1,) or (np.diff(thresholds) < 0).any() or \
                (np.abs(thresholds) >= 1 << EXACT_BITS).any():
            raise EntropyError(f"model {mid}: 256 y tables and {n_scales - 1} ascending integer thresholds expected")
        if not (step4 == 4 * float(entry["step"]) and 1 <= step4 <= 1024):
            raise EntropyError(f"model {mid}: step4 {step4} is not 4 x the quality's step {entry['step']}")
        from aekit.export.context import load_context

        return cls(float(entry["step"]), levels, np.stack([integer_table(c) for c in scale]),
                   np.stack([integer_table(c) for c in z]), thresholds, step4,
                   IntegerHyperDecoder(hyper["layers"], arrays), folder / Path(hyper["encoder"]).name,
                   int(manifest["latent_channels"]), load_context(manifest))

    def z_shape(self, h: int, w: int) -> tuple[int, int, int]:
        return (self.z_tables.shape[0], -(-h // Z_FACTOR), -(-w // Z_FACTOR))

    def hyper_symbols(self, q: np.ndarray, band: int = 0) -> np.ndarray:
        """uint8 ŷ symbols (c_y, h, w) -> uint8 ẑ symbols (c_z, ceil(h/4), ceil(w/4)) (onnxruntime).

        ŷ is zero-padded to a multiple of 4, as in training. Large latents run in bands of `band` z rows
        (0: HYPER_A_BAND_POSITIONS y positions) with HYPER_A_HALO_Z rows of context each side, so memory
        stays bounded; ẑ is stored in the file, so a band's float rounding can never break decoding."""
        from aekit.export.runtime import cached_session, release_arena, select_providers

        half = (self.levels - 1) // 2
        c, h, w = q.shape
        zc, zh, zw = self.z_shape(h, w)
        sess = cached_session(self.encoder_path, select_providers("cpu"))
        band = band or max(1, HYPER_A_BAND_POSITIONS // (Z_FACTOR * Z_FACTOR * zw))
        out = np.empty((zc, zh, zw), dtype=np.uint8)
        for z0 in range(0, zh, band):
            z1 = min(zh, z0 + band)
            s0, s1 = max(0, z0 - HYPER_A_HALO_Z), min(zh, z1 + HYPER_A_HALO_Z)
            y_hat = np.zeros((1, c, Z_FACTOR * (s1 - s0), Z_FACTOR * zw), dtype=np.float32)
            rows = q[:, Z_FACTOR * s0:min(h, Z_FACTOR * s1)]
            y_hat[0, :, :rows.shape[1], :w] = (rows.astype(np.float32) - half) * np.float32(self.step)
            z = sess.run(None, {sess.get_inputs()[0].name: y_hat})[0][0]
            out[:, z0:z1] = (np.clip(np.rint(z[:, z0 - s0:z1 - s0]), -half, half) + half).astype(np.uint8)
        if zh > band:  # banded: give the bands' activations back before h_s and the coder run
            release_arena(sess, {sess.get_inputs()[0].name: np.zeros((1, c, Z_FACTOR, Z_FACTOR), np.float32)})
        return out

    def bits(self, symbols: np.ndarray) -> float:
        """Ideal code length in bits of ŷ symbols (c_y, h, w) and their ẑ under the tables."""
        z = self.hyper_symbols(symbols)
        table, d = self._coded(symbols, z)
        ly, lz = np.log2(self.scale_tables) - PRECISION, np.log2(self.z_tables) - PRECISION
        return float(-ly[table, d].sum()
                     - np.take_along_axis(lz, z.reshape(z.shape[0], -1).astype(np.int64), axis=1).sum())

    def rdoq(self, symbols: np.ndarray, residual: np.ndarray, t: float = RDOQ_T) -> np.ndarray:
        """uint8 ŷ symbols (c_y, h, w) and their int8 residuals (aekit.export.entropy.rdoq_choose) -> uint8
        symbols after RDOQ toward each element's hyperprior mean, under the tables of ẑ of the rounded
        symbols; that ẑ and those tables are kept for the coder (`_side_for_coding`), so h_a and h_s still
        run once per image. Latents over RDOQ_MAX_SYMBOLS come back unchanged."""
        if symbols.size > RDOQ_MAX_SYMBOLS:
            return symbols
        z, table, base = self._side(symbols)
        half = (self.levels - 1) // 2
        k = symbols.astype(np.int16) - half
        b = base.astype(np.int16)
        toward = np.clip(k - np.sign(4 * k - (4 * b + (table & 3).astype(np.int16))), -half, half)  # mean b + φ/4
        log2p = np.log2(self.scale_tables) - PRECISION
        saved = log2p[table, toward - b + 254] - log2p[table, k - b + 254]
        out = (rdoq_choose(k, toward, saved, residual, t) + half).astype(np.uint8)
        with self._rdoq_lock:
            self._rdoq_side[_digest(out)] = (z, table, base)
            while len(self._rdoq_side) > RDOQ_SIDE_KEEP:
                self._rdoq_side.popitem(last=False)
        return out

    def _side_for_coding(self, q: np.ndarray, split: bool) -> tuple[np.ndarray, Any, Any]:
        """_side(q, split), or the (ẑ, table, base) RDOQ chose these very symbols under (taken: used once)."""
        if not split:
            with self._rdoq_lock:
                kept = self._rdoq_side.pop(_digest(q), None) if self._rdoq_side else None
            if kept is not None:
                return kept
        return self._side(q, split=split)

    def encode(self, symbols: np.ndarray, zstd_level: int = ZSTD_LEVEL,
               zstd_gate: float | None = ZSTD_GATE) -> tuple[int, bytes]:
        """uint8 (c_y, h, w) -> (coder_id, payload): the smallest of the hyperprior's ANS, zstd and raw
        (aekit.export.entropy._smallest: zstd_gate skips a hopeless full zstd trial)."""
        q = _check_symbols(symbols, self.channels, self.levels)
        try:
            if (self.context is not None or self.spatial) and q.size <= CONTEXT_MAX_SYMBOLS:  # the smallest one wins
                z, table, base = self._side_for_coding(q, split=False)
                base0 = base.copy() if self.spatial else None  # _encode_hyper_best applies its offsets in place
                coder, payload = self._encode_hyper_best(q, (z, table, base))
                own = {coder: payload}
                if self.spatial:
                    own[CODER_SPATIAL] = self._encode_spatial(q, z, table, base0)
                if self.context is not None:
                    own.update(self._encode_channel(q, z, spatial=self.spatial))
                return _smallest(q, {c: (lambda _, p=p: p) for c, p in own.items()}, zstd_level, zstd_gate)
            coder, payload = self._encode_hyper_best(q)
        except ImportError:  # constriction missing: zstd and raw still work
            return _smallest(q, {}, zstd_level, zstd_gate)
        return _smallest(q, {coder: lambda _: payload}, zstd_level, zstd_gate)

    def decode(self, coder_id: int, payload: bytes, shape: tuple[int, int, int]) -> np.ndarray:
        """(coder_id, payload) -> uint8 ŷ symbols (c_y, h, w); EntropyError if corrupt."""
        shp = tuple(int(v) for v in shape)

        def with_offsets(data: bytes, n: int) -> np.ndarray:
            ans, offsets = _split_offsets(data, shp[0])
            return self._decode_hyper(ans, shp, offsets).ravel()

        def with_context(data: bytes, n: int) -> np.ndarray:
            rest, offsets = _split_offsets(data, shp[0], allow_none=True)
            ans, shifts = _split_shifts(rest)
            return self._decode_context(ans, shp, offsets, lambda k, t, b: _context_tables(k, t, b, shifts)).ravel()

        def with_spatial(data: bytes, n: int) -> np.ndarray:
            rest, offsets = _split_offsets(data, shp[0], allow_none=True)
            ans, params = _split_spatial(rest)
            return self._decode_context(ans, shp, offsets, lambda k, t, b: _spatial_tables(k, t, b, params),
                                        coder=CODER_SPATIAL).ravel()

        own = {CODER_HYPER: lambda data, n: self._decode_hyper(data, shp).ravel(), CODER_HYPER_OFFSETS: with_offsets,
               CODER_HYPER_CONTEXT: with_context, CODER_SPATIAL: with_spatial,
               CODER_CHANNEL_CONTEXT: lambda data, n: self._decode_channel_context(data, shp).ravel(),
               CODER_CHANNEL_SPATIAL: lambda data, n: self._decode_channel_context(data, shp, spatial=True).ravel()}
        return _decode_symbols(own, coder_id, payload, shape, self.channels, self.levels)

    def _models(self, which: str) -> list[Any]:
        if which not in self._cache:
            Categorical = _constriction().stream.model.Categorical
            tables = self.scale_tables if which == "y" else self.z_tables
            self._cache[which] = [Categorical((t - 1).astype(np.float64), perfect=False) for t in tables]
        return self._cache[which]

    def _side(self, q: np.ndarray, split: bool = False) -> tuple[np.ndarray, Any, Any]:
        """ŷ symbols (c_y, h, w) -> (ẑ, table, base): h_a, then the integer h_s (split: see _tables)."""
        z = self.hyper_symbols(q)
        return (z, *self.decoder.tables(z, q.shape[1], q.shape[2], self.thresholds, self.step4, split=split))

    def _coded(self, q: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ŷ symbols (c_y, h, w) and their ẑ -> flat (table, d) with d = (q − 127) − base + 254 (0..508)."""
        table, base = self.decoder.tables(z, q.shape[1], q.shape[2], self.thresholds, self.step4)
        return table.ravel(), q.ravel().astype(np.int16) - _base_off(base.ravel(), (self.levels - 1) // 2)

    def _encode_hyper(self, q: np.ndarray) -> bytes:
        """Coder 3's payload of ŷ symbols (c_y, h, w)."""
        return self._ans(q, *self._side(q))

    def _encode_hyper_best(self, q: np.ndarray, side: tuple[np.ndarray, Any, Any] | None = None) -> tuple[int, bytes]:
        """(coder, payload): coder 5 when the spatial context (`context_shifts`) is estimated to save more
        than its side information (latents of at most CONTEXT_MAX_SYMBOLS), else coder 4 when per-channel
        mean offsets (`mean_offsets`) do, else coder 3; h_a and h_s run once either way (not at all for
        symbols RDOQ returned: its ẑ and tables are reused; nor when `side`, _side(q)'s whole arrays, is given)."""
        whole = q.size <= CONTEXT_MAX_SYMBOLS  # coder 5 needs whole arrays; larger latents keep the split path
        z, table, base = side if side is not None else self._side_for_coding(q, split=not whole)  # split: per-channel arrays _group frees
        log2p = np.log2(self.scale_tables) - PRECISION
        head = _offset_head(q, table, base, log2p)
        head = b"" if head == b"\0\0" else head
        if whole:
            k = q.astype(np.int16) - np.int16((self.levels - 1) // 2)
            shifts = context_shifts(k, table, base, log2p, extra_bits=0 if head else 16)
            if shifts is not None:
                return CODER_HYPER_CONTEXT, (head or b"\0\0") + _shift_bytes(shifts) + \
                    self._code(z, *_context_groups(k, table, base, shifts))
        start, grouped = self._group(q, table, base)  # empties the lists: 2 bytes per symbol (268 MB at 178 Mpx, 1/4)
        return (CODER_HYPER_OFFSETS if head else CODER_HYPER), head + self._code(z, (start, grouped))

    def _encode_spatial(self, q: np.ndarray, z: np.ndarray, table: np.ndarray, base: np.ndarray) -> bytes:
        """Coder 7's payload of ŷ symbols (c_y, h, w) under the hyperprior's (ẑ, table, base) (base: shifted in
        place by coder 4's offsets): the offset list (count may be 0), the spatial parameters, then ẑ and the
        four passes in one ANS stream (codec/FORMAT.md)."""
        log2p = np.log2(self.scale_tables) - PRECISION
        head = _offset_head(q, table, base, log2p)
        k = q.astype(np.int16) - np.int16((self.levels - 1) // 2)
        params = spatial_params(k, table, base, log2p)
        return head + _spatial_bytes(params) + self._code(z, *_pass_groups(k, _spatial_tables(k, table, base, params)))

    def _ans(self, q: np.ndarray, z: np.ndarray, table: np.ndarray, base: np.ndarray) -> bytes:
        """The ANS words of ẑ and of ŷ under (table, base) (both (c_y, h, w))."""
        return self._code(z, self._group(q, table, base))

    def _group(self, q: np.ndarray, table: Any, base: Any) -> tuple[np.ndarray, np.ndarray]:
        """ŷ symbols (c_y, h, w) and their (table, base), each (c_y, h, w) or a list of c_y arrays (h, w) ->
        (start, grouped): int64 (257,) start of each table's group, and int16 d = (q − 127) − base + 254
        (0..508) grouped by table (C order within one). Lists are emptied (None) channel by channel as
        grouped fills, so the two never coexist whole (issue 17: a 178 Mpx image at 1/4 has 134 M symbols)."""
        half = (self.levels - 1) // 2
        counts = np.zeros(256, dtype=np.int64)
        for c in range(q.shape[0]):
            counts += np.diff(_group_starts(np.ravel(table[c]), 256))
        start = np.concatenate([[0], np.cumsum(counts)])
        grouped = np.empty(q.size, dtype=np.int16)
        nxt = start[:-1].copy()
        for c in range(q.shape[0]):  # C order: channel by channel, each in chunks (a stable counting sort)
            idx, qf, bf = np.ravel(table[c]), q[c].ravel(), np.ravel(base[c])
            for a, o, dest in _group_chunks(idx, nxt):
                grouped[dest] = (qf[a:a + o.size].astype(np.int16) - _base_off(bf[a:a + o.size], half))[o]
            if isinstance(table, list):
                table[c] = base[c] = None
        return start, grouped

    def _code(self, z: np.ndarray, *passes: tuple[np.ndarray, np.ndarray]) -> bytes:
        """The ANS words: ẑ per channel (popped first), then each pass (start, grouped) in turn: its grouped d
        under their tables (coder 3 and 4: one pass; coder 5: its three)."""
        coder = _constriction().stream.stack.AnsCoder()
        ym, zm = self._models("y"), self._models("z")
        for start, grouped in reversed(passes):  # a stack: the last pass pushed first
            for k in reversed(range(len(ym))):  # the last group pushed first, each group's last chunk first
                for a in reversed(range(int(start[k]), int(start[k + 1]), GROUP_CHUNK)):  # same bits as one call
                    coder.encode_reverse(grouped[a:min(a + GROUP_CHUNK, int(start[k + 1]))].astype(np.int32), ym[k])
        zf = z.reshape(z.shape[0], -1).astype(np.int32)
        for c in reversed(range(z.shape[0])):  # ẑ last, so the decoder pops it first
            coder.encode_reverse(zf[c], zm[c])
        return coder.get_compressed().astype("<u4").tobytes()

    def _decode_hyper(self, payload: bytes, shape: tuple[int, int, int], offsets: np.ndarray | None = None) -> np.ndarray:
        """Coder 3's payload (with `offsets`, coder 4's ANS part) -> uint8 ŷ symbols (c_y, h, w)."""
        cy, h, w = shape
        zc, zh, zw = self.z_shape(h, w)
        if len(payload) % 4:
            raise EntropyError(f"ANS payload of {len(payload)} bytes is not a whole number of 32-bit words")
        words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        ym, zm = self._models("y"), self._models("z")
        try:
            coder = _constriction().stream.stack.AnsCoder(words)
            z = np.stack([coder.decode(zm[c], zh * zw) for c in range(zc)]).reshape(zc, zh, zw).astype(np.uint8)
            table, base = self.decoder.tables(z, h, w, self.thresholds, self.step4)
            if offsets is not None:
                apply_offsets(base, offsets)
            idx, bf = table.ravel(), base.ravel()
            start = _group_starts(idx, len(ym))
            grouped = _pop_groups(coder, ym, start)
        except (ValueError, RuntimeError, OverflowError) as e:
            raise EntropyError(f"corrupt ANS payload ({e})") from None
        if not coder.is_empty():
            raise EntropyError("corrupt ANS payload (data left over after the last symbol)")
        half = (self.levels - 1) // 2
        q = np.empty(idx.size, dtype=np.uint8)
        for a, o, dest in _group_chunks(idx, start[:-1].copy()):
            d = np.empty(o.size, dtype=np.int16)
            d[o] = grouped[dest]
            k = d + _base_off(bf[a:a + o.size], half)  # q = d − 254 + base + 127
            if k.min(initial=0) < 0 or k.max(initial=0) >= self.levels:
                raise EntropyError(f"decoded symbol outside 0..{self.levels - 1} (corrupt payload)")
            q[a:a + o.size] = k
        return q.reshape(cy, h, w)

    def _pop_z(self, payload: bytes, h: int, w: int) -> tuple[Any, np.ndarray]:
        """An ANS stream's coder (coders 5 and 6) with ẑ (c_z, ceil(h/4), ceil(w/4)) popped; EntropyError for a
        payload that is not whole 32-bit words (constriction's errors are the caller's to translate)."""
        zc, zh, zw = self.z_shape(h, w)
        if len(payload) % 4:
            raise EntropyError(f"ANS payload of {len(payload)} bytes is not a whole number of 32-bit words")
        zm = self._models("z")
        coder = _constriction().stream.stack.AnsCoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))
        return coder, np.stack([coder.decode(zm[c], zh * zw) for c in range(zc)]).reshape(zc, zh, zw).astype(np.uint8)

    def _decode_context(self, payload: bytes, shape: tuple[int, int, int], offsets: np.ndarray,
                        passes: Any, coder: int = CODER_HYPER_CONTEXT) -> np.ndarray:
        """Coder 5's or 7's ANS part -> uint8 ŷ symbols (c_y, h, w): ẑ, then the passes `passes(k, table, base)`
        yields (_context_tables' three, each under the tables its context classes shift to, or _spatial_tables'
        four; codec/FORMAT.md)."""
        cy, h, w = shape
        if cy * h * w > CONTEXT_MAX_SYMBOLS:
            raise EntropyError(f"coder {coder} payload for {cy * h * w} symbols (at most {CONTEXT_MAX_SYMBOLS})")
        ym, half = self._models("y"), (self.levels - 1) // 2
        k = np.zeros((cy, h, w), dtype=np.int16)
        try:
            ans, z = self._pop_z(payload, h, w)
            table, base = self.decoder.tables(z, h, w, self.thresholds, self.step4)
            apply_offsets(base, offsets)
            for where, t, b in passes(k, table, base):  # pass by pass: k fills as it goes
                k[:, where] = _pop_pass(ans, ym, t) - 254 + b
        except (ValueError, RuntimeError, OverflowError) as e:
            raise EntropyError(f"corrupt ANS payload ({e})") from None
        if not ans.is_empty():
            raise EntropyError("corrupt ANS payload (data left over after the last symbol)")
        if k.min(initial=0) < -half or k.max(initial=0) > self.levels - 1 - half:
            raise EntropyError(f"decoded symbol outside 0..{self.levels - 1} (corrupt payload)")
        return (k + half).astype(np.uint8)


    def _encode_context(self, q: np.ndarray, z: np.ndarray | None = None) -> bytes:
        """Coder 6's payload of ŷ symbols (c_y, h, w) (codec/FORMAT.md): the context id, coder 4's offset list and
        coder 5's class shifts chosen on the tables the channel context gives, then one ANS stream of ẑ and of the
        slices in turn, each in coder 5's three passes. z: ẑ if known."""
        return self._encode_channel(q, z, spatial=False)[CODER_CHANNEL_CONTEXT]

    def _encode_channel(self, q: np.ndarray, z: np.ndarray | None = None, spatial: bool = True) -> dict[int, bytes]:
        """{6: coder 6's payload, 8: coder 8's (spatial=True)} of ŷ symbols (c_y, h, w), the channel context's
        tables computed once for both: coder 8 is coder 6 with coder 7's four passes and parameters in place of
        coder 5's passes and shifts. z: ẑ if known."""
        z = self.hyper_symbols(q) if z is None else z
        mu, ls = self.decoder.params(z, q.shape[1], q.shape[2])
        k = q.astype(np.int16) - np.int16((self.levels - 1) // 2)
        ctx, per = self.context, self.context.per
        table, base = np.empty(q.shape, np.uint8), np.empty(q.shape, np.int8)
        for s in range(ctx.slices):  # every slice's tables at once: the encoder knows all symbols
            sl = slice(s * per, (s + 1) * per)
            table[sl], base[sl] = ctx.slice_tables(s, mu, ls, k, self.decoder.frac_bits, self.thresholds, self.step4)
        log2p = np.log2(self.scale_tables) - PRECISION
        head = ctx.id + _offset_head(q, table, base, log2p)
        shifts = context_shifts(k, table, base, log2p)
        if shifts is None:
            shifts = np.zeros((CONTEXT_CLASSES, 2), np.int16)
        slices = [slice(s * per, (s + 1) * per) for s in range(ctx.slices)]
        out = {CODER_CHANNEL_CONTEXT: head + _shift_bytes(shifts) + self._code(
            z, *[g for sl in slices for g in _context_groups(k[sl], table[sl], base[sl], shifts)])}
        if spatial:
            params = spatial_params(k, table, base, log2p)
            out[CODER_CHANNEL_SPATIAL] = head + _spatial_bytes(params) + self._code(
                z, *[g for sl in slices for g in _pass_groups(k[sl], _spatial_tables(k[sl], table[sl], base[sl], params))])
        return out

    def _decode_channel_context(self, payload: bytes, shape: tuple[int, int, int], spatial: bool = False) -> np.ndarray:
        """Coder 6's payload (coder 8's: spatial=True) -> uint8 ŷ symbols (c_y, h, w): ẑ, then slice by slice, each
        slice's tables from the context network on the slices before it (with the offsets), coded in coder 5's
        three passes (coder 7's four)."""
        from aekit.export.context import CONTEXT_ID_BYTES

        coder = CODER_CHANNEL_SPATIAL if spatial else CODER_CHANNEL_CONTEXT
        cy, h, w = shape
        got = payload[:CONTEXT_ID_BYTES].hex()
        if self.context is None:
            raise EntropyError(f"coded with channel context {got}, which this model folder does not have "
                               "(aekit add-context adds it; the model id is the same without it)")
        if payload[:CONTEXT_ID_BYTES] != self.context.id:
            raise EntropyError(f"coded with channel context {got}; this model folder has {self.context.id.hex()}")
        if cy * h * w > CONTEXT_MAX_SYMBOLS:
            raise EntropyError(f"coder {coder} payload for {cy * h * w} symbols (at most {CONTEXT_MAX_SYMBOLS})")
        rest, offsets = _split_offsets(payload[CONTEXT_ID_BYTES:], cy, allow_none=True)
        if spatial:
            payload, params = _split_spatial(rest)
        else:
            payload, shifts = _split_shifts(rest, allow_none=True)
        ym, half = self._models("y"), (self.levels - 1) // 2
        k = np.zeros((cy, h, w), dtype=np.int16)
        ctx, per = self.context, self.context.per
        try:
            ans, z = self._pop_z(payload, h, w)
            mu, ls = self.decoder.params(z, h, w)
            for s in range(ctx.slices):
                ks = k[s * per:(s + 1) * per]  # a view: the passes fill k
                table, base = ctx.slice_tables(s, mu, ls, k, self.decoder.frac_bits, self.thresholds, self.step4)
                apply_offsets(base, offsets[s * per:(s + 1) * per])
                passes = _spatial_tables(ks, table, base, params) if spatial else _context_tables(ks, table, base, shifts)
                for where, t, b in passes:
                    v = _pop_pass(ans, ym, t) - 254 + b
                    if v.min(initial=0) < -half or v.max(initial=0) > self.levels - 1 - half:
                        raise EntropyError(f"decoded symbol outside 0..{self.levels - 1} (corrupt payload)")
                    ks[:, where] = v
        except (ValueError, RuntimeError, OverflowError) as e:
            raise EntropyError(f"corrupt ANS payload ({e})") from None
        if not ans.is_empty():
            raise EntropyError("corrupt ANS payload (data left over after the last symbol)")
        return (k + half).astype(np.uint8)

# Coder 5: a spatial context without a network. ŷ is split into three interleaved passes, coded one after
# the other, as in the two-pass checkerboard of He et al., "Checkerboard context model for efficient learned
# image compression" (CVPR 2021), here with a third pass (its anchors split again in quincunx): pass 0 =
# even row and even column, pass 1 = odd row and odd column, pass 2 = the rest. An
# element of pass 1 sees its four diagonal neighbours (all in pass 0), one of pass 2 its four direct
# neighbours (passes 0 and 1); its context class is (n, s): n = how many of those (same channel, inside the
# latent) have a non-zero residual e = k − base, s = the sum of their signs. Each class of each context pass
# (2 × 15) may shift the element's scale index j and mean (in quarter steps), chosen per image by the encoder
# and sent as two int8. He et al.'s context is a trained network; this one needs no training and no floating
# point: both sides compute the same integers.
CONTEXT_CLASSES = 30  # per context pass (1, 2) the classes n(n + 1)/2 + (s + n)/2, n = 0..4, s = −n, −n + 2, .., n
# coder 5 for latents up to this many symbols (whole arrays: measured 339 MB peak RSS against coder 4's 300 MB
# compressing a 5.5 Mpx photo at 1/4, 4.2 M symbols); larger latents (over 5.6 Mpx at 1/4, 12.6 Mpx at 1/9 for
# RGB) keep coder 3/4's split, memory-bounded path
CONTEXT_MAX_SYMBOLS = 1 << 22
CONTEXT_SHIFTS = np.arange(-8, 9, dtype=np.int16)  # scale index and mean (quarter steps) shifts the encoder tries
_DIAGONAL = ((-1, -1), (-1, 1), (1, -1), (1, 1))
_DIRECT = ((-1, 0), (1, 0), (0, -1), (0, 1))


RDOQ_SIDE_KEEP = 8  # RDOQ'd latents whose side information waits for the coder (each ≤ 2^22 symbols: ≤ 12 MB)


def _digest(q: np.ndarray) -> bytes:
    """Content key of a symbol array (shape and bytes)."""
    h = hashlib.blake2b(repr((q.shape, q.dtype.str)).encode(), digest_size=16)
    h.update(np.ascontiguousarray(q).data)
    return h.digest()


def context_passes(h: int, w: int) -> np.ndarray:
    """int8 (h, w): each position's pass, 0 (even row, even column), 1 (odd, odd) or 2 (the rest)."""
    r, c = np.indices((h, w))
    return np.where((r % 2) == (c % 2), r % 2, 2).astype(np.int8)


def context_classes(k: np.ndarray, base: np.ndarray, known: np.ndarray, diagonal: bool) -> np.ndarray:
    """int16 symbols k = q − 127 (c_y, h, w) (only where `known`, bool (h, w), is read), their int base ->
    int8 class 0..14 of every element: n(n + 1)/2 + (s + n)/2, with n the number of its four diagonal
    (diagonal=True) or direct neighbours (same channel, inside the latent, known) whose residual k − base is
    non-zero and s the sum of those residuals' signs."""
    sign = np.sign(np.where(known, k - base.astype(np.int16), 0)).astype(np.int8)
    n, s = np.zeros(sign.shape, np.int8), np.zeros(sign.shape, np.int8)
    _, h, w = sign.shape
    for dr, dc in _DIAGONAL if diagonal else _DIRECT:  # the neighbour at (r + dr, c + dc)
        src = sign[:, max(0, dr):h + min(0, dr), max(0, dc):w + min(0, dc)]
        dst = (slice(None), slice(max(0, -dr), h + min(0, -dr)), slice(max(0, -dc), w + min(0, -dc)))
        n[dst] += src != 0
        s[dst] += src
    return (n * (n + 1) // 2 + (s + n) // 2).astype(np.int8)


def shifted_tables(table: np.ndarray, base: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tables t = 4j + φ and int bases b (any shape) shifted by int (…, 2) shifts (Δj, Δm): the scale index
    j' = clip(j + Δj, 0, 63), the mean in quarter steps m' = 4b + φ + Δm, then b' = clip(floor(m'/4), ±127) and
    t' = 4j' + (m' mod 4) (the hyperprior's own rule). Returns (uint8 t', int16 b')."""
    t = table.astype(np.int16)
    j = np.clip((t >> 2) + shift[..., 0], 0, 63)
    m = 4 * base.astype(np.int16) + (t & 3) + shift[..., 1]
    return (4 * j + (m & 3)).astype(np.uint8), np.clip(m >> 2, -127, 127).astype(np.int16)


def _context_tables(k: np.ndarray, table: np.ndarray, base: np.ndarray,
                    shifts: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Coder 5's passes in coding order: (where, t, b) with where a bool (h, w) mask of the pass and t, b its
    elements' (shifted) tables and int16 bases, (c_y, n_pass) in C order. A generator: the decoder fills k
    with a pass's symbols before the next pass's classes are formed from them."""
    passes = context_passes(*k.shape[1:])
    for p in range(3):
        where = passes == p
        t, b = table[:, where], base[:, where].astype(np.int16)
        if p:
            cls = context_classes(k, base, passes < p, diagonal=p == 1)[:, where].astype(np.int64) + 15 * (p - 1)
            t, b = shifted_tables(t, b, shifts[cls])
        yield where, t, b


def context_shifts(k: np.ndarray, table: np.ndarray, base: np.ndarray, log2p: np.ndarray,
                   extra_bits: int = 0) -> np.ndarray | None:
    """Coder 5's per-class shifts, int16 (30, 2) (Δj, Δm), or None when they are not estimated to save more
    than their side information (4 bytes of class mask, 2 per shifted class, plus extra_bits).

    k: int16 symbols q − 127 (c_y, h, w); table, base: the hyperprior's (with any coder-4 offsets applied);
    log2p: (256, 509) log2 probabilities of the tables. The code length of a symbol under a shift depends
    only on its (table, k, base), so the symbols are reduced to their distinct triples with counts and every
    class is scored exactly over all its symbols at once; per class a coordinate search over CONTEXT_SHIFTS
    (Δj with Δm = 0, then Δm, then Δj again); a class keeps its shift when it saves more than its 16 bits.
    Deterministic."""
    passes = context_passes(*k.shape[1:])
    shifts, saving = np.zeros((CONTEXT_CLASSES, 2), np.int16), 0.0
    cand = CONTEXT_SHIFTS[:, None]
    for p in (1, 2):
        where = passes == p
        cls = context_classes(k, base, passes < p, diagonal=p == 1)[:, where].ravel().astype(np.int64)
        key = (cls << 24 | table[:, where].ravel().astype(np.int64) << 16
               | (k[:, where].ravel().astype(np.int64) + 128) << 8 | (base[:, where].ravel().astype(np.int64) + 128))
        uniq, counts = np.unique(key, return_counts=True)  # sorted by class first
        if uniq.size == 0:
            continue
        tt, kk, bb = (uniq >> 16 & 255).astype(np.uint8), (uniq >> 8 & 255).astype(np.int16) - 128, (uniq & 255) - 128
        present, first = np.unique(uniq >> 24, return_index=True)  # the classes that occur, where each starts
        of = np.repeat(np.arange(present.size), np.diff(np.append(first, uniq.size)))  # class slot of each triple

        def bits(dj: np.ndarray, dm: np.ndarray) -> np.ndarray:
            """(C, U) shifts -> (C, classes present): the bits of each class's symbols under them."""
            t2, b2 = shifted_tables(tt, bb, np.stack(np.broadcast_arrays(dj, dm), axis=-1))
            return np.add.reduceat(-log2p[t2, kk - b2 + 254] * counts, first, axis=1)

        zero = np.zeros((1, 1), np.int16)
        before = bits(zero, zero)[0]
        dj = CONTEXT_SHIFTS[np.argmin(bits(cand, zero), axis=0)]  # per class present
        dm = CONTEXT_SHIFTS[np.argmin(bits(dj[of][None], cand), axis=0)]
        dj = CONTEXT_SHIFTS[np.argmin(bits(cand, dm[of][None]), axis=0)]
        gain = before - bits(dj[of][None], dm[of][None])[0]
        keep = ((dj != 0) | (dm != 0)) & (gain > 16)
        shifts[15 * (p - 1) + present[keep]] = np.stack([dj[keep], dm[keep]], axis=1)
        saving += float((gain[keep] - 16).sum())
    return shifts if shifts.any() and saving > 32 + extra_bits else None


def _shift_bytes(shifts: np.ndarray) -> bytes:
    """Coder 5's context side information: uint32 LE mask of the shifted classes, then (int8 Δj, int8 Δm) each."""
    used = np.flatnonzero(shifts.any(axis=1))
    mask = int(sum(1 << int(c) for c in used))
    return mask.to_bytes(4, "little") + shifts[used].astype(np.int8).tobytes()


def _split_shifts(payload: bytes, allow_none: bool = False) -> tuple[bytes, np.ndarray]:
    """Coder 5's payload after the offsets -> (ANS part, int16 shifts (30, 2)); EntropyError when malformed.
    allow_none: coder 6, whose mask may name no class (then every shift is 0)."""
    if len(payload) < 4:
        raise EntropyError("coder 5/6 payload too short for its context mask")
    mask = int.from_bytes(payload[:4], "little")
    used = [c for c in range(32) if mask >> c & 1]
    end = 4 + 2 * len(used)
    if mask >> CONTEXT_CLASSES or (not used and not allow_none) or len(payload) < end:
        raise EntropyError(f"coder 5 context mask 0x{mask:08x} names no class or one beyond class "
                           f"{CONTEXT_CLASSES - 1}, or its shifts are cut off")
    shifts = np.zeros((CONTEXT_CLASSES, 2), np.int16)
    shifts[used] = np.frombuffer(payload[4:end], dtype=np.int8).reshape(-1, 2)
    if not shifts[used].any(axis=1).all():
        raise EntropyError("coder 5 context shifts of a listed class must not both be 0")
    return payload[end:], shifts


def _context_groups(k: np.ndarray, table: np.ndarray, base: np.ndarray,
                    shifts: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Coder 5's three passes (start, grouped) of d = k − b + 254 under each pass's (shifted) tables, grouped
    by table (C order of (c_y, h, w) within a group)."""
    return _pass_groups(k, _context_tables(k, table, base, shifts))


def _pop_pass(coder: Any, ym: list[Any], tables: np.ndarray) -> np.ndarray:
    """Pop one pass of coder 5: the d of elements with these tables (any shape, C order), grouped by table;
    returns int16 d in the elements' shape."""
    t = tables.ravel()
    d = np.empty(t.size, dtype=np.int16)
    d[np.argsort(t, kind="stable")] = _pop_groups(coder, ym, _group_starts(t, len(ym)))
    return d.reshape(tables.shape)


def _pop_groups(coder: Any, ym: list[Any], start: np.ndarray) -> np.ndarray:
    """int16 d of every group in turn (group g: start[g]..start[g + 1] under ym[g]), popped in chunks of
    GROUP_CHUNK so the int32 array constriction returns stays small (coders 3, 4 and 5)."""
    grouped = np.empty(int(start[-1]), dtype=np.int16)
    for g in range(len(ym)):
        for a in range(int(start[g]), int(start[g + 1]), GROUP_CHUNK):
            b = min(a + GROUP_CHUNK, int(start[g + 1]))
            grouped[a:b] = coder.decode(ym[g], b - a)
    return grouped


# Coder 7: a spatial context that predicts the mean from the neighbours. Coder 5's classes only shift a
# table by a constant per class; on smooth content (skies, out-of-focus backgrounds, the 1/4 models' finer grid)
# whole regions of a channel sit one or two steps off the hyperprior's mean, and the neighbours already coded
# show by how much. ŷ is coded in four interleaved passes (a checkerboard, He et al., "Checkerboard context model
# for efficient learned image compression", CVPR 2021, applied twice): pass 0 = even row and column with
# (r/2 + c/2) even; pass 1 = the other even-even positions, which see their four neighbours at distance 2 (all
# pass 0); pass 2 = odd row and column (four diagonal neighbours, passes 0-1); pass 3 = the rest (four direct
# neighbours, passes 0-2). For an element of pass p ≥ 1, with the residuals R = 4k − m of its N neighbours inside
# the latent (same channel; m = 4·base + φ, the table's mean in quarter steps): the prediction
# P = floor((2·ΣR + N) / (2N)) (the mean, rounded half up), the spread D = max |R_n − P| and the class
# min(D >> 1, 7). Per (pass, class) the file carries (Δj, a): the element's mean moves by floor((a·P + 2) / 4)
# quarter steps (a = 0..4: a quarter to all of the prediction) and its scale index by Δj, as coder 5's shifts
# (shifted_tables). Integers only, so both sides compute the same tables. Chosen per image by the encoder.
SPATIAL_PASSES = 4
SPATIAL_CLASSES = 8  # per context pass (1, 2, 3): min(D >> 1, 7)
SPATIAL_SLOTS = 3 * SPATIAL_CLASSES  # (pass − 1)·8 + class; the file's mask has one bit each
SPATIAL_A_MAX = 4  # a = 0..4: the share of the prediction P the mean takes, in quarters
SPATIAL_DJ = np.arange(-12, 5, dtype=np.int16)  # scale index shifts the encoder tries (smooth regions want far lower)
_SPATIAL_NEIGHBOURS = (None, ((-2, 0), (2, 0), (0, -2), (0, 2)), _DIAGONAL, _DIRECT)


def spatial_passes(h: int, w: int) -> np.ndarray:
    """int8 (h, w): each position's coder-7 pass 0..3 (see above). Every neighbour of a pass-p position inside
    the latent lies in an earlier pass, and each pass ≥ 1 position has at least one."""
    r, c = np.indices((h, w))
    even = (r % 2 == 0) & (c % 2 == 0)
    return np.where(even, (r // 2 + c // 2) % 2, np.where((r % 2 == 1) & (c % 2 == 1), 2, 3)).astype(np.int8)


def _neighbour(h: int, w: int, dr: int, dc: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """(src, dst) slices of (h, w) planes: dst[i] has its neighbour at (r + dr, c + dc) in src[i]."""
    return ((slice(max(0, dr), h + min(0, dr)), slice(max(0, dc), w + min(0, dc))),
            (slice(max(0, -dr), h + min(0, -dr)), slice(max(0, -dc), w + min(0, -dc))))


def spatial_prediction(k: np.ndarray, m: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """int16 symbols k = q − 127 (c_y, h, w) (read at pass p's neighbours only) and int16 quarter-step means m ->
    (P, class): int32 and int8 (c_y, h, w), meaningful at pass p's positions (coder 7, above)."""
    c, h, w = k.shape
    r = 4 * k.astype(np.int32) - m
    s, n = np.zeros((c, h, w), np.int32), np.zeros((h, w), np.int32)
    for dr, dc in _SPATIAL_NEIGHBOURS[p]:
        src, dst = _neighbour(h, w, dr, dc)
        s[:, dst[0], dst[1]] += r[:, src[0], src[1]]
        n[dst] += 1
    pred = (2 * s + n) // (2 * np.maximum(n, 1))  # floor division: the mean rounded half up
    dev = np.zeros((c, h, w), np.int32)
    for dr, dc in _SPATIAL_NEIGHBOURS[p]:
        src, dst = _neighbour(h, w, dr, dc)
        np.maximum(dev[:, dst[0], dst[1]], np.abs(r[:, src[0], src[1]] - pred[:, dst[0], dst[1]]),
                   out=dev[:, dst[0], dst[1]])
    return pred, np.minimum(dev >> 1, SPATIAL_CLASSES - 1).astype(np.int8)


def _spatial_tables(k: np.ndarray, table: np.ndarray, base: np.ndarray,
                    params: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Coder 7's passes in coding order: (where, t, b) as _context_tables', under the (Δj, a) params (24, 2) of
    each (pass, class). A generator: the decoder fills k with a pass's symbols before the next pass is formed."""
    passes = spatial_passes(*k.shape[1:])
    m = 4 * base.astype(np.int16) + (table & 3).astype(np.int16)
    for p in range(SPATIAL_PASSES):
        where = passes == p
        t, b = table[:, where], base[:, where].astype(np.int16)
        if p:
            pred, cls = spatial_prediction(k, m, p)
            slot = cls[:, where].astype(np.int64) + SPATIAL_CLASSES * (p - 1)
            dm = (params[slot, 1].astype(np.int32) * pred[:, where] + 2) >> 2
            t, b = shifted_tables(t, b, np.stack([params[slot, 0].astype(np.int32), dm], axis=-1))
        yield where, t, b


def spatial_params(k: np.ndarray, table: np.ndarray, base: np.ndarray, log2p: np.ndarray) -> np.ndarray:
    """Coder 7's (Δj, a) per (pass, class), int16 (24, 2), chosen for these symbols: per class a coordinate
    search over a (Δj = 0), then Δj (SPATIAL_DJ), then a again, on the exact code lengths under the tables
    (log2p: (256, 509) log2 probabilities); a slot keeps its pair where that saves more than its 16 bits.
    k: int16 symbols q − 127, table, base: (c_y, h, w) (base with any coder-4 offsets). Deterministic."""
    params = np.zeros((SPATIAL_SLOTS, 2), np.int16)
    passes = spatial_passes(*k.shape[1:])
    m = 4 * base.astype(np.int16) + (table & 3).astype(np.int16)
    a_all = np.arange(SPATIAL_A_MAX + 1, dtype=np.int32)
    for p in range(1, SPATIAL_PASSES):
        where = passes == p
        if not where.any():
            continue
        pred, cls = spatial_prediction(k, m, p)
        tt, bb, kk = table[:, where].ravel(), base[:, where].ravel().astype(np.int16), k[:, where].ravel()
        pr, cl = pred[:, where].ravel(), cls[:, where].ravel().astype(np.int64)

        def bits(dj: np.ndarray, a: np.ndarray) -> np.ndarray:
            """int (8,) Δj and a per class -> float (8,) bits of each class's symbols under them."""
            t2, b2 = shifted_tables(tt, bb, np.stack([dj[cl].astype(np.int32), (a[cl] * pr + 2) >> 2], axis=-1))
            return np.bincount(cl, weights=-log2p[t2, kk - b2 + 254], minlength=SPATIAL_CLASSES)

        zero = np.zeros(SPATIAL_CLASSES, np.int32)
        before = bits(zero, zero)
        a = a_all[np.argmin([bits(zero, np.full(SPATIAL_CLASSES, v)) for v in a_all], axis=0)]
        dj = SPATIAL_DJ[np.argmin([bits(np.full(SPATIAL_CLASSES, v), a) for v in SPATIAL_DJ], axis=0)].astype(np.int32)
        a = a_all[np.argmin([bits(dj, np.full(SPATIAL_CLASSES, v)) for v in a_all], axis=0)]
        gain = before - bits(dj, a)
        keep = ((dj != 0) | (a != 0)) & (gain > 16)
        sl = slice(SPATIAL_CLASSES * (p - 1), SPATIAL_CLASSES * p)
        params[sl] = np.where(keep[:, None], np.stack([dj, a], axis=1), 0)
    return params


def _spatial_bytes(params: np.ndarray) -> bytes:
    """Coder 7's side information: uint32 LE mask of the slots used, then (int8 Δj, uint8 a) each."""
    used = np.flatnonzero(params.any(axis=1))
    mask = int(sum(1 << int(s) for s in used))
    return mask.to_bytes(4, "little") + params[used].astype(np.int8).tobytes()


def _split_spatial(payload: bytes) -> tuple[bytes, np.ndarray]:
    """Coder 7/8's payload after the offsets -> (ANS part, int16 params (24, 2)); EntropyError when malformed."""
    if len(payload) < 4:
        raise EntropyError("coder 7/8 payload too short for its spatial mask")
    mask = int.from_bytes(payload[:4], "little")
    used = [s for s in range(SPATIAL_SLOTS) if mask >> s & 1]
    end = 4 + 2 * len(used)
    if mask >> SPATIAL_SLOTS or len(payload) < end:
        raise EntropyError(f"coder 7/8 spatial mask 0x{mask:08x} names a slot beyond {SPATIAL_SLOTS - 1}, "
                           "or its parameters are cut off")
    params = np.zeros((SPATIAL_SLOTS, 2), np.int16)
    pairs = np.frombuffer(payload[4:end], dtype=np.int8).reshape(-1, 2).astype(np.int16)
    if ((pairs[:, 1] < 0) | (pairs[:, 1] > SPATIAL_A_MAX)).any() or not pairs.any(axis=1).all():
        raise EntropyError(f"coder 7/8 spatial parameters: a outside 0..{SPATIAL_A_MAX}, or a listed slot with "
                           "Δj = a = 0")
    params[used] = pairs
    return payload[end:], params


def _pass_groups(k: np.ndarray, tables: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Passes (where, t, b) of coder 5 or 7 -> their (start, grouped) of d = k − b + 254, grouped by table (C
    order of (c_y, h, w) within a group)."""
    out = []
    for where, t, b in tables:
        t, d = t.ravel(), (k[:, where] - b + 254).ravel()
        out.append((_group_starts(t, 256), d[np.argsort(t, kind="stable")].astype(np.int16)))
    return out


# Coder 4: the hyperprior's integer mean base of channel c is shifted by an offset o_c sent in the file
# (FORMAT.md). The hyperprior, trained on 16 photos, predicts some channels' means off by a constant on
# images unlike them (flat skies, meadows); a per-image, per-channel correction costs 3 bytes a channel.
OFFSET_SAMPLE = 1 << 13  # symbols per channel the offset choice looks at (evenly spaced; bounds its memory)
OFFSET_MAX = 64  # |o_c| at most (the base is clipped to ±127 after the shift anyway)


def mean_offsets(q: np.ndarray, table: Any, base: Any, log2p: np.ndarray) -> np.ndarray:
    """Per-channel integer offsets o (int16, (c_y,)) for the mean base: o_c = the median of k − base over
    (a sample of) channel c's symbols (k = q − 127), kept where it lowers the channel's estimated code
    length under the tables (log2p: (256, 509) log2 probabilities) by more than its 3 bytes; all zero when
    the total saving would not pay for coder 4's 2-byte count. Deterministic (the decoder only reads o).
    table and base: (c_y, h, w) arrays or lists of c_y arrays (h, w) (IntegerHyperDecoder.tables' split)."""
    cy = q.shape[0]
    n = q[0].size
    pick = np.unique(np.linspace(0, n - 1, min(n, OFFSET_SAMPLE)).astype(np.int64))
    k = q.reshape(cy, -1)[:, pick].astype(np.int64) - 127
    b = np.stack([np.ravel(x)[pick] for x in base]).astype(np.int64)
    t = np.stack([np.ravel(x)[pick] for x in table])
    o = np.clip(np.round(np.median(k - b, axis=1)), -OFFSET_MAX, OFFSET_MAX).astype(np.int64)

    def cost(shift: np.ndarray) -> np.ndarray:  # estimated bits of each channel's symbols, scaled to all n
        bb = np.clip(b + shift[:, None], -127, 127)
        return -log2p[t, k - bb + 254].sum(axis=1) * (n / len(pick))

    saving = cost(np.zeros(cy, np.int64)) - cost(o)
    o[saving <= 24] = 0
    if saving[o != 0].sum() <= 16 + 24 * np.count_nonzero(o):
        o[:] = 0
    return o.astype(np.int16)


def _offset_head(q: np.ndarray, table: Any, base: Any, log2p: np.ndarray) -> bytes:
    """Coder 4's offset list for these symbols (mean_offsets), applied to base in place: uint16 LE count (may be
    0), then (uint16 channel, int8 offset) each, the channels ascending."""
    off = mean_offsets(q, table, base, log2p)
    nz = np.flatnonzero(off)
    side = np.empty(len(nz), dtype=[("c", "<u2"), ("o", "i1")])
    side["c"], side["o"] = nz, off[nz]
    apply_offsets(base, off)
    return len(nz).to_bytes(2, "little") + side.tobytes()


def apply_offsets(base: Any, offsets: np.ndarray) -> None:
    """base (int8 or int16, (c_y, h, w), or a list of c_y such arrays (h, w)) += offsets per channel, clipped
    to ±127, in place (coder 4; summed in int16, so an int8 base cannot wrap before the clip)."""
    for c in np.flatnonzero(offsets):
        base[c] = np.clip(base[c].astype(np.int16) + np.int16(offsets[c]), -127, 127).astype(base[c].dtype)


def _split_offsets(payload: bytes, cy: int, allow_none: bool = False) -> tuple[bytes, np.ndarray]:
    """Coder 4's payload -> (ANS part, int16 offsets (c_y,)); EntropyError when its offset list is malformed.
    allow_none: coder 5, whose offset list may be empty (count 0)."""
    if len(payload) < 2:
        raise EntropyError("coder 4/5 payload too short for its offset count")
    n = int.from_bytes(payload[:2], "little")
    end = 2 + 3 * n
    if n < (0 if allow_none else 1) or n > cy or len(payload) < end:
        raise EntropyError(f"coder 4 payload announces {n} channel offsets ({cy} channels, {len(payload)} bytes)")
    side = np.frombuffer(payload[2:end], dtype=[("c", "<u2"), ("o", "i1")])
    c = side["c"].astype(np.int64)
    if (c >= cy).any() or (np.diff(c) <= 0).any() or (side["o"] == 0).any() or \
            (np.abs(side["o"].astype(np.int64)) > OFFSET_MAX).any():
        raise EntropyError("coder 4 offsets must name ascending channels with non-zero offsets of at most "
                           f"{OFFSET_MAX}")
    offsets = np.zeros(cy, dtype=np.int16)
    offsets[c] = side["o"]
    return payload[end:], offsets


def _released_array(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """np.empty(shape, dtype), in its own anonymous memory map when it is 64 KiB or more, so that dropping it
    gives its pages back to the OS at once: glibc serves blocks below its (adaptive, up to 32 MiB) mmap
    threshold from the heap, which seldom shrinks, and freeing the split tables channel by channel would
    then not lower the peak RSS (measured: 894 MB either way on a 178 Mpx image at 1/4)."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if n < 1 << 16:
        return np.empty(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, n), dtype=dtype).reshape(shape)


def _base_off(base: np.ndarray, half: int) -> np.ndarray:
    """int8 base -> int16 q − d offset: q = d − 2·half + base + half = d + (base − half)."""
    return base.astype(np.int16) - np.int16(half)


GROUP_CHUNK = 1 << 20  # elements per step of the grouping by table and of the coder (bounds their temporaries: 4-8 MiB)


def _group_starts(idx: np.ndarray, n: int) -> np.ndarray:
    """uint8 table index per element (flat) -> int64 (n + 1,) start of each table's group in grouped order."""
    counts = np.zeros(n, dtype=np.int64)
    for a in range(0, idx.size, GROUP_CHUNK):
        counts += np.bincount(idx[a:a + GROUP_CHUNK], minlength=n)[:n]
    return np.concatenate([[0], np.cumsum(counts)])


def _group_chunks(idx: np.ndarray, nxt: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """The stable sort of idx by table (elements grouped by table, C order within a group: the coder-3
    order of codec/FORMAT.md) as a counting sort in chunks of GROUP_CHUNK: yields (a, o, dest) — the
    chunk's element a + o[i] goes to grouped position dest[i]. nxt (int64 (n,)): each group's next free
    position, advanced in place (start[:-1].copy() for a whole array; kept across the parts of one that
    comes in parts). Memory: a few arrays of one chunk."""
    n = nxt.size
    for a in range(0, idx.size, GROUP_CHUNK):
        part = idx[a:a + GROUP_CHUNK]
        o = np.argsort(part, kind="stable")
        sp = part[o].astype(np.int64)
        c = np.bincount(part, minlength=n)[:n]
        first = np.concatenate([[0], np.cumsum(c)[:-1]])  # each group's first place within the sorted chunk
        yield a, o, nxt[sp] + (np.arange(part.size) - first[sp])
        nxt += c


def _wmat(w: np.ndarray) -> np.ndarray:
    """int weights (out, in, kh, kw) -> float64 (kh·kw·in, out), the channels-last im2col product's right side."""
    return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]).astype(np.float64)


def _conv_blocks(a: np.ndarray, part: tuple, bias: np.ndarray, out_h: int, out_w: int,
                 rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """Stride-1 correlation of a channels-last (H, W, C) int array with part's kernel, the window of output
    (m, n) starting at input (m + lo_y, n + lo_x) (zeros outside a): (row, acc) blocks of float64 integers
    (r, out_w, out), each a fresh array the caller may overwrite."""
    _, _, wmat, (kh, kw), (lo_y, lo_x) = part
    hh, ww, c = a.shape
    need_w = out_w + kw - 1  # the input window [lo, lo + need) of each block, zero-padded block by block
    xs, xe = max(0, lo_x), min(ww, lo_x + need_w)
    step = rows or max(1, CHUNK_BYTES // (8 * out_w * wmat.shape[0]))
    for r0 in range(0, out_h, step):
        r1 = min(out_h, r0 + step)
        src = np.zeros((r1 - r0 + kh - 1, need_w, c), dtype=np.float64)  # rows lo_y + r0 .. lo_y + r1 + kh - 1
        ys, ye = max(0, lo_y + r0), min(hh, lo_y + r1 + kh - 1)
        if ye > ys and xe > xs:
            src[ys - lo_y - r0:ye - lo_y - r0, xs - lo_x:xe - lo_x] = a[ys:ye, xs:xe]
        win = np.lib.stride_tricks.sliding_window_view(src, (kh, kw), axis=(0, 1))  # (r, w, C, kh, kw)
        cols = win.transpose(0, 1, 3, 4, 2).reshape((r1 - r0) * out_w, -1)  # rows of (kh, kw, C)
        acc = cols @ wmat  # exact: integers < 2^53
        acc += bias
        yield r0, acc.reshape(r1 - r0, out_w, -1)


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS limited to one thread while inside (codec workers run one thread each, issue 17; the integer networks'
    results are exact at any thread count, so a concurrent call restoring the count early changes only speed)."""
    libs = [lib for lib in _blas_controller().lib_controllers if lib.user_api == "blas"]
    before = [lib.num_threads for lib in libs]
    for lib in libs:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(libs, before):
            lib.set_num_threads(n)


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries, built once (a scan, or its `limit`, costs ~18 ms a call)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()
