"""`aekit demo`: the codec on real photos with the shipped models, then (optionally) your own model.

    aekit demo                         # bundled photos -> photos-r4 / photos-r9 -> .ael -> images, vs JPEG
    aekit demo --train path/to/images  # also: train a small model on your folder, export, round trip it
Writes the scikit-image/scikit-learn photos, compresses and decompresses each with the shipped models
(aekit/zoo), and prints per file the latent bytes, PSNR and JPEG's PSNR at no more bytes. Photos the
models were trained on are marked: their figures flatter the model (aekit.datasets.PHOTO_TEST are held out).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aekit import zoo
from aekit.images import atomic_write_bytes, load_image, save_image
from aekit.metrics import psnr

DEMO_MODELS = ("photos-r4", "photos-r9")  # shipped models (aekit models)


@dataclass
class Row:
    """One photo through one model: what the demo prints."""
    name: str
    size: str  # WxH
    seen: str  # trained | held out | not in set: was it in the model's training split?
    raw: int  # bytes of raw pixels in the file's mode
    latent: int  # .ael file bytes (header included)
    psnr: float  # dB, in the file's mode
    jpeg_bytes: int | None  # largest JPEG (optimised Huffman) not above `latent`; None if even q1 is larger
    jpeg_psnr: float | None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="compress and decompress the bundled photos with the shipped models, vs JPEG",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="demo", help="working folder (photos/, latents/MODEL/, restored/MODEL/)")
    p.add_argument("--model", nargs="+", default=list(DEMO_MODELS), help="shipped model names or model folders")
    p.add_argument("--limit", type=int, default=0, help="first N photos only (0: all 16)")
    p.add_argument("--train", metavar="FOLDER", help="then train a small model on FOLDER, export it and round trip "
                   "FOLDER through it (the old demo; a few minutes on 2 CPU cores)")
    p.add_argument("--ratio", type=int, choices=(4, 9), default=4, help="--train: latent ratio 1/N")
    p.add_argument("--epochs", type=int, default=10, help="--train: training epochs (more: better quality)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from aekit.datasets import sample_photos

    out = Path(args.out)
    photos = sorted(sample_photos(out / "photos"))[: args.limit or None]
    for model in args.model:
        t0 = time.perf_counter()
        rows = zoo_roundtrip(model, photos, out)
        print_rows(model, rows, time.perf_counter() - t0)
    shipped = [m for m in args.model if str(m) in zoo.names()]
    print(f"\nlatents in {out / 'latents'}, decoded images in {out / 'restored'}"
          + (f"; `aekit models show {shipped[0]}` has the held-out figures and how the model was trained"
             if shipped else ""))
    return train_own(Path(args.train), out, args) if args.train else 0


def seen_by(name: str) -> str:
    """Was this bundled photo in the photo set's training split (aekit data photos)?"""
    from aekit.datasets import PHOTO_COLOUR_SKIMAGE, PHOTO_TEST

    stem = Path(name).stem
    if stem in PHOTO_TEST:
        return "held out"
    return "trained" if stem in PHOTO_COLOUR_SKIMAGE or stem in ("china", "flower") else "not in set"


def jpeg_at_bytes(image: np.ndarray, budget: int) -> tuple[int | None, float | None]:
    """The best JPEG quality whose whole file fits in `budget` bytes: (bytes, PSNR), or (None, None)."""
    from aekit.codec import baseline

    best, lo, hi = (None, None), 1, 95
    while lo <= hi:  # file size grows with quality (binary search over 1..95)
        q = (lo + hi) // 2
        n, decoded = baseline.roundtrip(image, "JPEG", q)
        if n <= budget:
            best, lo = (n, psnr(image, decoded)), q + 1
        else:
            hi = q - 1
    return best


def zoo_roundtrip(model: str, photos: list[Path], out: Path) -> list[Row]:
    """Compress and decompress each photo with one model, writing the .ael and decoded PNG files."""
    from aekit.codec.core import Codec, Decoder
    from aekit.export.manifest import resolve_model

    codec = Codec(resolve_model(model))
    decoder = Decoder([codec.rt.dir])
    rows = []
    for src in photos:
        image, mode = codec.load(src)
        data = codec.compress(image, mode)
        codec.rt.release_memory("encoder")  # two models' encoder and decoder arenas would otherwise all stay
        restored, _ = decoder.decompress(data, src.name)
        decoder.runtime(codec.model_id).release_memory("decoder")
        original = image[:, :, :1] if mode == "L" else image
        atomic_write_bytes(out / "latents" / model / (src.name + ".ael"), data)
        save_image(restored, out / "restored" / model / (src.stem + ".png"))
        jb, jp = jpeg_at_bytes(original, len(data))
        rows.append(Row(src.name, f"{image.shape[1]}x{image.shape[0]}", seen_by(src.name), original.size,
                        len(data), psnr(original, restored), jb, jp))
    return rows


