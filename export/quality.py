"""`aekit add-quality`: finer quality steps for an exported hyperprior model, old files still decoding.

    aekit add-quality models/photos-r4-hq --step 0.5 --out models/photos-r4-hq-q13

A gdn-hp model's quality is a step Δ of the uniform quantiser (ŷ = Δ·k) and the integer thresholds that pick
a Gaussian table per position (codec/FORMAT.md, "Hyperprior models"); the tables and networks are the same at
every Δ. Export offers aekit.entropy_models.QUALITY_STEPS down to 0.75; a model whose latent still fits the
8-bit symbols at a finer step gains PSNR there, at more bytes. This adds such steps after the finest one.

The model id hashes the quality table, so the extended model has a new id. Its manifest names the id it
extends and how many qualities that model had (`supersedes`, checked by load_manifest like the id itself):
aekit finds it for files written with the old id and decodes them with the old qualities, unchanged.
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

CHECK_CROPS, CHECK_SIDE = 8, 256  # as export's default-quality check: up to 8 centre crops of 256 px


def thresholds(step: float, shift: int, frac_bits: int) -> list[int]:
    """The integer scale thresholds of quality step Δ: T_k = ⌊(ln s_k + ln Δ)·2^(shift + frac_bits)⌋ for the
    coder's table scales s_k, k < 63 (aekit.entropy_models.scale_table; shift: the integer hyper decoder's
    last layer's). The export rule (aekit.export.onnx._export_hyper): a position's log σ̂ at or below T_k
    takes table k or a smaller one."""
    from aekit.entropy_models import scale_table

    log_s = np.log(scale_table())[:-1]
    return [int(v) for v in np.floor((log_s + math.log(step)) * 2.0 ** (shift + frac_bits))]


def add_qualities(model_dir: str | Path, steps: list[float], images: str | Path | None = None,
                  out: str | Path | None = None, force: bool = False) -> dict[str, Any]:
    """Append quality steps (each finer than the model's finest, a multiple of 1/4) to an exported gdn-hp model.

    Each step's thresholds follow the export rule (checked first: the rule must give the model's own
    thresholds back exactly). A step is refused when more than MAX_CLIPPED of y on the check crops (up to 8
    centre crops of 256 px of `images`, else of the model's training data or the bundled photos) falls beyond
    the 8-bit symbols. Every new quality codes and decodes those crops (RDOQ, the smallest payload) and is
    recorded with their PSNR and payload bpp (its "check").

    Writes the manifest in place (atomically; the networks are untouched), or a copy of the folder to `out`.
    Returns {"model_id", "supersedes", "qualities": the new entries}. Raises ValueError for a model without a
    hyperprior, a step that is not finer or not a multiple of 1/4, clipping, thresholds that do not follow
    the rule, a shipped model changed in place, or an existing `out` without force.
    """
    from aekit import zoo
    from aekit.export.manifest import SUPERSEDES_KEY, entropy_bytes, load_manifest, model_id_of, save_manifest
    from aekit.export.onnx import MAX_CLIPPED  # export's rule: at most this share of y beyond the 8-bit symbols
    from aekit.export.rescale import check_crops, rd_points
    from aekit.export.runtime import Runtime

    src = Path(model_dir)
    m = load_manifest(src)
    mid, ent = m["model_id"], m.get("entropy") or {}
    if "hyper" not in ent:
        raise ValueError(f"{src}: model {mid} has no hyperprior; a factorized-prior model's qualities are tables "
                         "of its trained prior: export it again from its checkpoint")
    if out is None and zoo.contains(src):
        raise ValueError(f"{src}: a shipped model; write the extended copy elsewhere with --out")
    if out is not None and Path(out).exists() and not force:
        raise ValueError(f"{out}: exists; --force replaces it")
    hyper, qualities = ent["hyper"], ent["qualities"]
    shift, frac = int(hyper["layers"][-1]["shift"]), int(hyper["frac_bits"])
    for q in qualities:
        if thresholds(float(q["step"]), shift, frac) != list(q["thresholds"]):
            raise ValueError(f"{src}: model {mid}'s quality {q['quality']} thresholds do not follow the export rule; "
                             "export the model again with this aekit")
    finest = min(float(q["step"]) for q in qualities)
    steps = sorted({float(s) for s in steps}, reverse=True)
    for s in steps:
        if not s < finest or s * 4 != int(s * 4) or s < 0.25:
            raise ValueError(f"step {s:g}: a new quality needs a step finer than the model's finest ({finest:g}), "
                             "a multiple of 1/4 and at least 0.25")
    crops, source = check_crops(m, CHECK_CROPS, CHECK_SIDE, images)
    rt = Runtime(src, device="cpu")
    ys = [rt.encode(im[None]) for im in crops]
    half = (int(m["latent"]["levels"]) - 1) // 2
    added = []
    for s in steps:
        clipped = float(np.mean([float((np.abs(np.rint(y / np.float32(s))) > half).mean()) for y in ys]))
        if clipped > MAX_CLIPPED:
            raise ValueError(f"step {s:g}: {clipped:.2e} of y on the check crops ({source}) falls beyond the 8-bit "
                             f"symbols (at most {MAX_CLIPPED:g}); choose a coarser step")
        added.append({"quality": len(qualities) + len(added) + 1, "step": s, "clipped": clipped,
                      "thresholds": thresholds(s, shift, frac), "step4": int(4 * s)})
    new = {k: v for k, v in m.items() if k != "_dir"}
    new["entropy"] = {**ent, "qualities": [*qualities, *added]}
    new[SUPERSEDES_KEY] = [*(m.get(SUPERSEDES_KEY) or []), {"model_id": mid, "qualities": len(qualities)}]
    points = rd_points(src, crops, {**new, "_dir": m["_dir"]}, [q["quality"] for q in added], verify=True)
    for q in added:  # the check is part of the hashed quality table: recorded before the id is computed
        _, bpp, psnr = points[q["quality"]]
        q["check"] = {"psnr": round(psnr, 3), "bpp": round(bpp, 4), "images": len(crops), "measured": "payload"}
    new["model_id"] = model_id_of(src / m["files"]["encoder"], src / m["files"]["decoder"], entropy_bytes(new))
    if out is None:
        save_manifest(src, new)
        load_manifest(src)  # the new id and supersedes entries verify against the folder
        dest = src
    else:
        dest = Path(out)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.resolve().parent) as tmp:
            staged = Path(tmp) / "model"
            shutil.copytree(src, staged, ignore=shutil.ignore_patterns("card.json"))
            save_manifest(staged, new)
            load_manifest(staged)  # the id and supersedes entries verify before the folder appears
            if dest.exists():
                shutil.rmtree(dest)
            staged.replace(dest)
    return {"model_id": new["model_id"], "folder": str(dest), "supersedes": new[SUPERSEDES_KEY],
            "check_images": source, "qualities": added}


def register(sub: argparse._SubParsersAction) -> None:
    from aekit.export.manifest import model_arg

    p = sub.add_parser("add-quality", help="add finer quality steps to an exported gdn-hp model (more PSNR at more "
                       "bytes): a new model id whose folder still decodes the old id's files",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", type=model_arg, help="exported gdn-hp model folder or a shipped model's name (with --out)")
    p.add_argument("--step", type=float, action="append", required=True, help="quantisation step Δ of a new quality, "
                   "finer than the model's finest and a multiple of 1/4 (repeat for several), e.g. 0.5")
    p.add_argument("--images", help="folder of images for the clipping check and the quality's recorded "
                   "PSNR/bpp (default: the model's training data, else the bundled photos)")
    p.add_argument("--out", help="write an extended copy of the folder here (default: change the folder in place)")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")
    p.set_defaults(func=cmd_add_quality)


def cmd_add_quality(args: argparse.Namespace) -> int:
    r = add_qualities(args.model, args.step, args.images, args.out, args.force)
    for q in r["qualities"]:
        print(f"quality {q['quality']}: step {q['step']:g}, {q['check']['psnr']:.2f} dB at {q['check']['bpp']:.3f} bpp "
              f"of payload on {q['check']['images']} check crops ({r['check_images']})")
    old = r["supersedes"][-1]
    print(f"{r['folder']}: model {r['model_id']}; decodes files of model {old['model_id']} (its qualities "
          f"1..{old['qualities']}) too")
    return 0
