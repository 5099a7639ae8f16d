"""Lossless entropy coding of 8-bit latent symbols with integer probability tables (no torch).

    em = EntropyModel.from_manifest(load_manifest("models/photos-r4"))
    coder_id, payload = em.encode(q)            # q: uint8 (c_y, h, w)
    assert (em.decode(coder_id, payload, q.shape) == q).all()

Each latent channel gets its own categorical model, derived from the integer histogram
of training latents in the manifest (`latent_hist`) by integer arithmetic only, and is
coded with constriction's ANS coder. The tables are integers, so decoding is bit-exact
on every machine (see codec/FORMAT.md, "bit-exactness"). zstandard and plain symbols
are the fallbacks; the coder id says which one a payload uses.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CODER_RAW = 0  # payload = the uint8 symbols, C order (c_y, h, w)
CODER_ZSTD = 1  # payload = zstandard frame of the raw symbols
CODER_ANS = 2  # payload = constriction ANS words (uint32 little-endian), one categorical per channel
CODER_HYPER = 3  # payload = one ANS stream: ẑ under the factorized prior, then ŷ under the hyperprior's scales
CODER_NAMES = {CODER_RAW: "raw", CODER_ZSTD: "zstd", CODER_ANS: "ans-categorical", CODER_HYPER: "ans-hyperprior"}

# constriction's default categorical model works with 24-bit fixed-point probabilities.
PRECISION = 24
ZSTD_MAX_RATIO = 1 << 15  # a zstd frame never decodes to more than 32768 bytes per payload byte
# The zstd trial against ANS. On the rate-distortion models' latents zstd often wins (flat regions give runs of
# one symbol that a context-free prior still charges for): on the 5 held-out photos at the default quality,
# photos-r9's symbols take 62.6 kB under ANS and 59.9 / 55.7 / 51.0 kB under zstd level 3 / 10 / 19, klt-r9's
# 124.9 kB and 89.2 / 80.0 / 71.5 kB. Level 19 runs at about 4 MB of symbols per second on one core
# (~0.03 s per megapixel at 1/9), a tenth of the encoder's time, so bytes win by default.
ZSTD_LEVEL = 19
ZSTD_LEVEL_SMALLEST = 22  # `aekit compress --smallest`: zstd's ultra level, ~1 % smaller again, 1.5x the time


QUANTISER_INTEGER = "integer"  # manifest latent.quantiser of rate-distortion models (else tanh-uniform)
MAX_TABLE_COUNT = 1 << 40  # a table entry above this is not a count any exporter writes


class EntropyError(Exception):
    """A payload that cannot be decoded (corrupt, truncated, or from another model)."""


def quality_entry(manifest: dict[str, Any], quality: int | None = None) -> dict[str, Any]:
    """The manifest["entropy"]["qualities"] entry of `quality` (None: default_quality).

    Raises EntropyError naming the qualities the model has.
    """
    ent = manifest.get("entropy") or {}
    entries = {q.get("quality"): q for q in ent.get("qualities", []) if isinstance(q, dict)}
    q = ent.get("default_quality") if quality is None else quality
    if q not in entries:
        raise EntropyError(f"model {manifest.get('model_id')} has no quality {q} "
                           f"(have: {', '.join(map(str, sorted(entries))) or 'none'})")
    return entries[q]


def rd_counts(manifest: dict[str, Any], quality: int | None = None) -> np.ndarray:
    """Integer counts (c_y, L) of a rate-distortion model's quality, from its trimmed tables.

    The manifest stores, per quality and latent channel, [lo, [n_lo, n_lo+1, ...]]: the
    counts of symbols lo.. (all others 0), as written by aekit.export.onnx from the model's
    learned factorized prior (aekit.entropy_models.FactorizedPrior.integer_pmf).
    """
    levels, cy = int(manifest["latent"]["levels"]), int(manifest["latent_channels"])
    tables = quality_entry(manifest, quality).get("tables")
    if not isinstance(tables, list) or len(tables) != cy:
        raise EntropyError(f"model {manifest.get('model_id')}: entropy tables for {cy} channels expected")
    counts = np.zeros((cy, levels), dtype=np.int64)
    for c, entry in enumerate(tables):
        try:
            lo, vals = int(entry[0]), np.asarray(entry[1], dtype=np.int64)
        except (TypeError, ValueError, IndexError, OverflowError):
            raise EntropyError(f"model {manifest.get('model_id')}: malformed entropy table of channel {c}") from None
        if vals.ndim != 1 or lo < 0 or lo + vals.size > levels or (vals < 0).any() or (vals > MAX_TABLE_COUNT).any():
            raise EntropyError(f"model {manifest.get('model_id')}: entropy table of channel {c} "
                               f"outside symbols 0..{levels - 1} or counts outside 0..2^40")
        counts[c, lo:lo + vals.size] = vals
    return counts


def trim_counts(counts: np.ndarray) -> list[list[Any]]:
    """(c_y, L) counts -> the manifest's [[lo, [counts lo..hi]], ...] (zeros outside dropped)."""
    out = []
    for row in np.asarray(counts, dtype=np.int64):
        nz = np.flatnonzero(row)
        lo, hi = (int(nz[0]), int(nz[-1])) if nz.size else (0, 0)
        out.append([lo, [int(v) for v in row[lo:hi + 1]]])
    return out