def print_rows(model: str, rows: list[Row], seconds: float) -> None:
    print(f"\n{model}: {len(rows)} photos in {seconds:.1f} s (JPEG: the largest file not above the latent's bytes; "
          "seen: 'trained' = in the model's training photos, 'held out' = its test photos, "
          "'not in set' = in neither)")
    print(f"{'file':26s} {'size':>9s} {'seen':>10s} {'raw B':>8s} {'latent B':>8s} {'bpp':>6s} {'PSNR':>6s} "
          f"{'JPEG B':>7s} {'JPEG PSNR':>9s}")
    for r in rows:
        w, h = map(int, r.size.split("x"))
        jpeg = f"{r.jpeg_bytes:7d} {r.jpeg_psnr:9.2f}" if r.jpeg_bytes else f"{'—':>7s} {'(q1 larger)':>9s}"
        print(f"{r.name:26s} {r.size:>9s} {r.seen:>10s} {r.raw:8d} {r.latent:8d} {8 * r.latent / (w * h):6.3f} "
              f"{r.psnr:6.2f} {jpeg}")
    for seen in ("held out", "not in set", "trained"):
        sel = [r for r in rows if r.seen == seen and r.jpeg_psnr is not None]
        if sel:
            print(f"mean over {len(sel)} {seen:10s}: model {np.mean([r.psnr for r in sel]):.2f} dB, "
                  f"JPEG at no more bytes {np.mean([r.jpeg_psnr for r in sel]):.2f} dB")


def train_own(folder: Path, out: Path, args: argparse.Namespace) -> int:
    """Train a small model on the user's folder, export it, round trip the folder, report per file."""
    from aekit.cli import main

    run, model = out / "own" / "run", out / "own" / "model"
    steps = [
        ["train", str(folder), "--out", str(run), "--ratio", str(args.ratio), "--resize", "random-crop",
         "--size", "96", "--repeat", "16", "--width", "32", "--batch-size", "16", "--epochs", str(args.epochs)],
        ["export", str(run / "best.pt"), "--out", str(model), "--force"],
        ["compress", str(folder), "-m", str(model), "-o", str(out / "own" / "latents"), "--overwrite"],
        ["decompress", str(out / "own" / "latents"), "-o", str(out / "own" / "restored"), "-m", str(model), "--overwrite"],
    ]
    for argv in steps:
        print(f"\n$ aekit {' '.join(argv)}", flush=True)
        code = main(argv)
        if code != 0:
            print(f"demo: step `aekit {argv[0]}` failed with exit code {code}", file=sys.stderr)
            return code
    return report(folder, out / "own")


def report(src_dir: Path, out: Path) -> int:
    """Per-file sizes and PSNR of the own-model round trip; totals against raw pixels and source files."""
    from aekit.images import iter_files

    rows, raw_total, latent_total = [], 0, 0
    for src in sorted(iter_files(src_dir)):
        rel = src.relative_to(src_dir)
        latent = out / "latents" / rel.parent / (src.name + ".ael")
        restored = out / "restored" / rel.parent / (src.stem + ".png")
        if not (latent.is_file() and restored.is_file()):
            continue
        a, _ = load_image(src, 3)
        b, _ = load_image(restored, 3)
        raw = a.shape[0] * a.shape[1] * (1 if (a[..., :1] == a).all() else 3)
        rows.append((str(rel), raw, latent.stat().st_size, psnr(a, b)))
        raw_total, latent_total = raw_total + raw, latent_total + latent.stat().st_size
    print(f"\n{'file':36s} {'raw B':>9s} {'latent B':>9s} {'raw/latent':>10s} {'PSNR dB':>8s}")
    for name, raw, lb, p in rows:
        print(f"{name:36s} {raw:9d} {lb:9d} {raw / lb:10.1f} {p:8.2f}")
    if rows:
        print(f"{'total':36s} {raw_total:9d} {latent_total:9d} {raw_total / latent_total:10.1f}")
    print(f"\nyour model in {out / 'model'}: `aekit compress FOLDER -m {out / 'model'} -o latents/`")
    return 0
