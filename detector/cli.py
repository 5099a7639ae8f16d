"""Subcommands `aekit calibrate`, `aekit screen`, `aekit bench-detect` and `aekit detector {train-per-class, evaluate}`.

Exit codes of screen (for pipelines): 0 nothing flagged (also a source folder with no image:
a warning, nothing written, as in the codec's folder jobs); 1 at least one image flagged;
2 errors (bad usage, unknown or uncalibrated class, unreadable/unusable files: the job goes
on past them, records them and still writes its outputs), and any unexpected failure (one line,
never 1). Calibrate: 0 ok, 2 failed files (calibrated on the rest) or too few images for alpha
(nothing stored).
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Callable

H = argparse.ArgumentDefaultsHelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    from aekit.export.manifest import model_arg
    c = sub.add_parser("calibrate", formatter_class=H, help="calibrate per-class anomaly thresholds on normal images",
                       description="Score held-out normal images and store conformal per-class thresholds in the "
                                   "model manifest. Classes are subfolders of NORMAL_DIR, or --class for all images.")
    c.add_argument("model", help="model folder, or a detector directory from `aekit detector train-per-class`")
    c.add_argument("normal_dir", help="folder of normal images (class subfolders, or flat with --class)")
    c.add_argument("--alpha", type=float, help="false-positive rate allowed on normal images; None: the smallest "
                   "of 0.01, 0.05, 0.1, 0.2 the folder has enough images for")
    c.add_argument("--class", dest="cls", metavar="NAME", help="class of every image in NORMAL_DIR")
    c.add_argument("--score", type=_score_spec, help="score: MAP[-REDUCER] (MAP mse|ssim|msssim, REDUCER "
                   "mean|max|topP), feat (encoder-feature patch memory bank), knn (nearest normal images' latents: "
                   "other products), or parts joined by '+' (normalised sum, calibrated as one score); None: "
                   + _default_score())
    c.add_argument("--fit-fraction", type=float, default=0.3, help="share of each class fitting the feature bank "
                   "and the normalisers of a combined score (only for those scores; the rest calibrates)")
    c.add_argument("--fit-dir", metavar="DIR", help="normal images (same class layout) that fit the banks and "
                   "normalisers instead, e.g. the training images; then all of NORMAL_DIR calibrates")
    c.add_argument("--latent", choices=("quantised", "float"), default="quantised",
                   help="reconstruct through 8-bit latent symbols (as shipped) or the float latent")
    c.add_argument("--backbone-weights", metavar="FILE", help="local torchvision ResNet/WideResNet state_dict for the "
                   "padim / patchcore scores: exported once (needs torch) to backbone.onnx in each model folder; "
                   "nothing is downloaded")
    c.add_argument("--backbone", default="resnet18", choices=("resnet18", "resnet34", "resnet50", "wide_resnet50_2"),
                   help="architecture of --backbone-weights")
    c.add_argument("--backbone-side", type=int, default=224, help="images are resized to SIDE x SIDE for the backbone")
    _job_args(c)
    c.set_defaults(func=_guarded(cmd_calibrate))

    s = sub.add_parser("screen", formatter_class=H, help="flag anomalous images against calibrated thresholds",
                       description="Score every image under SRC; writes OUT.jsonl, OUT.csv, OUT.summary.json. "
                                   "Exit 0: nothing flagged, 1: anomalies flagged, 2: errors.")
    s.add_argument("model", type=model_arg, help="calibrated model folder, detector directory or shipped model's name")
    s.add_argument("src", help="image file or folder (class subfolders, or flat)")
    s.add_argument("--class", dest="cls", metavar="NAME",
                   help="class of every image in SRC; None: class subfolders, or the only calibrated class")
    s.add_argument("--alpha", type=float, help="false-positive rate; None: the calibrated one")
    s.add_argument("--out", default="screen", help="output prefix: OUT.jsonl, OUT.csv, OUT.summary.json")
    s.add_argument("--heatmaps", help="folder for [image | reconstruction | map] pictures of flagged images")
    s.add_argument("--maps", help="folder for every image's anomaly map: REL.png (overlay, colour scale) "
                   "and REL.npy (raw float32 map)")
    _job_args(s)
    from aekit.export.engine_ray import add_engine_args

    add_engine_args(s)  # --engine ray: the same screening as a Ray Data pipeline (aekit.detector.ray_jobs)
    s.set_defaults(func=_guarded(cmd_screen))

    b = sub.add_parser("bench-detect", formatter_class=H, help="local-defect benchmark: AUROC, AUPRO, FPR, recall",
                       description="Calibrate each score on CAL (in memory; the model is not changed), then score "
                                   "every image of TEST_DIR clean and with one seeded synthetic defect (square, spot, "
                                   "scratch, noise, cutpaste; 2-8 px at 28 px). Writes OUT.json and OUT.md.")
    b.add_argument("model", type=model_arg, help="model folder or shipped model's name")
    b.add_argument("test_dir", help="held-out normal images (one size), never trained or calibrated on")
    b.add_argument("--cal", required=True, help="normal images to calibrate on (not the test ones)")
    b.add_argument("--score", nargs="+", type=_score_spec, default=["mse", "mse-max", "ssim-max", "feat", "ssim-max+feat"],
                   help="score specs to compare")
    b.add_argument("--alpha", type=float, default=0.05)
    b.add_argument("--class", dest="cls", default="default", metavar="NAME", help="class name recorded")
    b.add_argument("--seed", type=int, default=0, help="seeds defect placement and the fit split")
    b.add_argument("--limit", type=int, default=0, help="use the first N test images (0: all)")
    b.add_argument("--object-level", type=int, default=20, help="defects centred on pixels brighter than this")
    b.add_argument("--texture", action="store_true", help="defects anywhere (textures), not on a bright object")
    b.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: its default)")
    b.add_argument("--out", default="defects", help="output prefix")
    b.set_defaults(func=_guarded(cmd_bench_detect))

    d = sub.add_parser("detector", help="per-class detector training and evaluation")
    dsub = d.add_subparsers(dest="detector_command", metavar="COMMAND", required=True)
    t = dsub.add_parser("train-per-class", formatter_class=H, help="train, export and calibrate one model per class",
                        description="One model per subfolder of DATA, gathered in OUT with a detector.json routing "
                                    "each class to its model; a held-out part of each class calibrates it.")
    t.add_argument("data", help="folder with one subfolder of normal images per class")
    t.add_argument("--out", required=True, help="detector directory to write")
    t.add_argument("--runs", help="training run folders; None: runs/<OUT name>")
    t.add_argument("--cal-fraction", type=float, default=0.1, help="held out of each class for calibration")
    t.add_argument("--alpha", type=float, help="None: the smallest of 0.01, 0.05, 0.1, 0.2 the hold-out allows")
    t.add_argument("--score", type=_score_spec, help="None: " + _default_score())
    t.add_argument("--noise", default=_default_noise(), help="training input corruption (aekit train --noise); "
                   "'' for plain training")
    t.add_argument("--ratio", type=int, choices=(4, 9), default=4, help="latent ratio 1/N of each class's model")
    t.add_argument("--width", type=int, default=32, help="base channel width of each model")
    t.add_argument("--blocks", type=int, default=1, help="residual blocks per resolution")
    t.add_argument("--epochs", type=int, default=80, help="training epochs per class (80 beat 40 on local defects)")
    t.add_argument("--batch-size", type=int, default=64, help="training batch size")
    t.add_argument("--lr", type=float, default=2e-3, help="learning rate")
    t.add_argument("--loss", default="mse", help="reconstruction loss (aekit train --loss)")
    t.add_argument("--size", type=int, default=0, help="scale-crop training images to this side (0: use as they are)")
    t.add_argument("--channels", type=int, choices=(1, 3), help="None: from the first image")
    t.add_argument("--seed", type=int, default=0, help="seed of the training runs and the calibration split")
    t.add_argument("--force", action="store_true", help="replace an existing detector directory")
    t.set_defaults(func=cmd_train_per_class)

    a = dsub.add_parser("assemble", formatter_class=H, help="gather per-class model folders into a detector directory",
                        description="Copy model folders (one per class, e.g. from `aekit train DATA/bag` + `aekit export`) "
                                    "into OUT and write OUT/detector.json routing each class to its model.")
    a.add_argument("out", help="detector directory to write")
    a.add_argument("models", nargs="+", metavar="CLASS=MODEL_DIR", help="e.g. bag=models/bag coat=models/coat")
    a.add_argument("--force", action="store_true", help="replace an existing detector directory")
    a.set_defaults(func=cmd_assemble)

    e = dsub.add_parser("evaluate", formatter_class=H, help="AUROC, AUPRC, FPR and recall on labelled images",
                        description="LABELLED_DIR holds class subfolders (each calibrated class is normal, the other "
                                    "subfolders its anomalies: one-vs-rest), or with --class NAME a 'good' (or 'normal') "
                                    "subfolder and anomaly subfolders. Writes OUT.json, OUT.md and OUT_roc.png.")
    e.add_argument("model", type=model_arg, help="calibrated model folder, detector directory or shipped model's name")
    e.add_argument("labelled_dir")
    e.add_argument("--class", dest="cls", metavar="NAME", help="evaluate one class: LABELLED_DIR/{good|normal} vs the other subfolders")
    e.add_argument("--alpha", type=float, help="false-positive rate; None: the calibrated one")
    e.add_argument("--out", default="evaluation", help="output prefix")
    _job_args(e)
    e.set_defaults(func=cmd_evaluate)


def _score_spec(v: str) -> str:
    from aekit.detector.scores import check_score

    try:
        return check_score(v)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _default_score() -> str:
    from aekit.detector.model import DEFAULT_SCORE

    return DEFAULT_SCORE


def _default_noise() -> str:
    from aekit.detector.perclass import PerClassConfig

    return PerClassConfig.noise


def _guarded(cmd: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Any failure the job did not foresee exits 2 with one line (never 1, which means 'anomalies
    flagged'); known errors keep the CLI's own one-line handling."""

    @functools.wraps(cmd)
    def run(args: argparse.Namespace) -> int:
        try:
            return cmd(args)
        except (KeyboardInterrupt, ValueError, FileNotFoundError):
            raise
        except Exception as e:
            if type(e).__module__.startswith("aekit") and type(e).__name__.endswith("Error"):
                raise  # the CLI prints these as one line and exits 2
            where = getattr(e, "filename", None) or getattr(args, "src", None) or getattr(args, "normal_dir", "")
            print(f"aekit {args.command}: error: {where}: unexpected {type(e).__name__}: {e}".replace("\n", " "),
                  file=sys.stderr)
            return 2

    return run