def integer_table(counts: np.ndarray, precision: int = PRECISION) -> np.ndarray:
    """Integer histogram (L,) -> integer weights (L,) >= 1 summing to exactly 2**precision.

    Every symbol gets 1, and the remaining 2**precision - L units are shared in
    proportion to the counts by the largest-remainder rule (ties broken by symbol
    index). Python/numpy int64 arithmetic only: identical on every machine.
    """
    counts = np.asarray(counts, dtype=np.int64)
    levels = counts.size
    if counts.ndim != 1 or levels < 2 or (counts < 0).any():
        raise ValueError(f"histogram must be a 1-D array of >= 2 non-negative counts, got shape {counts.shape}")
    free = (1 << precision) - levels
    total = int(counts.sum())
    if total == 0:
        counts, total = np.ones(levels, dtype=np.int64), levels  # no data: uniform
    # Scale down first so counts * free fits in int64 (counts may be large sums).
    if total > (1 << 38):
        shift = total.bit_length() - 38
        counts = counts >> shift
        total = int(counts.sum()) or 1
    share = counts * free // total
    remainder = counts * free % total
    left = free - int(share.sum())
    order = np.lexsort((np.arange(levels), -remainder))  # largest remainder first, then index
    share[order[:left]] += 1
    weights = share + 1
    assert int(weights.sum()) == 1 << precision
    return weights


def rebin(counts: np.ndarray, levels: int) -> np.ndarray:
    """Counts over L0 symbols -> counts over `levels` symbols: s -> round(s (L - 1) / (L0 - 1)).

    Integer arithmetic (round half up), matching where the requantised symbol of a latent
    with L0-level symbol s falls to within one bin.
    """
    base = counts.size
    s = np.arange(base, dtype=np.int64)
    target = (2 * s * (levels - 1) + (base - 1)) // (2 * (base - 1))
    out = np.zeros(levels, dtype=np.int64)
    np.add.at(out, target, counts.astype(np.int64))
    return out


