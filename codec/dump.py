"""`aekit dump`: what a latent file holds, tfci-style — header fields, model, sizes, coder, bits per pixel.

    aekit dump latents/cat.png.ael                 # `field: value` lines
    aekit dump latents/ -m models/ --json          # one JSON object per .ael file under a folder
Reads the header and verifies the checksum; no ONNX and no model needed (the model folder is
named when the search path has it). Exit codes: 0 every file read; 2 a file is not a valid .ael.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from aekit.codec import format as ael


def _names(prefix: str) -> dict[int, str]:
    """{id: name} of the format's constants with this prefix (QUANT_TANH_UNIFORM -> 'tanh-uniform')."""
    return {v: k[len(prefix):].lower().replace("_", "-") for k, v in vars(ael).items()
            if k.startswith(prefix) and isinstance(v, int)}


def describe(path: str | Path, search: list[str | Path] | None = None) -> dict[str, Any]:
    """The fields of one .ael file as a dict; LatentFormatError if it is not a valid one."""
    from aekit.export.entropy import CODER_NAMES

    data = Path(path).read_bytes()
    h, payload = ael.parse(data, str(path))
    c, lh, lw = h.latent_shape
    pixels, channels = h.height * h.width, 1 if h.mode == "L" else 3
    flags = [name for bit, name in _names("FLAG_").items() if h.flags & bit]
    d: dict[str, Any] = {
        "file": str(path), "format_version": data[len(ael.MAGIC)], "model_id": h.model_id,
        "image": f"{h.width}x{h.height}", "mode": h.mode, "factor": h.factor, "latent_shape": [c, lh, lw],
        "symbols": c * lh * lw, "levels": h.levels,
        "quantiser": _names("QUANT_").get(h.quantiser, str(h.quantiser)), "quality": h.quality,
        "coder": CODER_NAMES.get(h.coder, str(h.coder)), "flags": flags,
        "file_bytes": len(data), "header_bytes": len(data) - len(payload) - len(h.post_filter),
        "post_filter_bytes": len(h.post_filter), "payload_bytes": len(payload),
        "raw_pixel_bytes": pixels * channels, "ratio": round(pixels * channels / len(data), 3),
        "bpp": round(8 * len(data) / pixels, 4), "payload_bpp": round(8 * len(payload) / pixels, 4),
        "bits_per_symbol": round(8 * len(payload) / (c * lh * lw), 4),
    }
    if search:
        from aekit.export.manifest import ModelError, find_model

        try:
            d["model"] = str(find_model(h.model_id, search))
        except ModelError as e:
            d["model"] = f"not found ({e})"
    return d


def _files(src: Path) -> list[Path]:
    return sorted(src.rglob(f"*{ael.SUFFIX}")) if src.is_dir() else [src]


def register(sub: argparse._SubParsersAction) -> None:
    from aekit.export.manifest import model_arg
    p = sub.add_parser("dump", help="print the header, model, sizes and coder of .ael latent files",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Header fields, model id (and folder with -m), sizes, entropy coder and bits "
                                   "per pixel of a .ael file, or of every .ael file under a folder. Exit 2 when a "
                                   "file is not a valid latent file (one line each).")
    p.add_argument("src", help=f"{ael.SUFFIX} file or folder")
    p.add_argument("-m", "--models", action="append", type=model_arg,
                   help="model folder or folder of models, to name the model (the shipped models are searched too)")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of field: value lines")
    p.set_defaults(func=cmd_dump)


def cmd_dump(args: argparse.Namespace) -> int:
    import logging

    bad = 0
    for i, path in enumerate(_files(Path(args.src))):
        try:
            d = describe(path, args.models)
        except (ael.LatentFormatError, OSError) as e:
            logging.getLogger(__name__).error("failed: %s", e)
            bad += 1
            continue
        if args.json:
            print(json.dumps(d))
            continue
        print(("\n" if i else "") + "\n".join(f"{k}: {v}" for k, v in d.items()))
    return 2 if bad else 0
