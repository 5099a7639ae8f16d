"""`aekit features` and `aekit probe`: latent vectors for other models, and linear probes on them.

    aekit features models/fmnist-r4 data/fmnist/test -o feats.npz [--pool avg] [--max-images N]
    aekit probe models/fmnist-r4 --train data/fmnist/train --test data/fmnist/test [--json probe.json]
Exit codes: 0 done; 2 usage error, bad input, or some image files skipped (each named on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FMT = argparse.ArgumentDefaultsHelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    def common(p: argparse.ArgumentParser) -> None:
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

    p = sub.add_parser("features", help="latent vectors (+ labels) of an image folder, as .npz for other models",
                       formatter_class=FMT, description="Encode every image of DATA (flat, or one subfolder per "
                       "class = label) with MODEL and save the dequantised latents y_hat as rows of x in an .npz "
                       "(x, labels, classes, paths, model_id). Exit 2 when some files were skipped.")
    p.add_argument("model", help="exported model folder")
    p.add_argument("data", help="image folder")
    p.add_argument("-o", "--out", required=True, help="output .npz file")
    common(p)
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("probe", help="linear-probe accuracy on latents vs pixels with few labels per class",
                       formatter_class=FMT, description="Fit a logistic-regression probe (scikit-learn, "
                       "standardised features) on class-balanced subsets of N labels per class of --train and "
                       "report accuracy on all of --test, on the latents and on raw pixels of the same images.")
    p.add_argument("model", help="exported model folder")
    p.add_argument("--train", required=True, help="labelled image folder, or a .npz from `aekit features`")
    p.add_argument("--test", required=True, help="labelled image folder, or a .npz from `aekit features`")
    p.add_argument("--labels", default="10,100,1000", help="labels per class, comma-separated")
    p.add_argument("--seed", type=int, default=0, help="seed of the labelled subsets")
    p.add_argument("--repeats", type=int, default=5, help="subsets per size (mean ± std reported)")
    p.add_argument("--C", type=float, default=0.01, help="inverse L2 regularisation of the logistic regression")
    p.add_argument("--max-iter", type=int, default=500, help="lbfgs iterations per fit")
    p.add_argument("--no-pixels", action="store_true", help="skip the raw-pixel baseline")
    p.add_argument("--json", help="also write the results to this JSON file")
    common(p)
    p.set_defaults(func=cmd_probe)


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


def parse_labels(text: str) -> tuple[int, ...]:
    try:
        ns = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        ns = ()
    if not ns or min(ns) < 1:
        raise ValueError(f"--labels {text!r}: expected positive integers separated by commas, e.g. 10,100,1000")
    return ns


def provenance() -> dict:
    """Command (when run as `aekit`), machine, date and library versions for a results file."""
    import platform
    from datetime import datetime, timezone
    from importlib.metadata import version

    from aekit.machine import cpu_name

    cmd = " ".join(["aekit", *sys.argv[1:]]) if Path(sys.argv[0]).name == "aekit" else None
    return {"command": cmd, "machine": cpu_name(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": {"python": platform.python_version(),
                         **{k: version(k) for k in ("numpy", "scikit-learn", "onnxruntime", "onnxruntime-gpu")
                            if _installed(k)}}}


def _installed(name: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return bool(version(name))
    except PackageNotFoundError:
        return False


def cmd_probe(args: argparse.Namespace) -> int:
    from aekit.export.features import ProbeConfig, pixel_features, probe, probe_table
    from aekit.export.manifest import load_manifest

    cfg = ProbeConfig(labels_per_class=parse_labels(args.labels), repeats=args.repeats, seed=args.seed, C=args.C,
                      max_iter=args.max_iter, threads=args.threads)
    m = load_manifest(args.model)
    train, test = features_for(args, args.train, m["model_id"]), features_for(args, args.test, m["model_id"])
    px = {}
    if not args.no_pixels:
        px = {k: pixel_features(f.paths, f.labels, f.classes, m["channels"], f.size, args.workers)
              for k, f in (("train_pixels", train), ("test_pixels", test))}
    results = probe(train, test, cfg=cfg, **px)
    print(f"linear probe, model {m['model_id']} ({args.model}), {len(train)} train / {len(test)} test vectors, "
          f"latent dim {train.x.shape[1]}, C={cfg.C}, {cfg.repeats} repeat(s)")
    print(probe_table(results))
    if args.json:
        from aekit.images import atomic_write_bytes

        doc = {"model": str(args.model), "model_id": m["model_id"], "train": str(args.train), "test": str(args.test),
               "n_train": len(train), "n_test": len(test), "pool": train.pool, "size": train.size,
               "config": {**cfg.__dict__, "labels_per_class": list(cfg.labels_per_class)},
               "results": [r.to_dict() for r in results], **provenance()}
        atomic_write_bytes(args.json, (json.dumps(doc, indent=1) + "\n").encode())
    skipped = train.failed + test.failed
    if skipped:
        print(f"{skipped} image file(s) skipped (named above)", file=sys.stderr)
    return 2 if skipped else 0
