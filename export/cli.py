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
    p = sub.add_parser("export", help="export a checkpoint to ONNX (encoder, decoder, manifest)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint file, e.g. runs/NAME/best.pt")
    p.add_argument("--out", required=True, help="model folder to write, e.g. models/NAME")
    p.add_argument("--fp16", action="store_true", help="also write fp16 ONNX models (GPU inference)")
    p.add_argument("--force", action="store_true", help="replace an existing model folder (its calibration "
                   "is kept if the model is the same, else dropped with a warning)")
    p.set_defaults(func=cmd_export)
    i = sub.add_parser("info", help="describe an exported model (or a checkpoint)")
    i.add_argument("model", type=model_arg, help="model folder, manifest.json, a .pt checkpoint, or a shipped model's name")
    i.add_argument("--json", action="store_true", help="print the raw manifest")
    i.set_defaults(func=cmd_info)
    from aekit.export.features_cli import register as register_features  # aekit features (aekit probe: aekit.bench.probe)

    register_features(sub)


def cmd_export(args: argparse.Namespace) -> int:
    from aekit.export.onnx import export_model

    previous = read_calibration(Path(args.out)) if args.force else None
    out = export_model(args.checkpoint, args.out, fp16=args.fp16, force=args.force)
    if previous:
        carry_calibration(out, *previous)
    print(out)
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

        print(checkpoint_info(args.model))
        return 0
    from aekit.export.manifest import describe, load_manifest

    m = load_manifest(args.model)
    if args.json:
        print(json.dumps({k: v for k, v in m.items() if k != "latent_hist"}, indent=1))
    else:
        print(describe(m))
    return 0
