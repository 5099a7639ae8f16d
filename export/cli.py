"""Subcommands `aekit export` and `aekit info` (torch imported only by export).

`export --force` into a calibrated model folder keeps the calibration when the new export is
the same model (same model id), and otherwise says that it was dropped and how to redo it.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
CALIBRATION_ARRAYS = "calibration.npz"  # the detector's feature banks beside manifest.json


def register(sub: argparse._SubParsersAction) -> None:
    from aekit.export.manifest import model_arg
    from aekit.export.zoo import register as register_zoo  # aekit models: the shipped models

    register_zoo(sub)
    from aekit.export.context import register as register_context  # aekit add-context (coder 6)

    register_context(sub)
    from aekit.export.quality import register as register_quality  # aekit add-quality (finer steps, same networks)

    register_quality(sub)
    p = sub.add_parser("export", help="export a checkpoint to ONNX (encoder, decoder, manifest)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint file, e.g. runs/NAME/best.pt")
    p.add_argument("--out", required=True, help="model folder to write, e.g. models/NAME")
    p.add_argument("--fp16", action="store_true", help="also write fp16 ONNX models (GPU inference)")
    p.add_argument("--weights", choices=("fp32", "fp16"), default="fp32", help="how the fp32 networks store their "
                   "weights: fp16 halves the files (computation stays fp32; refused if images coded with it fall below "
                   "50 dB PSNR against the fp32 networks)")
    p.add_argument("--force", action="store_true", help="replace an existing model folder (its calibration "
                   "is kept if the model is the same, else dropped with a warning)")
    p.add_argument("--no-lean", dest="lean", action="store_false", help="keep the exporter's graph as it is "
                   "(no BatchNorm folding, activation moves or sub-pixel ConvTranspose; README: Lean graphs and int8)")
    p.add_argument("--int8", action="store_true", help="ship an int8 (QDQ) decoder, refused if it loses more than "
                   "--int8-max-loss dB PSNR against the fp32 one; a model of its own id")
    p.add_argument("--int8-encoder", action="store_true", help="with --int8: quantise the encoder too (faster "
                   "compress, but latent symbols may then differ between machines; flagged in the manifest)")
    add_int8_check_args(p, "with --int8: ")
    p.add_argument("--no-speed", dest="speed", action="store_false", help="do not time the model (the manifest "
                   "still gets GFLOP per megapixel)")
    p.set_defaults(func=cmd_export)
    a = sub.add_parser("add-int8", help="add int8 variants of an exported model's networks: `aekit decompress "
                       "--int8` (and with --encoder `aekit compress --int8`) then use them (same model id)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a.add_argument("model", type=model_arg, help="exported model folder (fp32 or --weights fp16; not an `export --int8` one)")
    a.add_argument("--encoder", action="store_true", help="also add an int8 encoder (aekit compress --int8; its "
                   "symbols differ from fp32 and may differ between CPUs, every file still decodes everywhere)")
    add_int8_check_args(a)
    a.set_defaults(func=cmd_add_int8)
    r = sub.add_parser("rescale", help="a model on a resampled pixel grid for another ratio (e.g. a 1/9 model "
                       "at 1.5x the resolution is exactly 1/4): same networks, tables and hyperprior, its own model id",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("model", type=model_arg, help="exported model folder or a shipped model's name")
    r.add_argument("--ratio", type=int, required=True, help="the new ratio (f'^2 * C = ratio * c_y must have an "
                   "integer factor f')")
    r.add_argument("--out", required=True, help="model folder to write")
    r.add_argument("--force", action="store_true", help="replace an existing folder")
    r.add_argument("--check-images", type=int, default=8, help="256-px crops that choose the new default quality "
                   "(the source's λ, the new model's D + λ·R)")
    r.add_argument("--check-data", help="image folder of those crops (default: the source's training data where it "
                   "exists here, else the photos bundled with scikit-image and scikit-learn)")
    r.set_defaults(func=cmd_rescale)
    im = sub.add_parser("import", help="an exported gdn, gdn-hp or klt model (e.g. a shipped one) back to a training "
                        "checkpoint for `aekit train --init-from`: fine-tune it on your images",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    im.add_argument("model", type=model_arg, help="exported model folder or a shipped model's name")
    im.add_argument("--out", required=True, help="checkpoint file to write, e.g. runs/photos-r9/imported.pt")
    im.add_argument("--force", action="store_true", help="replace an existing file")
    im.set_defaults(func=cmd_import)
    i = sub.add_parser("info", help="describe an exported model (or a checkpoint)")
    i.add_argument("model", type=model_arg, help="model folder, manifest.json, a .pt checkpoint, or a shipped model's name")
    i.add_argument("--json", action="store_true", help="print the raw manifest (a .pt checkpoint: its fields as JSON)")
    i.set_defaults(func=cmd_info)
    from aekit.export.features_cli import register as register_features  # aekit features (aekit probe: aekit.bench.probe)

    register_features(sub)


def add_int8_check_args(p: argparse.ArgumentParser, when: str = "") -> None:
    """The int8 calibration and quality-check options shared by `aekit export --int8` and `aekit add-int8`."""
    p.add_argument("--calib-data", help=f"{when}image folder to calibrate on (default: the training data)")
    p.add_argument("--int8-check-data", help=f"{when}image folder for the PSNR check (default: images of the "
                   "calibration folder not calibrated on)")
    p.add_argument("--int8-max-loss", type=float, default=None, help=f"{when}largest mean PSNR loss in dB "
                   "vs fp32 on the check images (default 0.3)")


def cmd_export(args: argparse.Namespace) -> int:
    from aekit.export.onnx import export_model
    from aekit.export.quantize import INT8_MAX_LOSS_DB, Int8Config

    int8_only = [o for o, v in (("--int8-encoder", args.int8_encoder), ("--calib-data", args.calib_data),
                                ("--int8-check-data", args.int8_check_data),
                                ("--int8-max-loss", args.int8_max_loss is not None)) if v]
    if int8_only and not args.int8:
        raise ValueError(f"{', '.join(int8_only)} only apply with --int8")
    int8 = Int8Config(encoder=args.int8_encoder, calib_data=args.calib_data, check_data=args.int8_check_data,
                      max_loss_db=INT8_MAX_LOSS_DB if args.int8_max_loss is None else args.int8_max_loss) if args.int8 else None
    previous = read_calibration(Path(args.out)) if args.force else None
    out = export_model(args.checkpoint, args.out, fp16=args.fp16, force=args.force, lean=args.lean, int8=int8,
                       speed=args.speed, weights=args.weights)
    if previous:
        carry_calibration(out, *previous)
    print(out)
    return 0


def cmd_add_int8(args: argparse.Namespace) -> int:
    from aekit.export.quantize import INT8_MAX_LOSS_DB, Int8Config, add_int8_variants

    cfg = Int8Config(encoder=args.encoder, calib_data=args.calib_data, check_data=args.int8_check_data,
                     max_loss_db=INT8_MAX_LOSS_DB if args.int8_max_loss is None else args.int8_max_loss)
    got = add_int8_variants(args.model, cfg)
    parts = " and ".join(got["parts"])
    speed = ", ".join(f"{k} {v:.2f}x" for k, v in (got.get("speedup") or {}).items())
    print(f"{args.model}: int8 {parts} added ({got['psnr_loss_db']} dB PSNR lost against fp32 on "
          f"{got['check_images']} held-out images; speed-up {speed}); use them with "
          + ("`aekit compress --int8` and " if "encoder" in got["parts"] else "") + "`aekit decompress --int8`")
    slow = [k for k, v in (got.get("speedup") or {}).items() if v < 1]
    if slow:
        logging.getLogger(__name__).warning("note: the int8 %s ran slower than fp32 here (small networks gain little "
                                            "from int8); --int8 will not make them faster", " and ".join(slow))
    return 0


def cmd_rescale(args: argparse.Namespace) -> int:
    from aekit.export.rescale import rescale_model

    m = rescale_model(args.model, args.out, args.ratio, force=args.force, check_images=args.check_images,
                      check_data=args.check_data)
    r = m["rescaled"]
    dq = r.get("default_quality")
    print(f"{args.out}: model {m['model_id']}, ratio 1/{m['ratio']} ({m['latent_channels']} channels at H/{m['factor']}): "
          f"{r['from']} ({r['from_model_id']}, 1/{r['from_ratio']}) on a grid {r['scale']:g}x as fine"
          + (f"; default quality {dq['quality']} (the source's {dq['source_default']}, λ {dq['lambda']})" if dq else ""))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from aekit.export.importer import import_model, train_flags

    rec = import_model(args.model, args.out, force=args.force)
    errors = ", ".join(f"{k[:-6]} {v:.1e}" for k, v in rec.items() if k.endswith("_error"))
    lam = f" --rate-weight {rec['rate_weight']:g}" if rec.get("rate_weight") else ""
    r = rec.get("rescaled")
    grid = f" --grid-scale {r['grid_scale']:g}" if r else ""
    print(f"{args.out}: {rec['arch']} model {rec['model_id']} as a checkpoint (max relative error against the "
          f"graphs: {errors}; prior {rec['prior_excess_bits']:.4f} bits/symbol over its tables)"
          + (f"; a rescaled model: its source transform ({r['from']}, {r['from_model_id']}) on a grid "
             f"{r['grid_scale']:g}x as fine" if r else "") + "\n"
          f"fine-tune it: aekit train DATA {train_flags(rec['model_config'])}{grid} --init-from {args.out}{lam} "
          "--out RUN" + (f" (then aekit export, aekit rescale --ratio {r['ratio']})" if r else ""))
    return 0


def read_calibration(model_dir: Path) -> tuple[dict[str, Any], bytes | None] | None:
    """The calibration stored in an existing model folder (manifest entry, feature-bank bytes), if any."""
    try:
        cal = json.loads((model_dir / "manifest.json").read_text()).get("calibration")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(cal, dict):
        return None
    try:
        arrays = (model_dir / CALIBRATION_ARRAYS).read_bytes() if cal.get("arrays") else None
    except OSError:
        arrays = None
    return cal, arrays


def carry_calibration(out: Path, cal: dict[str, Any], arrays: bytes | None) -> bool:
    """Put a calibration back into a fresh export when it belongs to the same model; else warn."""
    from aekit.export.manifest import load_manifest, save_manifest
    from aekit.images import atomic_write_bytes

    m = load_manifest(out)
    classes = ", ".join(sorted(cal.get("classes") or {})) or "no classes"
    if cal.get("model_id") != m["model_id"] or (cal.get("arrays") and arrays is None):
        why = (f"it was made for model {cal.get('model_id')}, the new export is model {m['model_id']}"
               if cal.get("model_id") != m["model_id"] else f"its {CALIBRATION_ARRAYS} was missing")
        log.warning("warning: %s: the previous calibration (%s) was dropped: %s; run `aekit calibrate %s "
                    "NORMAL_DIR` again", out, classes, why, out)
        return False
    if arrays is not None:
        atomic_write_bytes(out / CALIBRATION_ARRAYS, arrays)
    m["calibration"] = cal
    save_manifest(out, m)
    log.info("%s: kept the previous calibration (%s): the export is the same model %s", out, classes, m["model_id"])
    return True


def cmd_info(args: argparse.Namespace) -> int:
    import json

    if Path(args.model).suffix == ".pt":
        from aekit.export.onnx import checkpoint_info

        print(checkpoint_info(args.model, as_json=args.json))
        return 0
    from aekit.export.manifest import describe, load_manifest

    m = load_manifest(args.model)
    if args.json:
        print(json.dumps({k: v for k, v in m.items() if k != "latent_hist"}, indent=1))
    else:
        print(describe(m))
    return 0
