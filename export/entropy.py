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

import os

from dataclasses import dataclass, field
from typing import Any

import numpy as np

CODER_RAW = 0  # payload = the uint8 symbols, C order (c_y, h, w)
CODER_ZSTD = 1  # payload = zstandard frame of the raw symbols
CODER_ANS = 2  # payload = constriction ANS words (uint32 little-endian), one categorical per channel
CODER_HYPER = 3  # payload = one ANS stream: ẑ under the factorized prior, then ŷ under the hyperprior's scales
CODER_HYPER_OFFSETS = 4  # payload = per-channel offsets of the hyperprior's mean, then coder 3's stream under them
CODER_HYPER_CONTEXT = 5  # payload = coder 4's offsets, spatial context shifts, then a three-pass stream
CODER_CHANNEL_CONTEXT = 6  # payload = the channel context's id, then ẑ and ŷ slice by slice under its tables
CODER_SPATIAL = 7  # payload = coder 4's offsets, the spatial prediction's parameters, then a four-pass stream
CODER_CHANNEL_SPATIAL = 8  # payload = coder 6's id and offsets, coder 7's parameters, then each slice in four passes
CODER_NAMES = {CODER_RAW: "raw", CODER_ZSTD: "zstd", CODER_ANS: "ans-categorical", CODER_HYPER: "ans-hyperprior",
               CODER_HYPER_OFFSETS: "ans-hyperprior-offsets", CODER_HYPER_CONTEXT: "ans-hyperprior-context",
               CODER_CHANNEL_CONTEXT: "ans-channel-context", CODER_SPATIAL: "ans-hyperprior-spatial",
               CODER_CHANNEL_SPATIAL: "ans-channel-spatial"}

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
# The level-ZSTD_LEVEL trial runs only where a level-ZSTD_PROBE_LEVEL frame (~0.1 ms at 512²) is within
# ZSTD_GATE x the model's own coder: on the three photo models' latents (21 photos x 12 qualities, 512²
# crops) level 3 was never more than 1.67x level 19, and a gate of 1.4 skipped 29-65 % of the level-19
# trials (about 5 ms each at 512², 7 % of an int8 compress) for 0.001 % more bytes in all. `--smallest`
# always runs the trial.
ZSTD_PROBE_LEVEL = 3
ZSTD_GATE = 1.4


# Rate-distortion optimised quantisation (RDOQ), an encoder-only choice: the format, the tables and the
# decoder are unchanged, so every reader decodes the files. Rounding y/Δ to the nearest integer k minimises
# the latent's squared error but not λ·D + R: a k one step toward its table's most probable value costs
# dD = 1 + 2·s·δ more squared error (in Δ² units; δ = y/Δ − k, s = sign(k − mode)) and saves dR bits, so it
# is kept where dD < t·dR. t is the price of a bit in Δ²: high-rate theory puts the slope of an
# entropy-coded uniform quantiser at ln 2/6 ≈ 0.12; with t = 0.03 each shipped photo model's curve on the 5
# held-out photos is 5-7 % BD-rate below its plain rounding (0.4-2 % from quality 7 up), and on training
# photos 0.03 stays within 0.05 dB of photos-r4's best t from quality 7 up (larger t lose there; codec/RESULTS.md).
# The same rule as RDOQ in H.264/HEVC encoders (Karczewicz et al., "Rate distortion optimized
# quantization", VCEG-AH21, 2008).
RDOQ_T = 0.03
RDOQ_MAX_SYMBOLS = 1 << 22  # latents with more symbols are rounded plainly (their δ would cost 1 B each)
RESIDUAL_SCALE = 254  # δ = y/Δ − k in [−0.5, 0.5] is carried as int8 round(254·δ)