@dataclass
class EntropyModel:
    """Per-channel integer probability tables (c_y, L) and the coders that use them."""

    tables: np.ndarray  # int64 (c_y, L), each row sums to 2**PRECISION, every entry >= 1
    levels: int  # L: symbols are 0..L-1
    _cache: list[Any] | None = field(default=None, repr=False, compare=False)  # constriction models

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], levels: int | None = None,
                      quality: int | None = None) -> "EntropyModel":
        """The tables a model's files are coded with.

        Tanh-latent models: from manifest["latent_hist"] (c_y x L0 counts; uniform if absent);
        levels: code symbols requantised to L < L0 levels, the histogram rebinned by integer
        arithmetic (see rebin), so tables stay exact.
        Rate-distortion models (latent quantiser "integer"): the table set of `quality`
        (default: the manifest's default_quality) from manifest["entropy"] (see rd_counts).
        """
        cy = int(manifest["latent_channels"])
        if (manifest.get("entropy") or {}).get("hyper"):
            return HyperpriorEntropyModel.from_manifest(manifest, quality)  # type: ignore[return-value]
        if manifest["latent"].get("quantiser") == QUANTISER_INTEGER:
            counts = rd_counts(manifest, quality)
            return cls(np.stack([integer_table(c) for c in counts]), counts.shape[1])
        base = int(manifest["latent"]["levels"])
        hist = manifest.get("latent_hist")
        counts = np.ones((cy, base), dtype=np.int64) if not hist else np.asarray(hist, dtype=np.int64)
        if counts.shape != (cy, base):
            raise EntropyError(f"latent_hist has shape {counts.shape}, expected ({cy}, {base})")
        levels = levels or base
        if levels != base:
            counts = np.stack([rebin(c, levels) for c in counts])
        return cls(np.stack([integer_table(c) for c in counts]), levels)

    @property
    def channels(self) -> int:
        return self.tables.shape[0]

    def bits(self, symbols: np.ndarray) -> float:
        """Ideal code length in bits of symbols (c_y, h, w) under the tables."""
        logp = np.log2(self.tables) - PRECISION  # (c_y, L)
        q = symbols.reshape(self.channels, -1).astype(np.int64)
        return float(-np.take_along_axis(logp, q, axis=1).sum())

    def min_bytes(self, n: int) -> int:
        """A lower bound on the ANS payload of n symbols: n times the cheapest symbol's cost.

        No symbol costs less than -log2(max table entry / 2**24) bits, so a valid payload
        cannot be shorter (less 8 bytes of coder state slack); float rounding here only
        loosens the bound by far less than that slack.
        """
        per_channel = n // self.channels
        bits = per_channel * float(sum(PRECISION - np.log2(t.max()) for t in self.tables))
        return max(0, int(bits / 8) - 8)

    def encode(self, symbols: np.ndarray, zstd_level: int = ZSTD_LEVEL) -> tuple[int, bytes]:
        """uint8 (c_y, h, w) -> (coder_id, payload): the smallest of ANS, zstd (at zstd_level) and raw."""
        q = _check_symbols(symbols, self.channels, self.levels)
        return _smallest(q, {CODER_ANS: self._encode_ans}, zstd_level)

    def decode(self, coder_id: int, payload: bytes, shape: tuple[int, int, int]) -> np.ndarray:
        """(coder_id, payload) -> uint8 symbols of shape (c_y, h, w); EntropyError if corrupt."""
        return _decode_symbols({CODER_ANS: self._decode_ans}, coder_id, payload, shape, self.channels, self.levels)

    # -- ANS (constriction) ------------------------------------------------------------

    def _models(self) -> list[Any]:
        """constriction categoricals, one per channel (built once; exact, see integer_table)."""
        if self._cache is None:
            Categorical = _constriction().stream.model.Categorical

            # Weights w_i + 1 = table_i: passing w_i (exact integers, sum 2**24 - L) makes
            # constriction's fast quantiser compute floor(cumsum(w) * 1.0) + i, i.e. exactly
            # our table, with no rounding anywhere (all values are integers < 2**53).
            self._cache = [Categorical((t - 1).astype(np.float64), perfect=False) for t in self.tables]
        return self._cache

    def _encode_ans(self, q: np.ndarray) -> bytes:
        models, coder = self._models(), _constriction().stream.stack.AnsCoder()
        flat = q.reshape(self.channels, -1).astype(np.int32)
        for c in reversed(range(self.channels)):  # a stack: encode last channel first
            coder.encode_reverse(flat[c], models[c])
        return coder.get_compressed().astype("<u4").tobytes()

    def _decode_ans(self, payload: bytes, n: int) -> np.ndarray:
        AnsCoder = _constriction().stream.stack.AnsCoder
        if len(payload) % 4:  # (an empty payload is valid: near-certain symbols cost under a word)
            raise EntropyError(f"ANS payload of {len(payload)} bytes is not a whole number of 32-bit words")
        if len(payload) < self.min_bytes(n):  # a forged tiny file announcing a huge latent
            raise EntropyError(f"ANS payload of {len(payload)} bytes is too short to hold {n} symbols "
                               f"(at least {self.min_bytes(n)} bytes under this model)")
        words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        models, per = self._models(), n // self.channels
        try:
            coder = AnsCoder(words)
            out = np.concatenate([coder.decode(models[c], per) for c in range(self.channels)])
        except (ValueError, RuntimeError, OverflowError) as e:
            raise EntropyError(f"corrupt ANS payload ({e})") from None
        if not coder.is_empty():  # a clean stream ends exactly where encoding started
            raise EntropyError("corrupt ANS payload (data left over after the last symbol)")
        return out.astype(np.uint8)


