"""Fuzz the latent-file reader with mutants of real files and record what happened to each.

    python -m aekit.bench.fuzz_latents --mutants 10000 --out codec/results/fuzz.json
Mutants of real .ael files written by shipped models (fmnist-r4 on 28x28 images, photos-r9 on
64x64 and 128x128 photo crops: coders 4, 5 and, with its channel context, 6): byte flips, truncations, insertions and header-field
rewrites, each with the checksum left as is and, for half of them, recomputed (so the semantic checks
are reached). Each is decoded with aekit.codec.core.Decoder. Outcomes: clean (a one-line CodecError/
LatentFormatError/ModelError/ImageError), decoded (allowed only for checksum-fixed mutants), silent corruption (a
mutant whose checksum was NOT fixed decoded anyway), crash (any other exception), hang (> 5 s).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
import zlib
from datetime import datetime, timezone

import numpy as np

CLEAN_TYPES = ("CodecError", "LatentFormatError", "ModelError", "ImageError", "ImageLimitError",
               "CodecLimitError", "EntropyError")
HANG_S = 5.0


def _fix_crc(data: bytes) -> bytes:
    """Recompute the CRC of a mutant whose header still parses far enough to find it."""
    from aekit.codec.format import MAGIC

    pos = len(MAGIC) + 1 + 8
    version = data[len(MAGIC)] if len(data) > len(MAGIC) else 2

    def varint() -> None:
        nonlocal pos
        for _ in range(5):
            if pos >= len(data):
                return
            pos += 1
            if not data[pos - 1] & 0x80:
                return

    varint(); varint(); pos += 3; varint(); varint(); varint()
    pos += 4 if version >= 2 else 3
    varint()
    if pos + 4 > len(data):
        return data
    crc = zlib.crc32(data[pos + 4:], zlib.crc32(data[:pos]))
    return data[:pos] + crc.to_bytes(4, "little") + data[pos + 4:]


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    kind = rng.integers(4)
    if kind == 0:  # flip 1-4 bytes anywhere
        for _ in range(int(rng.integers(1, 5))):
            i = int(rng.integers(len(b)))
            b[i] ^= int(rng.integers(1, 256))
    elif kind == 1:  # truncate
        b = b[: int(rng.integers(len(b)))]
    elif kind == 2:  # insert random bytes
        i = int(rng.integers(len(b) + 1))
        b[i:i] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
    else:  # rewrite one header byte (sizes, factor, channels, levels, quantiser, quality, coder, flags)
        i = int(rng.integers(4, min(len(b), 30)))
        b[i] = int(rng.integers(256))
    return bytes(b)


def sources() -> list[tuple[str, bytes, str]]:
    """(model name, file bytes, model folder) for a few real files per model."""
    import skimage.data

    from aekit.codec.core import Codec
    from aekit.codec.format import pack
    from aekit.export.entropy import CODER_CHANNEL_CONTEXT, CODER_CHANNEL_SPATIAL, CODER_SPATIAL
    from aekit.export.manifest import resolve_model

    out = []
    cam = skimage.data.camera()
    fm = Codec(resolve_model("fmnist-r4"))
    for k in range(4):
        out.append(("fmnist-r4", fm.compress(cam[100 + 28 * k:128 + 28 * k, 200:228, None]), str(fm.rt.dir)))
    ph = Codec(resolve_model("photos-r9"))
    out.append(("photos-r9", ph.compress(skimage.data.astronaut()[100:164, 200:264]), str(ph.rt.dir)))
    out.append(("photos-r9", ph.compress(skimage.data.astronaut()[100:228, 200:328]), str(ph.rt.dir)))
    if ph.em.context is not None:  # coder 6 (channel context) written whatever the smallest coder is
        crop = skimage.data.coffee()[100:228, 200:328]
        q = ph.symbols(crop[None])[0]
        out.append(("photos-r9", pack(ph.header(128, 128, "RGB", CODER_CHANNEL_CONTEXT), ph.em._encode_context(q)),
                    str(ph.rt.dir)))
        out.append(("photos-r9", pack(ph.header(128, 128, "RGB", CODER_CHANNEL_SPATIAL),
                                      ph.em._encode_channel(q)[CODER_CHANNEL_SPATIAL]), str(ph.rt.dir)))
        z, table, base = ph.em._side(q)  # coder 7 (spatial prediction) written whatever the smallest coder is
        out.append(("photos-r9", pack(ph.header(128, 128, "RGB", CODER_SPATIAL), ph.em._encode_spatial(q, z, table, base)),
                    str(ph.rt.dir)))
    out.append(("photos-r9", ph.compress(skimage.data.rocket()[:256, :256]), str(ph.rt.dir)))  # a post-filter (version 8)
    return out


def run(n: int, seed: int) -> dict:
    from aekit.codec.core import CodecConfig, Decoder

    srcs = sources()
    decoders = {name: Decoder([folder], CodecConfig(threads=1)) for name, _, folder in srcs}
    rng = np.random.default_rng(seed)
    counts = {"tried": 0, "clean_errors": 0, "decoded_crc_fixed": 0, "decoded_identical": 0,
              "silent_corruptions": 0, "crashes": 0, "hangs": 0}
    examples: dict[str, list[str]] = {"crashes": [], "silent_corruptions": [], "hangs": []}
    for i in range(n):
        name, data, _ = srcs[i % len(srcs)]
        m = mutate(data, rng)
        fixed = bool(i % 2)
        if fixed:
            m = _fix_crc(m)
        counts["tried"] += 1
        t0 = time.monotonic()
        try:
            decoders[name].decompress(m, f"mutant-{i}.ael")
            outcome = "decoded_identical" if m == data else ("decoded_crc_fixed" if fixed else "silent_corruptions")
        except Exception as e:  # classified below: product errors are clean, anything else a crash
            outcome = "clean_errors" if type(e).__name__ in CLEAN_TYPES else "crashes"
            if outcome == "crashes" and len(examples["crashes"]) < 5:
                examples["crashes"].append(f"{name} #{i}: {type(e).__name__}: {e}"[:300])
        if time.monotonic() - t0 > HANG_S:
            counts["hangs"] += 1
            examples["hangs"].append(f"{name} #{i}: {time.monotonic() - t0:.1f} s")
        counts[outcome] += 1
        if outcome == "silent_corruptions" and len(examples["silent_corruptions"]) < 5:
            examples["silent_corruptions"].append(f"{name} #{i}")
    return {"counts": counts, "examples": examples}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mutants", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="codec/results/fuzz.json")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    res = run(args.mutants, args.seed)
    res.update(command=shlex.join(["python", "-m", "aekit.bench.fuzz_latents", *(argv or sys.argv[1:])]),
               machine={"processor": platform.processor() or platform.machine(), "python": platform.python_version()},
               date=datetime.now(timezone.utc).isoformat(timespec="seconds"), seconds=round(time.monotonic() - t0, 1))
    from aekit.images import atomic_write_bytes

    atomic_write_bytes(args.out, (json.dumps(res, indent=1) + "\n").encode())
    print(json.dumps(res["counts"]))
    return 0 if not (res["counts"]["crashes"] or res["counts"]["silent_corruptions"] or res["counts"]["hangs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
