"""The post-filter on images above FIT_MAX_PIXELS (4 Mpx): fitted to windows of the image (since session 26) against
no filter (the writer before) and against a filter fitted to every pixel (FIT_MAX_PIXELS raised: what the windows
stand in for). Quality only, no timing.

    python -m aekit.bench.postfilter_large IMAGE... -m photos-r9 -m photos-r4 --out bench/results/postfilter_large

Each file is written by aekit.codec.api.compress_file (what `aekit compress` runs: lazy pixels, tiles) at the model's
default quality and decoded by the Decoder row band by row band; PSNR over the whole image (one mean squared error).
Writes OUT.json and OUT.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _sse_rows(decoder: Any, data: bytes, original: np.ndarray) -> tuple[int, int]:
    """(sum of squared errors, pixel values) of a file's decode against the original, band by band."""
    header, q = decoder.symbols(data)
    sse, top = 0, 0
    for band in decoder.reconstruct_rows(header, q):
        d = band.astype(np.int64) - original[top:top + band.shape[0]]
        sse += int((d * d).sum())
        top += band.shape[0]
    return sse, int(original.size)


def run(images: list[Path], models: list[str]) -> list[dict[str, Any]]:
    import aekit.codec.core as core
    from aekit.codec.api import compress_file
    from aekit.codec.core import Codec, CodecConfig, Decoder
    from aekit.codec.format import parse
    from aekit.export.manifest import resolve_model
    from aekit.images import load_for_channels

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            model = resolve_model(name)
            decoder = Decoder([model], CodecConfig(workers=1))
            for path in images:
                original, _ = load_for_channels(path, 3)
                row: dict[str, Any] = {"model": name, "image": path.name, "width": int(original.shape[1]),
                                       "height": int(original.shape[0])}
                for label, cfg, limit in (("none", CodecConfig(workers=1, post_filter=False), None),
                                          ("windows", CodecConfig(workers=1), None),
                                          ("every pixel", CodecConfig(workers=1), 1 << 40)):
                    saved = core.FIT_MAX_PIXELS
                    if limit:
                        core.FIT_MAX_PIXELS = limit
                    try:
                        out = compress_file(path, Path(tmp) / "x.ael", Codec(model, cfg), overwrite=True)
                    finally:
                        core.FIT_MAX_PIXELS = saved
                    data = out.read_bytes()
                    sse, n = _sse_rows(decoder, data, original)
                    block = parse(data)[0].post_filter
                    row[label] = {"bytes": len(data), "bpp": 8 * len(data) / (original.shape[0] * original.shape[1]),
                                  "psnr": float(10 * np.log10(255.0 ** 2 * n / max(sse, 1))),
                                  "filter": {"radius": block[1], "frac_bits": block[2], "bytes": len(block)} if block else None}
                    log.info("%s %s %s: %d B, %.3f dB", name, path.name, label, len(data), row[label]["psnr"])
                rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], command: str, env: dict[str, Any]) -> str:
    out = ["# The post-filter on large images: fitted to windows, none, every pixel", "",
           f"Command: `{command}`", f"Machine: {env.get('cpu')}, {env.get('cpu_cores')} cores, {env.get('platform')}", "",
           "| model | image | Mpx | no filter: bytes / dB | windows: bytes / dB | gain dB | every pixel: bytes / dB |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        a, b, c = r["none"], r["windows"], r["every pixel"]
        out.append(f"| {r['model']} | {r['image']} | {r['width'] * r['height'] / 1e6:.1f} | {a['bytes']} / {a['psnr']:.2f} "
                   f"| {b['bytes']} / {b['psnr']:.2f} | {b['psnr'] - a['psnr']:+.2f} | {c['bytes']} / {c['psnr']:.2f} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    from aekit.bench.sysinfo import environment

    p = argparse.ArgumentParser(prog="python -m aekit.bench.postfilter_large", description=__doc__.split("\n")[0])
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("-m", "--model", action="append", required=True)
    p.add_argument("--out", type=Path, required=True, help="OUT.json and OUT.md are written")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = run(args.images, args.model)
    command = "python -m aekit.bench.postfilter_large " + " ".join(sys.argv[1:] if argv is None else argv)
    env = environment("cpu")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "machine": env, "rows": rows}, indent=1))
    args.out.with_suffix(".md").write_text(markdown(rows, command, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