def rdoq_choose(k: np.ndarray, toward: np.ndarray, saved: np.ndarray, residual: np.ndarray, t: float) -> np.ndarray:
    """RDOQ's choice per element (any shape, all the same): int16 symbols k (rounded), int16 candidates `toward`
    (k − s, one step toward the table's most probable value; = k where there is none), float bits `saved` by
    the candidate, int8 residual round(254·δ) with δ = y/Δ − k, price t (Δ² per bit) -> int16 symbols: the
    candidate where it saves bits and adds dD = 1 + 2·s·δ < t·saved, else k. Deterministic."""
    s = (k - toward).astype(np.float32)
    dd = 1 + 2 * s * residual.astype(np.float32) / RESIDUAL_SCALE
    flip = (s != 0) & (saved > 0) & (dd < np.float32(t) * saved)
    return np.where(flip, toward, k).astype(np.int16)


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
        where = f" ({os.path.basename(str(manifest['_dir']))})" if manifest.get("_dir") else ""
        raise EntropyError(f"model {manifest.get('model_id')}{where} has no quality {q} "
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
            from aekit.export.hyperprior import HyperpriorEntropyModel

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

    def rdoq(self, symbols: np.ndarray, residual: np.ndarray, t: float = RDOQ_T) -> np.ndarray:
        """uint8 symbols (c_y, h, w) of a rate-distortion model and their int8 residuals (see rdoq_choose) ->
        uint8 symbols after RDOQ toward each channel's most probable symbol (its table's largest entry)."""
        c = self.channels
        q = symbols.reshape(c, -1).astype(np.int16)
        mode = self.tables.argmax(axis=1).astype(np.int16)[:, None]
        toward = np.clip(q - np.sign(q - mode), 0, self.levels - 1).astype(np.int16)
        logp = np.log2(self.tables) - PRECISION
        saved = (np.take_along_axis(logp, toward.astype(np.int64), axis=1)
                 - np.take_along_axis(logp, q.astype(np.int64), axis=1))
        out = rdoq_choose(q, toward, saved, residual.reshape(c, -1), t)
        return out.reshape(symbols.shape).astype(np.uint8)

    def min_bytes(self, n: int) -> int:
        """A lower bound on the ANS payload of n symbols: n times the cheapest symbol's cost.

        No symbol costs less than -log2(max table entry / 2**24) bits, so a valid payload
        cannot be shorter (less 8 bytes of coder state slack); float rounding here only
        loosens the bound by far less than that slack.
        """
        per_channel = n // self.channels
        bits = per_channel * float(sum(PRECISION - np.log2(t.max()) for t in self.tables))
        return max(0, int(bits / 8) - 8)

    def encode(self, symbols: np.ndarray, zstd_level: int = ZSTD_LEVEL,
               zstd_gate: float | None = ZSTD_GATE) -> tuple[int, bytes]:
        """uint8 (c_y, h, w) -> (coder_id, payload): the smallest of ANS, zstd (at zstd_level; see _smallest
        for zstd_gate) and raw."""
        q = _check_symbols(symbols, self.channels, self.levels)
        return _smallest(q, {CODER_ANS: self._encode_ans}, zstd_level, zstd_gate)

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


def _smallest(q: np.ndarray, own: dict[int, Any], zstd_level: int,
              zstd_gate: float | None = ZSTD_GATE) -> tuple[int, bytes]:
    """(coder_id, payload): the smallest of the model's own coders (`own`: id -> fn(q) -> bytes), zstd and the
    raw symbols; a coder whose package is not installed is skipped. zstd runs at zstd_level, unless zstd_gate
    (>= 1) is set, an own coder beat raw, and a quick level-ZSTD_PROBE_LEVEL frame is over zstd_gate x its
    payload: then the probe frame is the zstd candidate (it loses to the own coder, and the full level
    would have to be more than zstd_gate x smaller than it to win). ValueError for a gate below 1."""
    if zstd_gate is not None and not zstd_gate >= 1:
        raise ValueError(f"zstd_gate {zstd_gate} is below 1: the probe frame could then be kept over a smaller one")
    raw = q.tobytes()
    best = (CODER_RAW, raw)
    for coder_id, fn in own.items():
        try:
            payload = fn(q)
        except ImportError:
            continue  # optional coder not installed: the others still work
        if len(payload) < len(best[1]):
            best = (coder_id, payload)
    try:
        z = None
        if zstd_gate is not None and best[0] != CODER_RAW:
            z = _zstd_compress(raw, ZSTD_PROBE_LEVEL)
            if len(z) <= zstd_gate * len(best[1]):
                z = None  # close enough to be worth the full trial
        z = z if z is not None else _zstd_compress(raw, zstd_level)
    except ImportError:
        return best
    return (CODER_ZSTD, z) if len(z) < len(best[1]) else best


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