def _job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="onnxruntime device (auto: CUDA when a GPU is visible); calibrate and screen on one"
                   " kind of device for bit-identical scores")
    p.add_argument("--batch-size", type=int, default=64, help="images per onnxruntime call")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: its default)")


def _job_config(args: argparse.Namespace):
    from aekit.detector.jobs import ScreenConfig

    return ScreenConfig(device=args.device, batch_size=args.batch_size, threads=args.threads)


def _fmt(t: float | None) -> str:
    return "inf" if t is None or math.isinf(t) else f"{t:.6g}"


def cmd_calibrate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aekit import zoo
    from aekit.cli import CLIError
    from aekit.detector.jobs import calibrate_folder

    if not Path(args.model).exists() and zoo.path(args.model):  # calibration writes into the model folder
        raise CLIError(f"{args.model} is a shipped model (inside the installed package): calibrate a copy, "
                       f"cp -r {zoo.path(args.model)} models/{args.model} && aekit calibrate models/{args.model} ...")
    if args.backbone_weights:
        from aekit.detector.backbone import BackboneConfig, export_backbone
        from aekit.detector.model import load_routes

        for d in sorted(set(load_routes(args.model).values())):
            print(f"exported {export_backbone(args.backbone_weights, d, BackboneConfig(args.backbone, args.backbone_side))}")
    rep = calibrate_folder(args.model, args.normal_dir, args.cls, args.alpha, args.score, args.latent,
                           _job_config(args), args.fit_fraction, args.fit_dir)
    for msg in rep.failed:
        print(f"error: {msg}", file=sys.stderr)
    print(f"calibrated {len(rep.classes)} class(es), score {rep.score}, alpha {rep.alpha:g}"
          + (" (default for this folder)" if args.alpha is None else "") + ":")
    for c, v in rep.classes.items():
        fit = f" (+{v['n_fit']} fitting the score)" if v["n_fit"] else ""
        print(f"  {c:24s} n={v['n']:6d}  threshold={_fmt(v['threshold'])}{fit}")
    print("stored in " + ", ".join(map(str, rep.written)))
    if rep.failed:
        print(f"{len(rep.failed)} file(s)/class(es) failed; calibrated on the rest", file=sys.stderr)
    return 2 if rep.failed else 0