# -- the scale hyperprior (Ballé et al. 2018): integer hyper decoder and its coder -------------------

HYPER_FRAC_BITS = 16  # F_a: hyper decoder activations are integers in units of 2^-16
HYPER_ACT_BITS = 26  # activations are clamped to 0 .. 2^26 - 1 (1024 in real units) after each ReLU
EXACT_BITS = 53  # float64 holds every integer below 2^53 exactly
CHUNK_BYTES = 32 << 20  # the integer hyper decoder's im2col block per matrix product (bounds its memory)
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

        rows: output rows per matrix product (0: as many as keep its im2col block near CHUNK_BYTES);
        activations between layers are held as int32 (they are below 2^26). A transposed conv of
        stride s runs as s² stride-1 convs, one per output phase, on the input itself."""
        a = (z_sym.astype(np.int32) - 127) << HYPER_FRAC_BITS
        cap = (1 << HYPER_ACT_BITS) - 1
        for i, (kind, stride, pad, out_pad, shift, bias, parts, k) in enumerate(self.layers):
            last = i == len(self.layers) - 1
            if kind == "conv":
                out_h, out_w = a.shape[1] + 2 * pad - k + 1, a.shape[2] + 2 * pad - k + 1
            else:
                out_h, out_w = [(n - 1) * stride - 2 * pad + k + out_pad for n in a.shape[1:]]
            if last:  # a conv (checked): stream its row blocks
                out_h, out_w = min(out_h, h), min(out_w, w)
                yield from _conv_blocks(a, parts[0], bias, out_h, out_w, rows)
                return
            nxt = np.empty((bias.size, out_h, out_w), dtype=np.int32)
            half = float(1 << shift >> 1)  # round half up: floor((acc + 2^(s-1)) / 2^s)
            for part in parts:
                ty, tx = part[0], part[1]
                ph, pw = len(range(ty, out_h, stride)), len(range(tx, out_w, stride))
                dst = nxt[:, ty::stride, tx::stride] if kind == "conv_transpose" else nxt
                for r0, acc in _conv_blocks(a, part, bias, ph, pw, rows):
                    dst[:, r0:r0 + acc.shape[1]] = np.minimum(np.floor((np.maximum(acc, 0) + half) / float(1 << shift)),
                                                               cap).astype(np.int32)
            a = nxt

    @property
    def frac_bits(self) -> int:
        """F = s + F_a of the last layer: its accumulator is μ and ln σ in units of 2^-F."""
        return self.layers[-1][4] + HYPER_FRAC_BITS

    def tables(self, z_sym: np.ndarray, h: int, w: int, thresholds: np.ndarray,
               step4: int) -> tuple[np.ndarray, np.ndarray]:
        """See _tables; BLAS limited to one thread (codec workers run one thread each, issue 17; the result
        is exact at any thread count, so a concurrent call restoring the count early changes only speed)."""
        libs = [lib for lib in _blas_controller().lib_controllers if lib.user_api == "blas"]
        before = [lib.num_threads for lib in libs]
        for lib in libs:
            lib.set_num_threads(1)
        try:
            return self._tables(z_sym, h, w, thresholds, step4)
        finally:
            for lib, n in zip(libs, before):
                lib.set_num_threads(n)

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
                step4: int, band: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ẑ (c_z, ceil(h/4), ceil(w/4)) -> (table, base), each (c_y, h, w).

        Scale index j = #{k: acc_σ > T_k} (the smallest table scale ≥ σ); the mean in quarter steps
        m = floor((16·acc_μ + D·2^(F−1)) / (D·2^F)) = round(4μ/Δ) (D = 4Δ, an integer; int64 floor
        division); base = clip(floor(m / 4), −127, 127) and table = 4j + (m mod 4) (uint8, 0..255).
        Computed in bands of `band` z rows (0: HYPER_S_BAND_POSITIONS y positions) with `halo` rows of
        context each side: the same integers as one pass, with memory bounded by the band.
        """
        t = np.asarray(thresholds, dtype=np.float64)  # integers < 2^53: exact in float64
        f = self.frac_bits
        cy = self.layers[-1][5].size // 2
        table, base = np.empty((cy, h, w), dtype=np.uint8), np.empty((cy, h, w), dtype=np.int16)
        zh = z_sym.shape[1]
        band = band or max(1, HYPER_S_BAND_POSITIONS // (Z_FACTOR * w))
        for z0 in range(0, zh, band):
            z1 = min(zh, z0 + band)
            s0, s1 = max(0, z0 - self.halo), min(zh, z1 + self.halo)
            y0, y1 = Z_FACTOR * z0, min(h, Z_FACTOR * z1)  # this band's rows of y
            off = Z_FACTOR * s0
            for r0, acc in self.outputs(z_sym[:, s0:s1], min(h, Z_FACTOR * s1) - off, w):
                a0, a1 = max(off + r0, y0), min(off + r0 + acc.shape[1], y1)
                if a1 <= a0:
                    continue
                acc = acc[:, a0 - off - r0:a1 - off - r0]
                j = np.searchsorted(t, acc[cy:], side="left")
                m4 = (16 * acc[:cy].astype(np.int64) + (step4 << (f - 1))) // (step4 << f)
                table[:, a0:a1] = 4 * j + (m4 & 3)
                base[:, a0:a1] = np.clip(m4 >> 2, -127, 127)
        return table, base


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
    _cache: dict[str, list[Any]] = field(default_factory=dict, repr=False, compare=False)

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
        return cls(float(entry["step"]), levels, np.stack([integer_table(c) for c in scale]),
                   np.stack([integer_table(c) for c in z]), thresholds, step4,
                   IntegerHyperDecoder(hyper["layers"], arrays), folder / Path(hyper["encoder"]).name,
                   int(manifest["latent_channels"]))

    def z_shape(self, h: int, w: int) -> tuple[int, int, int]:
        return (self.z_tables.shape[0], -(-h // Z_FACTOR), -(-w // Z_FACTOR))

    def hyper_symbols(self, q: np.ndarray, band: int = 0) -> np.ndarray:
        """uint8 ŷ symbols (c_y, h, w) -> uint8 ẑ symbols (c_z, ceil(h/4), ceil(w/4)) (onnxruntime).

        ŷ is zero-padded to a multiple of 4, as in training. Large latents run in bands of `band` z rows
        (0: HYPER_A_BAND_POSITIONS y positions) with HYPER_A_HALO_Z rows of context each side, so memory
        stays bounded; ẑ is stored in the file, so a band's float rounding can never break decoding."""
        from aekit.export.runtime import cached_session, select_providers

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
        return out

    def bits(self, symbols: np.ndarray) -> float:
        """Ideal code length in bits of ŷ symbols (c_y, h, w) and their ẑ under the tables."""
        z = self.hyper_symbols(symbols)
        table, d = self._coded(symbols, z)
        ly, lz = np.log2(self.scale_tables) - PRECISION, np.log2(self.z_tables) - PRECISION
        return float(-ly[table, d].sum()
                     - np.take_along_axis(lz, z.reshape(z.shape[0], -1).astype(np.int64), axis=1).sum())

    def encode(self, symbols: np.ndarray, zstd_level: int = ZSTD_LEVEL) -> tuple[int, bytes]:
        """uint8 (c_y, h, w) -> (coder_id, payload): the smallest of the hyperprior's ANS, zstd and raw."""
        q = _check_symbols(symbols, self.channels, self.levels)
        return _smallest(q, {CODER_HYPER: self._encode_hyper}, zstd_level)

    def decode(self, coder_id: int, payload: bytes, shape: tuple[int, int, int]) -> np.ndarray:
        """(coder_id, payload) -> uint8 ŷ symbols (c_y, h, w); EntropyError if corrupt."""
        own = {CODER_HYPER: lambda data, n: self._decode_hyper(data, tuple(int(v) for v in shape)).ravel()}
        return _decode_symbols(own, coder_id, payload, shape, self.channels, self.levels)

    def _models(self, which: str) -> list[Any]:
        if which not in self._cache:
            Categorical = _constriction().stream.model.Categorical
            tables = self.scale_tables if which == "y" else self.z_tables
            self._cache[which] = [Categorical((t - 1).astype(np.float64), perfect=False) for t in tables]
        return self._cache[which]

    def _coded(self, q: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ŷ symbols (c_y, h, w) and their ẑ -> flat (table, d) with d = (q − 127) − base + 254 (0..508)."""
        table, base = self.decoder.tables(z, q.shape[1], q.shape[2], self.thresholds, self.step4)
        half = (self.levels - 1) // 2
        return table.ravel(), (q.ravel().astype(np.int32) - half - base.ravel() + 2 * half)

    def _encode_hyper(self, q: np.ndarray) -> bytes:
        z = self.hyper_symbols(q)
        table, base = self.decoder.tables(z, q.shape[1], q.shape[2], self.thresholds, self.step4)
        idx, qf, bf = table.ravel(), q.ravel(), base.ravel()
        half = (self.levels - 1) // 2
        start = _group_starts(idx, 256)
        grouped = np.empty(idx.size, dtype=np.int16)  # d = (q − 127) − base + 254 (0..508), grouped by table
        for a, o, dest in _group_chunks(idx, start):
            grouped[dest] = (qf[a:a + o.size].astype(np.int16) - base_off(bf[a:a + o.size], half))[o]
        coder = _constriction().stream.stack.AnsCoder()
        ym, zm = self._models("y"), self._models("z")
        for k in reversed(range(len(ym))):  # a stack: the last group pushed first
            if start[k + 1] > start[k]:
                coder.encode_reverse(grouped[start[k]:start[k + 1]].astype(np.int32), ym[k])
        zf = z.reshape(z.shape[0], -1).astype(np.int32)
        for c in reversed(range(z.shape[0])):  # ẑ last, so the decoder pops it first
            coder.encode_reverse(zf[c], zm[c])
        return coder.get_compressed().astype("<u4").tobytes()

    def _decode_hyper(self, payload: bytes, shape: tuple[int, int, int]) -> np.ndarray:
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
            idx, bf = table.ravel(), base.ravel()
            start = _group_starts(idx, len(ym))
            grouped = np.empty(idx.size, dtype=np.int16)
            for k in range(len(ym)):
                if start[k + 1] > start[k]:
                    grouped[start[k]:start[k + 1]] = coder.decode(ym[k], int(start[k + 1] - start[k]))
        except (ValueError, RuntimeError, OverflowError) as e:
            raise EntropyError(f"corrupt ANS payload ({e})") from None
        if not coder.is_empty():
            raise EntropyError("corrupt ANS payload (data left over after the last symbol)")
        half = (self.levels - 1) // 2
        q = np.empty(idx.size, dtype=np.uint8)
        for a, o, dest in _group_chunks(idx, start):
            d = np.empty(o.size, dtype=np.int16)
            d[o] = grouped[dest]
            k = d + base_off(bf[a:a + o.size], half)  # q = d − 254 + base + 127
            if k.min(initial=0) < 0 or k.max(initial=0) >= self.levels:
                raise EntropyError(f"decoded symbol outside 0..{self.levels - 1} (corrupt payload)")
            q[a:a + o.size] = k
        return q.reshape(cy, h, w)


def base_off(base: np.ndarray, half: int) -> np.ndarray:
    """int16 base -> q − d offset: q = d − 2·half + base + half = d + (base − half)."""
    return base.astype(np.int16) - np.int16(half)


GROUP_CHUNK = 1 << 20  # elements per step of the grouping by table (bounds its int64 temporaries: 8 MiB)


def _group_starts(idx: np.ndarray, n: int) -> np.ndarray:
    """uint8 table index per element (flat) -> int64 (n + 1,) start of each table's group in grouped order."""
    counts = np.zeros(n, dtype=np.int64)
    for a in range(0, idx.size, GROUP_CHUNK):
        counts += np.bincount(idx[a:a + GROUP_CHUNK], minlength=n)[:n]
    return np.concatenate([[0], np.cumsum(counts)])


def _group_chunks(idx: np.ndarray, start: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """The stable sort of idx by table (elements grouped by table, C order within a group: the coder-3
    order of codec/FORMAT.md) as a counting sort in chunks of GROUP_CHUNK: yields (a, o, dest) — the
    chunk's element a + o[i] goes to grouped position dest[i]. Memory: a few arrays of one chunk."""
    nxt = start[:-1].copy()
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
    """int weights (out, in, kh, kw) -> float64 (in·kh·kw, out), the im2col product's right side."""
    return w.reshape(w.shape[0], -1).T.astype(np.float64)


def _conv_blocks(a: np.ndarray, part: tuple, bias: np.ndarray, out_h: int, out_w: int,
                 rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """Stride-1 correlation of a (C, H, W) int array with part's kernel, the window of output (m, n) starting
    at input (m + lo_y, n + lo_x) (zeros outside a): (row, acc) blocks of float64 integers (out, r, out_w)."""
    _, _, wmat, (kh, kw), (lo_y, lo_x) = part
    c, hh, ww = a.shape
    need_h, need_w = out_h + kh - 1, out_w + kw - 1  # the input window [lo, lo + need)
    src = np.zeros((c, need_h, need_w), dtype=a.dtype)
    ys, xs = max(0, lo_y), max(0, lo_x)
    ye, xe = min(hh, lo_y + need_h), min(ww, lo_x + need_w)
    if ye > ys and xe > xs:
        src[:, ys - lo_y:ye - lo_y, xs - lo_x:xe - lo_x] = a[:, ys:ye, xs:xe]
    step = rows or max(1, CHUNK_BYTES // (8 * out_w * wmat.shape[0]))
    for r0 in range(0, out_h, step):
        r1 = min(out_h, r0 + step)
        win = np.lib.stride_tricks.sliding_window_view(src[:, r0:r1 + kh - 1], (kh, kw), axis=(1, 2))
        cols = win.transpose(1, 2, 0, 3, 4).reshape((r1 - r0) * out_w, -1).astype(np.float64)
        yield r0, (cols @ wmat + bias).T.reshape(-1, r1 - r0, out_w)  # exact: integers < 2^53


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries, built once (a scan, or its `limit`, costs ~18 ms a call)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _untrim(trimmed: list[Any], levels: int) -> np.ndarray:
    """The manifest's [[lo, [counts lo..hi]], ...] -> int64 counts (n, levels); ValueError if malformed."""
    out = np.zeros((len(trimmed), levels), dtype=np.int64)
    for i, (lo, vals) in enumerate(trimmed):
        vals = np.asarray(vals, dtype=np.int64)
        if vals.ndim != 1 or int(lo) < 0 or int(lo) + vals.size > levels or (vals < 0).any() or (vals > MAX_TABLE_COUNT).any():
            raise ValueError(f"table {i} outside symbols 0..{levels - 1}")
        out[i, int(lo):int(lo) + vals.size] = vals
    return out


def _check_symbols(symbols: np.ndarray, channels: int, levels: int) -> np.ndarray:
    """uint8 symbols (channels, h, w) below `levels`, C-contiguous; ValueError otherwise."""
    q = np.ascontiguousarray(symbols)
    if q.dtype != np.uint8 or q.ndim != 3 or q.shape[0] != channels:
        raise ValueError(f"expected uint8 symbols ({channels}, h, w), got {q.dtype} {q.shape}")
    if q.size and q.max() >= levels:
        raise ValueError(f"symbol {int(q.max())} outside 0..{levels - 1}")
    return q


def _smallest(q: np.ndarray, own: dict[int, Any], zstd_level: int) -> tuple[int, bytes]:
    """(coder_id, payload): the smallest of the model's own coders (`own`: id -> fn(q) -> bytes), zstd at
    zstd_level and the raw symbols; a coder whose package is not installed is skipped."""
    raw = q.tobytes()
    best = (CODER_RAW, raw)
    for coder_id, fn in (*own.items(), (CODER_ZSTD, lambda _: _zstd_compress(raw, zstd_level))):
        try:
            payload = fn(q)
        except ImportError:
            continue  # optional coder not installed: the others still work
        if len(payload) < len(best[1]):
            best = (coder_id, payload)
    return best


def _decode_symbols(own: dict[int, Any], coder_id: int, payload: bytes, shape: tuple[int, int, int],
                    channels: int, levels: int) -> np.ndarray:
    """Raw and zstd payloads, or the model's own coders (`own`: coder id -> fn(payload, n) -> flat symbols),
    -> uint8 symbols (c_y, h, w) below `levels`; EntropyError for a wrong shape, unknown coder or corrupt data."""
    cy, h, w = (int(s) for s in shape)
    if cy != channels or h < 1 or w < 1:
        raise EntropyError(f"latent shape {shape} does not fit this model ({channels} channels)")
    n = cy * h * w
    if coder_id == CODER_RAW:
        if len(payload) != n:
            raise EntropyError(f"raw payload has {len(payload)} bytes, expected {n}")
        q = np.frombuffer(payload, dtype=np.uint8)
    elif coder_id == CODER_ZSTD:
        q = np.frombuffer(_zstd_decompress(payload, n), dtype=np.uint8)
    elif coder_id in own:
        try:
            q = own[coder_id](payload, n)
        except ImportError as e:
            raise EntropyError(str(e)) from None
    else:
        known = {k: CODER_NAMES[k] for k in (CODER_RAW, CODER_ZSTD, *own)}
        raise EntropyError(f"unknown entropy coder id {coder_id} for this model (known: {known})")
    q = q.reshape(cy, h, w)
    if q.max(initial=0) >= levels:
        raise EntropyError(f"decoded symbol {int(q.max())} outside 0..{levels - 1}")
    return q


def _constriction() -> Any:
    """The constriction module (its submodules are attributes, not importable modules)."""
    try:
        import constriction
    except ImportError as e:
        raise ImportError(f"the ANS coder needs the constriction package ({e}); pip install constriction") from None
    return constriction


def _zstd_compress(raw: bytes, level: int = ZSTD_LEVEL) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False).compress(raw)


def _zstd_decompress(payload: bytes, n: int) -> bytes:
    import zstandard

    if len(payload) * ZSTD_MAX_RATIO < n:  # no zstd frame expands more (4-byte RLE blocks of 128 KiB)
        raise EntropyError(f"zstd payload of {len(payload)} bytes is too short to hold {n} symbols "
                           f"(at least {-(-n // ZSTD_MAX_RATIO)} bytes)")
    try:
        # The frame must declare its size, and it must be n: a forged size never gets allocated.
        size = zstandard.get_frame_parameters(payload).content_size
        if size != n:
            raise EntropyError(f"zstd frame declares {size} bytes, expected {n}")
        out = zstandard.ZstdDecompressor().decompress(payload, max_output_size=n)
    except zstandard.ZstdError as e:
        raise EntropyError(f"corrupt zstd payload ({e})") from None
    if len(out) != n:
        raise EntropyError(f"zstd payload holds {len(out)} bytes, expected {n}")
    return out
