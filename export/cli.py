"""Subcommands `aekit export` and `aekit info` (torch imported only by export)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX (encoder, decoder, manifest)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint file, e.g. runs/NAME/best.pt")
    p.add_argument("--out", required=True, help="model folder to write, e.g. models/NAME")
    p.add_argument("--fp16", action="store_true", help="also write fp16 ONNX models (GPU inference)")
    p.add_argument("--force", action="store_true", help="replace an existing model folder")
    p.set_defaults(func=cmd_export)
    i = sub.add_parser("info", help="describe an exported model (or a checkpoint)")
    i.add_argument("model", help="model folder, manifest.json, or a .pt checkpoint")
    i.add_argument("--json", action="store_true", help="print the raw manifest")
    i.set_defaults(func=cmd_info)
    from aekit.export.features_cli import register as register_features  # aekit features, aekit probe

    register_features(sub)


def cmd_export(args: argparse.Namespace) -> int:
    from aekit.export.onnx import export_model

    out = export_model(args.checkpoint, args.out, fp16=args.fp16, force=args.force)
    print(out)
    return 0


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