def cmd_screen(args: argparse.Namespace) -> int:
    from aekit.detector.jobs import screen_folder

    if args.engine == "ray":
        from aekit.detector.ray_jobs import screen_folder_ray
        from aekit.export.engine_ray import ray_config

        cfg = _job_config(args)
        cfg.threads = cfg.threads or max(1, round(args.actor_cpus))
        rep = screen_folder_ray(args.model, args.src, args.out, args.cls, args.alpha, args.heatmaps, cfg,
                                ray_config(args, args.batch_size), args.maps)
    else:
        rep = screen_folder(args.model, args.src, args.out, args.cls, args.alpha, args.heatmaps, _job_config(args),
                            args.maps)
    for msg in rep.warnings:
        print(f"WARNING: {msg}", file=sys.stderr)
    for msg in rep.failed:
        print(f"error: {msg}", file=sys.stderr)
    if not rep.outputs:  # a source without images: the warning above, nothing written, exit 0
        return rep.exit_code
    print(f"{'class':24s} {'images':>7s} {'flagged':>8s} {'errors':>7s} {'threshold':>11s}  "
          f"(score {rep.score or 'none: no class calibrated'}, alpha {rep.alpha:g})")
    for c, s in sorted(rep.per_class.items()):
        t = _fmt(s.threshold) if s.calibrated else "-"
        print(f"{c:24s} {s.n:7d} {s.flagged:8d} {s.errors:7d} {t:>11s}")
    print(f"{rep.flagged} image(s) flagged; records: " + ", ".join(map(str, rep.outputs)))
    if rep.failed:
        print(f"{len(rep.failed)} error(s): exit 2", file=sys.stderr)
    return rep.exit_code


