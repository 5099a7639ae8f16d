"""`aekit demo`: the whole job on real photos, end to end, with no other input.

    aekit demo --out demo      # photos -> train -> export -> compress -> decompress -> report
Writes the bundled scikit-image/scikit-learn photos, trains a small RGB model on random
crops of them (about a minute on 2 CPU cores), exports it to ONNX, compresses the folder
into .ael latent files, decodes them back and prints sizes and quality per file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aekit.images import load_image
from aekit.metrics import psnr


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train, export, compress and decompress the bundled photos, end to end",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="demo", help="working folder (photos/, run/, model/, latents/, restored/)")
    p.add_argument("--ratio", type=int, choices=(4, 9), default=4, help="latent ratio 1/N")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (more: better quality)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from aekit.cli import main

    out = Path(args.out)
    steps = [
        ["data", "samples", str(out / "photos")],
        ["train", str(out / "photos"), "--out", str(out / "run"), "--channels", "3", "--ratio", str(args.ratio),
         "--resize", "random-crop", "--size", "96", "--repeat", "16", "--width", "32", "--batch-size", "16",
         "--epochs", str(args.epochs)],
        ["export", str(out / "run" / "best.pt"), "--out", str(out / "model"), "--force"],
        ["info", str(out / "model")],
        ["compress", str(out / "photos"), "-m", str(out / "model"), "-o", str(out / "latents"), "--overwrite"],
        ["decompress", str(out / "latents"), "-o", str(out / "restored"), "-m", str(out / "model"), "--overwrite"],
    ]
    for argv in steps:
        print(f"\n$ aekit {' '.join(argv)}", flush=True)
        code = main(argv)
        if code != 0:
            print(f"demo: step `aekit {argv[0]}` failed with exit code {code}", file=sys.stderr)
            return code
    return report(out)


def report(out: Path) -> int:
    """Per-file sizes and PSNR of the round trip; totals against raw pixels and source files."""
    rows, raw_total, file_total, latent_total = [], 0, 0, 0
    for src in sorted((out / "photos").iterdir()):
        latent = out / "latents" / (src.name + ".ael")
        restored = out / "restored" / (src.stem + ".png")
        if not (latent.is_file() and restored.is_file()):
            continue
        a, _ = load_image(src, 3)
        b, _ = load_image(restored, 3)
        gray = a.shape[2] == 3 and (a[..., :1] == a).all()
        raw = a.shape[0] * a.shape[1] * (1 if gray else 3)
        rows.append((src.name, f"{a.shape[1]}x{a.shape[0]}", raw, src.stat().st_size, latent.stat().st_size, psnr(a, b)))
        raw_total, file_total, latent_total = raw_total + raw, file_total + src.stat().st_size, latent_total + latent.stat().st_size
    print(f"\n{'file':28s} {'size':>9s} {'raw B':>9s} {'file B':>9s} {'latent B':>9s} {'raw/latent':>10s} {'PSNR dB':>8s}")
    for name, size, raw, fb, lb, p in rows:
        print(f"{name:28s} {size:>9s} {raw:9d} {fb:9d} {lb:9d} {raw / lb:10.1f} {p:8.2f}")
    if rows:
        print(f"{'total':28s} {'':>9s} {raw_total:9d} {file_total:9d} {latent_total:9d} {raw_total / latent_total:10.1f}")
    print(f"\nlatents in {out / 'latents'}, decoded images in {out / 'restored'}")
    return 0
