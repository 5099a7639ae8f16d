"""Size and quality next to the timings: whole .ael files against whole JPEG files of about the same size.

    codec, decoder = open_codec("models/fmnist-r4", threads=1)
    row = quality_row(codec, decoder, images, "28x28")   # ours_bytes, ours_psnr_db, jpeg_quality, jpeg_psnr_db ...
    python -m aekit.bench.quality fmnist-r4 --images data/fmnist/test --max-images 32 --json q.json   # no timing
Ours are the files `aekit compress` writes (aekit.codec.core, header included), decoded by
`aekit decompress`'s Decoder; JPEG is the codec's one baseline (aekit.codec.baseline) at the
quality whose mean file size is closest; PSNR is aekit.metrics' per-image mean.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from aekit.codec.core import Codec, Decoder

OURS_BYTES_ARE = "whole .ael files (header + entropy-coded payload)"


def open_codec(model_dir: str, threads: int) -> tuple[Codec, Decoder]:
    """The model's Codec and a Decoder that finds it, on the CPU. ImportError when a runtime
    dependency of the codec (the entropy coder) is missing."""
    from aekit.codec.core import Codec, CodecConfig, Decoder

    cfg = CodecConfig(device="cpu", threads=threads)
    return Codec(model_dir, cfg), Decoder([model_dir], cfg)


def quality_row(codec: Codec, decoder: Decoder, images: np.ndarray, size: str) -> dict[str, Any]:
    """uint8 (N, H, W, C) images -> the row of BenchReport.quality for this size."""
    from aekit.bench.jpeg import match_quality
    from aekit.export.entropy import CODER_NAMES
    from aekit.metrics import mean_psnr

    files = [codec.compress(im) for im in images]
    decoded = [decoder.decompress(f) for f in files]  # (image, header) each
    ours_psnr = mean_psnr((a, b.reshape(a.shape)) for a, (b, _) in zip(images, decoded))
    coders: dict[str, int] = {}
    for _, header in decoded:
        name = CODER_NAMES.get(header.coder, str(header.coder))
        coders[name] = coders.get(name, 0) + 1
    mean = float(np.mean([len(f) for f in files]))
    j = match_quality(list(images), mean)
    h, w = images.shape[1:3]
    row = {"size": size, "images": len(images), "ours_bytes": mean, "ours_bytes_are": OURS_BYTES_ARE,
           "ours_psnr_db": ours_psnr, "raw_bytes": int(np.prod(images.shape[1:])), "coders": coders,
           "symbols_per_image": int(np.prod(codec.rt.latent_shape(h, w))),
           "jpeg_quality": j["quality"], "jpeg_bytes": j["mean_bytes"], "jpeg_psnr_db": j["psnr_db"]}
    if "note" in j:
        row["note"] = j["note"]
    return row


def main(argv: list[str] | None = None) -> int:
    """The bench's size and quality rows alone (nothing timed), the images chosen and fitted as
    `aekit bench` chooses them; prints one line per size, --json writes the rows and the versions."""
    from aekit.bench.inputs import fit, load_images, parse_size
    from aekit.bench.sysinfo import library_versions
    from aekit.export.manifest import load_manifest, model_arg

    p = argparse.ArgumentParser(prog="python -m aekit.bench.quality", description=main.__doc__)
    p.add_argument("model", type=model_arg, help="model folder or shipped model's name")
    p.add_argument("--images", required=True, help="image folder (every k-th file, as aekit bench)")
    p.add_argument("--size", action="append", type=parse_size, help="HxW, repeatable (default: the images' own)")
    p.add_argument("--max-images", type=int, default=32, help="distinct images (default: 32)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    m = load_manifest(args.model)
    images = load_images(args.images, m["channels"], args.max_images)
    codec, decoder = open_codec(m["_dir"], threads=1)
    rows = []
    for h, w in args.size or [images[0].shape[:2]]:
        row = quality_row(codec, decoder, np.stack([fit(im, h, w) for im in images]), f"{h}x{w}")
        rows.append(row)
        print(f"{m['model_id']} {row['size']}: ours {row['ours_bytes']:.0f} B at {row['ours_psnr_db']:.2f} dB "
              f"({row['coders']}); JPEG q{row['jpeg_quality']} {row['jpeg_bytes']:.0f} B at {row['jpeg_psnr_db']:.2f} dB"
              + (f" -- {row['note']}" if "note" in row else ""))
    if args.json:
        rec = {"command": ["python", "-m", "aekit.bench.quality", *(sys.argv[1:] if argv is None else argv)],
               "model": Path(m["_dir"]).name, "model_id": m["model_id"], "arch": m.get("arch"), "images": args.images,
               "quality": codec.quality, "libraries": library_versions(), "rows": rows}
        with open(args.json, "w") as f:
            json.dump(rec, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