def cmd_train_per_class(args: argparse.Namespace) -> int:
    from aekit.detector.perclass import PerClassConfig, train_per_class

    cfg = PerClassConfig(**{k: getattr(args, k) for k in PerClassConfig.__dataclass_fields__ if hasattr(args, k)})
    out, failed = train_per_class(args.data, args.out, cfg, runs=args.runs, force=args.force)
    print(f"detector directory {out}")
    for msg in failed:
        print(f"error: {msg}", file=sys.stderr)
    return 2 if failed else 0


def cmd_assemble(args: argparse.Namespace) -> int:
    from aekit.detector.perclass import assemble

    pairs = [m.split("=", 1) for m in args.models]
    bad = [m for m, p in zip(args.models, pairs) if len(p) != 2 or not p[0] or not p[1]]
    if bad:
        raise ValueError(f"expected CLASS=MODEL_DIR, got {', '.join(bad)}")
    out = assemble(args.out, dict(pairs), args.force)
    print(f"detector directory {out}: {', '.join(p[0] for p in pairs)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from aekit.detector.evaluate import evaluate_folder

    res = evaluate_folder(args.model, args.labelled_dir, args.out, args.cls, args.alpha, _job_config(args))
    print(res.markdown)
    print("wrote " + ", ".join(map(str, res.outputs)))
    for msg in res.failed:
        print(f"error: {msg}", file=sys.stderr)
    return 2 if res.failed else 0


def cmd_bench_detect(args: argparse.Namespace) -> int:
    from aekit.detector.defect_bench import main as bench

    args.argv = [str(args.model), str(args.test_dir), "--cal", str(args.cal), "--score", *args.score,
                 "--alpha", str(args.alpha), "--class", args.cls, "--seed", str(args.seed), "--out", str(args.out)]
    args.argv += (["--texture"] if args.texture else ["--object-level", str(args.object_level)])
    args.argv += (["--limit", str(args.limit)] if args.limit else []) + ["--threads", str(args.threads)]
    return bench(args)
