"""`aekit features`: latent vectors of an image folder for other models (the probe: aekit.bench.probe).

    aekit features models/fmnist-r4 data/fmnist/test -o feats.npz [--pool avg] [--max-images N]
Exit codes: 0 done; 2 usage error, bad input, or some image files skipped (each named on stderr).
"""

from __future__ import annotations

import argparse
from pathlib import Path

FMT = argparse.ArgumentDefaultsHelpFormatter


def add_extract_args(p: argparse.ArgumentParser) -> None:
    """Options of every command that extracts features (features, probe)."""
    p.add_argument("--pool", choices=("none", "avg"), default="none",
                   help="none: the whole latent flattened; avg: spatial mean per latent channel")
    p.add_argument("--max-images", type=int, default=0, help="a seeded random subset of N files per folder (0: all)")
    p.add_argument("--size", type=int, default=0,
                   help="scale-crop every image to SIZE x SIZE first (0: native size, which must be one size)")
    p.add_argument("--batch-size", type=int, default=256, help="images per ONNX call")
    p.add_argument("--workers", type=int, default=4, help="threads decoding image files")
    p.add_argument("--threads", type=int, default=0,
                   help="onnxruntime threads, and BLAS threads of the probe's fits (0: library defaults)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")


def register(sub: argparse._SubParsersAction) -> None:
    from aekit.export.manifest import model_arg
    p = sub.add_parser("features", help="latent vectors (+ labels) of an image folder, as .npz for other models",
                       formatter_class=FMT, description="Encode every image of DATA (flat, or one subfolder per "
                       "class = label) with MODEL and save the dequantised latents y_hat as rows of x in an .npz "
                       "(x, labels, classes, paths, model_id). Exit 2 when some files were skipped.")
    p.add_argument("model", type=model_arg, help="exported model folder or shipped model's name")
    p.add_argument("data", help="image folder")
    p.add_argument("-o", "--out", required=True, help="output .npz file")
    add_extract_args(p)
    p.set_defaults(func=cmd_features)


def extract(args: argparse.Namespace, data: str):
    from aekit.export.features import extract_features

    return extract_features(args.model, data, batch_size=args.batch_size, max_images=args.max_images,
                            pool=args.pool, workers=args.workers, size=args.size, threads=args.threads,
                            device=args.device)


def cmd_features(args: argparse.Namespace) -> int:
    from aekit.export.features import save_features

    feats = extract(args, args.data)
    save_features(args.out, feats)
    print(f"{args.out}: {len(feats)} vectors of {feats.x.shape[1]} ({args.pool} pool), "
          f"{len(feats.classes)} classes, model {feats.model_id}; {feats.failed} file(s) skipped")
    return 2 if feats.failed else 0


def features_for(args: argparse.Namespace, src: str, model_id: str):
    """Features from a .npz (checked against MODEL) or extracted from a folder."""
    from aekit.export.features import FeaturesError, load_features

    if Path(src).suffix == ".npz":
        feats = load_features(src)
        if feats.model_id != model_id:
            raise FeaturesError(f"{src}: features of model {feats.model_id}, not of {args.model} ({model_id})")
        return feats
    return extract(args, src)
