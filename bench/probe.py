"""Linear probe: how much class information an exported model's latents keep, with few labels.

    aekit probe models/fmnist-r4 --train data/fmnist/train --test data/fmnist/test --labels 10,100,1000
A logistic regression (scikit-learn, standardised features) on class-balanced subsets of N labels
per class, scored on the whole test set, on the latents (aekit.export.features) and on the raw
pixels of the same images. An evaluation, so it lives in bench/ next to the classifier benchmark.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from aekit.export.features import Features, FeaturesError


# ---- probes --------------------------------------------------------------------------------
@dataclass
class ProbeConfig:
    labels_per_class: tuple[int, ...] = (10, 100, 1000)  # labelled training images per class
    repeats: int = 5  # seeded subsets per size (mean and std reported); 1 when a size takes every image
    seed: int = 0  # seed of the class-balanced subsets
    C: float = 0.01  # inverse L2 strength of LogisticRegression on standardised features (same for every set)
    max_iter: int = 500  # lbfgs iterations (fixed)
    threads: int = 1  # BLAS/OpenMP threads during fits (0: library default)


@dataclass
class ProbeResult:
    features: str  # "latent" or "pixels"
    labels_per_class: int  # asked for; classes with fewer images use all they have
    accuracy: float  # mean accuracy on all test vectors over the repeats
    std: float  # standard deviation over the repeats (0 for one repeat)
    accuracies: list[float] = field(default_factory=list)  # one per repeat
    n_train: int = 0  # labelled vectors per fit
    n_test: int = 0
    dim: int = 0  # feature dimension

    def to_dict(self) -> dict:
        return asdict(self)


def balanced_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of up to n rows per class (label >= 0), drawn without replacement, sorted."""
    picks = []
    for c in np.unique(labels[labels >= 0]):
        idx = np.flatnonzero(labels == c)
        picks.append(idx if len(idx) <= n else rng.choice(idx, n, replace=False))
    return np.sort(np.concatenate(picks))


def aligned_test_labels(train: Features, test: Features) -> np.ndarray:
    """Test labels re-indexed into the train classes (class names must be covered by train's)."""
    if not train.classes or not test.classes:
        raise FeaturesError("the probe needs labelled images (one subfolder per class) for train and test")
    missing = sorted(set(test.classes) - set(train.classes))
    if missing:
        raise FeaturesError(f"test classes missing from the training classes: {', '.join(missing)}")
    remap = np.asarray([train.classes.index(c) for c in test.classes], np.int64)
    return remap[test.labels]


def fit_score(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, cfg: ProbeConfig) -> float:
    """Standardise on the training rows, fit multinomial logistic regression, return test accuracy."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=cfg.C, max_iter=cfg.max_iter))
    with warnings.catch_warnings(), threadpool_limits(cfg.threads or None):
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_tr, y_tr)
    return float(np.mean(clf.predict(x_te) == y_te))


def probe(train: Features, test: Features, labels_per_class: tuple[int, ...] = (10, 100, 1000), seed: int = 0,
          repeats: int = 5, *, train_pixels: Features | None = None, test_pixels: Features | None = None,
          cfg: ProbeConfig | None = None) -> list[ProbeResult]:
    """Linear-probe accuracy on latents (and on pixels, same subsets, when given) per labels-per-class."""
    cfg = cfg or ProbeConfig(labels_per_class=tuple(labels_per_class), repeats=repeats, seed=seed)
    y_te = aligned_test_labels(train, test)
    sets = [("latent", train.x, test.x)]
    if train_pixels is not None and test_pixels is not None:
        if train_pixels.paths != train.paths or test_pixels.paths != test.paths:
            raise FeaturesError("pixel baseline: its images differ from the latent features' images")
        sets.append(("pixels", train_pixels.x, test_pixels.x))
    results = []
    for n in cfg.labels_per_class:
        takes_all = all(np.sum(train.labels == c) <= n for c in np.unique(train.labels[train.labels >= 0]))
        subsets = [balanced_subset(train.labels, n, np.random.default_rng([cfg.seed, n, r]))
                   for r in range(1 if takes_all else cfg.repeats)]
        for name, x_tr, x_te in sets:
            accs = [fit_score(x_tr[s], train.labels[s], x_te, y_te, cfg) for s in subsets]
            results.append(ProbeResult(features=name, labels_per_class=n, accuracy=float(np.mean(accs)),
                                       std=float(np.std(accs)), accuracies=accs, n_train=len(subsets[0]),
                                       n_test=len(y_te), dim=x_tr.shape[1]))
    return results


def probe_table(results: list[ProbeResult]) -> str:
    """labels/class | latent accuracy | pixels accuracy (mean ± std over repeats)."""
    by = {(r.labels_per_class, r.features): r for r in results}
    has_px = any(r.features == "pixels" for r in results)
    lines = [("labels/class  train  probe on latents   " + ("probe on pixels" if has_px else "")).rstrip()]
    for n in sorted({r.labels_per_class for r in results}):
        lat = by[(n, "latent")]
        row = f"{n:>12}  {lat.n_train:>5}  {lat.accuracy:.4f} ± {lat.std:.4f}   "
        if (n, "pixels") in by:
            px = by[(n, "pixels")]
            row += f"{px.accuracy:.4f} ± {px.std:.4f}"
        lines.append(row.rstrip())
    return "\n".join(lines)


# ---- `aekit probe` ------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    """`aekit probe` (registered by aekit.bench.cli)."""
    from aekit.export.manifest import model_arg
    from aekit.cli import DefaultsHelpFormatter as FMT
    from aekit.export.features_cli import add_extract_args as common

    p = sub.add_parser("probe", help="linear-probe accuracy on latents vs pixels with few labels per class",
                       formatter_class=FMT, description="Fit a logistic-regression probe (scikit-learn, "
                       "standardised features) on class-balanced subsets of N labels per class of --train and "
                       "report accuracy on all of --test, on the latents and on raw pixels of the same images.")
    p.add_argument("model", type=model_arg, help="exported model folder or shipped model's name")
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
    from aekit.export.features import pixel_features
    from aekit.export.features_cli import features_for
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
        logging.getLogger(__name__).warning("%d image file(s) skipped (named above)", skipped)
    return 2 if skipped else 0
