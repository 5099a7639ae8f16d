"""The latent file format (.ael), version 8 (reads 1 to 7 too): pack and parse, nothing else (no torch, no ONNX).

Byte layout, checks and the bit-exactness contract are documented in codec/FORMAT.md;
`parse` is the only reader and refuses anything that is not a well-formed file with one
LatentFormatError naming the file and the problem.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from aekit.export.entropy import (CODER_CHANNEL_CONTEXT, CODER_CHANNEL_SPATIAL, CODER_HYPER, CODER_HYPER_CONTEXT,
                                  CODER_HYPER_OFFSETS, CODER_NAMES, CODER_SPATIAL)

MAGIC = b"\x89AEL"  # high bit first: never valid text, like PNG's signature
VERSION = 8  # the newest version, written for files with a post-filter; each file is written at the lowest version it allows
READ_VERSIONS = (1, 2, 3, 4, 5, 6, 7, 8)  # 2 = 1 + a quality byte; 3 = 2 + coder 3 (hyperprior); 4 = 3 + coder 4 (mean offsets);
# 5 = 4 + coder 5 (spatial context); 6 = 5 + coder 6 (channel context); 7 = 6 + coders 7 and 8 (spatial prediction);
# 8 = 7 + the post-filter block (flag bit 1)
SUFFIX = ".ael"
MODES = {0: "L", 1: "RGB"}  # stored image mode -> PIL mode
MODE_CODES = {v: k for k, v in MODES.items()}
QUANT_TANH_UNIFORM = 1  # y in [-1, 1]; q = round((y + 1) * (L - 1) / 2); y_hat = q * 2 / (L - 1) - 1
QUANT_INTEGER = 2  # RD models: q = clip(round(y / step), -h, h) + h, h = (L - 1) // 2; step from the quality
QUANTISERS = (QUANT_TANH_UNIFORM, QUANT_INTEGER)
KNOWN_FLAGS = 0x03  # bit 0: encoded in overlapping tiles (informational; the latent is one map); bit 1: post-filter
FLAG_TILED = 0x01
FLAG_FILTER = 0x02  # version 8: the payload starts with a post-filter block (codec/postfilter.py)
MAX_DIM = 1 << 20  # pixels per side; far above any real image, far below overflow
MAX_PIXELS = 1 << 31  # height * width accepted by the parser (decoders apply their own limit)
MAX_VARINT_BYTES = 5  # unsigned LEB128 of values < 2**35


class LatentFormatError(Exception):
    """A latent file that is truncated, corrupt, foreign or of an unknown version."""


@dataclass(frozen=True)
class LatentHeader:
    model_id: str  # 16 hex digits (aekit.export.manifest.model_id_of)
    height: int  # original image height in pixels
    width: int  # original image width in pixels
    mode: str  # original image mode, restored on decode: "L" or "RGB"
    factor: int  # model down-sampling factor f
    latent_shape: tuple[int, int, int]  # (c_y, ceil(H/f), ceil(W/f))
    levels: int  # quantisation levels L (symbols 0..L-1)
    quantiser: int = QUANT_TANH_UNIFORM
    coder: int = 0  # aekit.export.entropy.CODER_* id
    flags: int = 0
    quality: int = 0  # QUANT_INTEGER: the model's quality (table set and step) used; 0 for tanh models
    post_filter: bytes = b""  # version 8: the post-filter block (codec/postfilter.PostFilter.to_bytes), b"" for none

    @property
    def n_symbols(self) -> int:
        c, h, w = self.latent_shape
        return c * h * w


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def version_for(coder: int, post_filter: bool = False) -> int:
    """The version a file with this coder is written as: 7 for the spatial-prediction coders 7 and 8, 6 for the
    channel-context coder, 5 for the hyperprior
    coder with spatial context,
    4 for the hyperprior coder with mean offsets, 3 for the hyperprior coder, else 2 (so older readers keep
    reading every file their coders can); 8 for any file with a post-filter."""
    if post_filter:
        return 8
    return {CODER_SPATIAL: 7, CODER_CHANNEL_SPATIAL: 7, CODER_CHANNEL_CONTEXT: 6, CODER_HYPER_CONTEXT: 5,
            CODER_HYPER_OFFSETS: 4, CODER_HYPER: 3}.get(coder, 2)


def pack(h: LatentHeader, payload: bytes) -> bytes:
    """Header + payload -> file bytes (CRC-32 over everything before it and the payload).

    The writer checks the header with the reader's own rules first, so nothing is written
    that `parse` would refuse (LatentFormatError naming "<header>" and the problem).
    """
    c, lh, lw = h.latent_shape
    r = _Reader(b"", "<header>")
    if h.mode not in MODE_CODES or not (0 <= h.quality <= 255 and 0 <= h.factor <= 255 and 0 <= c <= 255):
        raise r.fail(f"mode {h.mode!r}, quality {h.quality}, factor {h.factor} or channels {c} not storable")
    _check_fields(r, h.height, h.width, MODE_CODES[h.mode], h.factor, c, lh, lw, h.levels, h.quantiser,
                  h.coder, h.flags)
    if (h.quantiser == QUANT_INTEGER) != (h.quality > 0):
        raise r.fail(f"quality {h.quality} does not fit quantiser {h.quantiser}")
    flags = (h.flags & ~FLAG_FILTER) | (FLAG_FILTER if h.post_filter else 0)
    if h.post_filter:
        _split_filter(r, h.post_filter)  # a well-formed block, nothing after it
    payload = h.post_filter + payload
    head = b"".join([
        MAGIC, bytes([version_for(h.coder, bool(h.post_filter))]), bytes.fromhex(h.model_id),
        _varint(h.height), _varint(h.width),
        bytes([MODE_CODES[h.mode], h.factor, c]), _varint(lh), _varint(lw),
        _varint(h.levels), bytes([h.quantiser, h.quality, h.coder, flags]), _varint(len(payload)),
    ])
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + crc.to_bytes(4, "little") + payload


class _Reader:
    """Bounds-checked cursor over the file bytes."""

    def __init__(self, data: bytes, name: str):
        self.data, self.pos, self.name = data, 0, name

    def fail(self, what: str) -> LatentFormatError:
        return LatentFormatError(f"{self.name}: {what}")

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail(f"truncated file ({len(self.data)} bytes) while reading the {what}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def varint(self, what: str) -> int:
        n = 0
        for i in range(MAX_VARINT_BYTES):
            b = self.u8(what)
            n |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                return n
        raise self.fail(f"malformed {what} (varint longer than {MAX_VARINT_BYTES} bytes)")


def parse(data: bytes, name: str = "<bytes>") -> tuple[LatentHeader, bytes]:
    """File bytes -> (header, payload); LatentFormatError naming `name` on any problem."""
    r = _Reader(bytes(data), name)
    magic = r.take(len(MAGIC), "magic")
    if magic != MAGIC:
        raise r.fail(f"not an aekit latent file (magic {magic!r}, expected {MAGIC!r})")
    version = r.u8("format version")
    if version not in READ_VERSIONS:
        newer = version > max(READ_VERSIONS)
        raise r.fail(f"latent format version {version} is not supported (this aekit reads versions "
                     f"{', '.join(map(str, READ_VERSIONS))}; "
                     + ("a newer aekit's file, or a corrupt header)" if newer else "a corrupt header)"))
    model_id = r.take(8, "model id").hex()
    height, width = r.varint("image height"), r.varint("image width")
    mode_code, factor, c = r.u8("image mode"), r.u8("factor"), r.u8("latent channels")
    lh, lw = r.varint("latent height"), r.varint("latent width")
    levels = r.varint("quantisation levels")
    quantiser = r.u8("quantiser id")
    quality = r.u8("quality") if version >= 2 else 0
    coder, flags = r.u8("entropy coder id"), r.u8("flags")
    n_payload = r.varint("payload length")
    crc_at = r.pos
    crc = int.from_bytes(r.take(4, "checksum"), "little")
    payload = r.take(n_payload, "payload") if n_payload <= len(r.data) - r.pos else None
    if payload is None:
        raise r.fail(f"truncated file: header announces a {n_payload}-byte payload, "
                     f"{len(r.data) - r.pos} bytes follow")
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} unexpected bytes after the payload")
    if zlib.crc32(payload, zlib.crc32(r.data[:crc_at])) != crc:
        raise r.fail("checksum mismatch (file corrupted)")
    _check_fields(r, height, width, mode_code, factor, c, lh, lw, levels, quantiser, coder, flags)
    if coder in (CODER_HYPER, CODER_HYPER_OFFSETS, CODER_HYPER_CONTEXT, CODER_CHANNEL_CONTEXT, CODER_SPATIAL,
                 CODER_CHANNEL_SPATIAL) and \
            (version < version_for(coder) or quantiser != QUANT_INTEGER):
        raise r.fail(f"entropy coder {coder} needs format version {version_for(coder)} and the integer quantiser")
    if (quantiser == QUANT_INTEGER) != (quality > 0):
        raise r.fail(f"quality {quality} does not fit quantiser {quantiser} (integer quantiser needs quality >= 1)")
    block = b""
    if flags & FLAG_FILTER:
        if version < 8:
            raise r.fail(f"post-filter flag in a version-{version} file (the post-filter needs version 8)")
        used = _split_filter(r, payload, whole=False)
        block, payload = payload[:used], payload[used:]
    header = LatentHeader(model_id, height, width, MODES[mode_code], factor, (c, lh, lw), levels,
                          quantiser, coder, flags, quality, block)
    return header, payload


def _split_filter(r: _Reader, data: bytes, whole: bool = True) -> int:
    """Bytes the post-filter block at data's start takes (whole: data must be exactly the block); the reader's
    LatentFormatError naming the problem when it is malformed."""
    from aekit.codec.postfilter import PostFilter

    try:
        _, used = PostFilter.from_bytes(data)
    except ValueError as e:
        raise r.fail(str(e)) from None
    if whole and used != len(data):
        raise r.fail(f"post-filter block of {len(data)} bytes, its header announces {used}")
    return used


def _check_fields(r: _Reader, height: int, width: int, mode_code: int, factor: int, c: int,
                  lh: int, lw: int, levels: int, quantiser: int, coder: int, flags: int) -> None:
    """Semantic checks of a header whose checksum matched (a forged file still gets here)."""
    if not (1 <= height <= MAX_DIM and 1 <= width <= MAX_DIM) or height * width > MAX_PIXELS:
        raise r.fail(f"implausible image size {width}x{height}")
    if mode_code not in MODES:
        raise r.fail(f"unknown image mode code {mode_code}")
    if factor < 1 or c < 1:
        raise r.fail(f"invalid factor {factor} or latent channels {c}")
    if (lh, lw) != (-(-height // factor), -(-width // factor)):
        raise r.fail(f"latent size {lh}x{lw} does not match a {width}x{height} image at factor {factor}")
    if not 2 <= levels <= 256:
        raise r.fail(f"quantisation levels {levels} outside 2..256")
    if quantiser not in QUANTISERS:
        raise r.fail(f"unknown quantiser id {quantiser}")
    if coder not in CODER_NAMES:
        raise r.fail(f"unknown entropy coder id {coder}")
    if flags & ~KNOWN_FLAGS:
        raise r.fail(f"unknown flags 0x{flags:02x}")


def read_header(data: bytes, name: str = "<bytes>") -> LatentHeader:
    return parse(data, name)[0]
