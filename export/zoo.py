"""The shipped models (aekit/zoo): list them, print their cards, check cards against models.

    aekit models                 # name, task, ratio, channels, size, training data, held-out figures, id
    aekit models show photos-r4  # the model card (training recipe, held-out RD figures, limits)
    aekit models check           # every card agrees with its model (id, file sizes, figures present)
Names resolve in every command through aekit.export.manifest.resolve_model; the ids are checked
against the files on load (load_manifest). Cards are written by aekit.bench.zoo (bench/train_zoo.sh).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from aekit import zoo
from aekit.export.manifest import ModelError, load_manifest

CARD_FORMAT = "aekit-model-card"
CARD_VERSION = 1
CARD_KEYS = ("name", "model_id", "task", "summary", "files", "model", "training", "heldout", "roundtrip", "limits")
TRAINING_KEYS = ("data", "split", "command", "export_command", "seed", "epochs", "time_s", "machine")
HELDOUT_KEYS = ("set", "images", "results", "points", "default")
POINT_KEYS = ("bpp", "psnr", "mean_bytes")


def load_card(name_or_dir: str | Path) -> dict[str, Any]:
    """The card of a shipped model (name or folder); ModelError if it has none."""
    d = zoo.path(str(name_or_dir)) or Path(name_or_dir)
    try:
        card = json.loads((d / zoo.CARD).read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{d}: no readable model card ({zoo.CARD}: {e})") from None
    if card.get("format") != CARD_FORMAT:
        raise ModelError(f"{d / zoo.CARD}: not an aekit model card")
    return card


def folder_files(d: Path) -> dict[str, int]:
    """Bytes of every file of a model folder except its card (what the card's `files` records)."""
    return {p.name: p.stat().st_size for p in sorted(d.iterdir()) if p.is_file() and p.name != zoo.CARD}


def check(name: str) -> list[str]:
    """Disagreements between a shipped model and its card ([] when they agree)."""
    d = zoo.path(name)
    if d is None:
        return [f"{name}: not a shipped model (have: {', '.join(zoo.names())})"]
    try:
        m, card = load_manifest(d), load_card(d)  # load_manifest also checks the id against the files
    except ModelError as e:
        return [str(e)]
    bad = [f"{name}: card lacks {k}" for k in CARD_KEYS if k not in card]
    if card.get("name") != name:
        bad.append(f"{name}: card names {card.get('name')!r}")
    if card.get("model_id") != m["model_id"]:
        bad.append(f"{name}: card says model {card.get('model_id')}, the files are {m['model_id']}")
    if card.get("files") != folder_files(d):
        bad.append(f"{name}: card files {card.get('files')} != folder {folder_files(d)}")
    bad += [f"{name}: card training lacks {k}" for k in TRAINING_KEYS if k not in card.get("training", {})]
    held = card.get("heldout", {})
    bad += [f"{name}: card heldout lacks {k}" for k in HELDOUT_KEYS if k not in held]
    for p in held.get("points", []) + [held.get("default") or {}]:
        bad += [f"{name}: held-out point {p} lacks {k}" for k in POINT_KEYS if not isinstance(p.get(k), (int, float))]
    if card.get("task") == "detector":
        cal = m.get("calibration") or {}
        if not cal or "detector" not in card:
            bad.append(f"{name}: a detector card needs the model's calibration and the card's detector figures")
    return bad


def size_mb(d: Path) -> float:
    return sum(folder_files(d).values()) / 1e6


def rows() -> list[dict[str, Any]]:
    """One summary per shipped model: what `aekit models` prints and the README table shows."""
    out = []
    for name in zoo.names():
        d = zoo.path(name)
        m = json.loads((d / zoo.MANIFEST).read_text())  # listing does not hash; loading a model does
        try:
            card = load_card(d)
        except ModelError:
            card = {}
        default = card.get("heldout", {}).get("default") or {}
        out.append({"name": name, "task": card.get("task", "?"), "arch": m.get("arch", "?"), "ratio": m["ratio"],
                    "channels": m["channels"], "size_mb": round(size_mb(d), 2),
                    "data": card.get("trained_on") or card.get("training", {}).get("data", "?"), "heldout_set": card.get("heldout", {}).get("set", "?"),
                    "psnr": default.get("psnr"), "bpp": default.get("bpp"), "model_id": m["model_id"],
                    "detector": card.get("detector")})
    return out


def _f(x: Any, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def table(markdown: bool = False) -> str:
    """The shipped models as a text table (or the README's markdown table)."""
    head = ["name", "task", "ratio", "ch", "MB", "trained on", "held-out PSNR dB / bpp", "model id"]
    body = []
    for r in rows():
        figure = f"{_f(r['psnr'], '.2f')} / {_f(r['bpp'], '.3f')}"
        if r["detector"]:
            figure += f"; AUROC {_f(r['detector'].get('auroc'), '.3f')}, FPR {_f(r['detector'].get('fpr'), '.3f')}"
        body.append([r["name"], r["task"], f"1/{r['ratio']}", str(r["channels"]), f"{r['size_mb']:.2f}",
                     r["data"], figure, r["model_id"]])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    total = sum(r["size_mb"] for r in rows())
    return "\n".join([fmt.format(*head)] + [fmt.format(*b) for b in body] + [f"{len(body)} models, {total:.2f} MB in {zoo.ZOO_DIR}"])


def render(card: dict[str, Any]) -> str:
    """A model card as markdown (`aekit models show NAME`)."""
    t, h = card["training"], card["heldout"]
    lines = [f"# {card['name']} ({card['task']}, model {card['model_id']})", "", card["summary"], "",
             "## Model", "", ", ".join(f"{k} {v}" for k, v in card["model"].items()),
             "files: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in card["files"].items()), "",
             "## Training", "", f"- data: {t['data']}", f"- split: {t['split']}", f"- command: `{t['command']}`",
             f"- export: `{t['export_command']}`", f"- seed {t['seed']}, {t['epochs']} epochs, {t['time_s']} s on {t['machine']}"]
    lines += [f"- {k}: {v}" for k, v in t.items() if k not in TRAINING_KEYS]
    lines += ["", f"## Held-out results: {h['set']} ({h['images']} images)", "", f"From `{h['results']}`"
              + (f" (`{h['command']}`)" if h.get("command") else "") + ".", "",
              "| point | bytes | bpp | PSNR dB | MS-SSIM | JPEG PSNR at equal bytes | WebP PSNR at equal bytes |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for p in h["points"]:
        lines.append(f"| {p.get('label', '')}{' (default)' if p == h['default'] else ''} | {p['mean_bytes']:.0f} | "
                     f"{p['bpp']:.3f} | {p['psnr']:.2f} | {_f(p.get('msssim'), '.4f')} | {_f(p.get('jpeg_psnr'), '.2f')} | "
                     f"{_f(p.get('webp_psnr'), '.2f')} |")
    if h.get("bd"):
        lines += ["", "BD-rate (negative: fewer bits than the anchor at equal PSNR) / BD-PSNR: "
                  + "; ".join(f"vs {a}: {_f(v.get('bd_rate'), '+.1f')} % / {_f(v.get('bd_psnr'), '+.2f')} dB"
                              for a, v in h["bd"].items())]
    if card.get("detector"):
        det = card["detector"]
        lines += ["", "## Detector", ""] + [f"- {k}: {v}" for k, v in det.items() if k != "per_class"]
        per = det.get("per_class") or {}
        if per:
            keys = list(next(iter(per.values())))
            lines += ["", "| class | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
            lines += [f"| {c} | " + " | ".join(_f(v.get(k), ".3f") for k in keys) + " |" for c, v in per.items()]
    if card.get("speed"):  # cards built since issue 17: compute and measured speed, a property of the model
        sp = card["speed"]
        g, mps, on = sp.get("gflop_per_mp") or {}, sp.get("mp_per_s") or {}, sp.get("measured_on") or {}
        lines += ["", "## Speed", "", f"- GFLOP per megapixel: encoder {_f(g.get('encoder'), '.1f')}, decoder "
                  f"{_f(g.get('decoder'), '.1f')}",
                  f"- measured MP/s at {sp.get('side')} px: encode {_f(mps.get('encoder'), '.2f')}, decode "
                  f"{_f(mps.get('decoder'), '.2f')} ({on.get('threads', 1)} thread, {on.get('cpu', '?')}, "
                  f"onnxruntime {on.get('onnxruntime', '?')})"]
    r = card["roundtrip"]
    lines += ["", "## Round trip (tested)", "", f"{r['image']}: {r['psnr_db']:.2f} dB (test floor {r['floor_db']:.1f} dB)",
              "", "## Known limits", ""] + [f"- {x}" for x in card["limits"]]
    return "\n".join(lines) + "\n"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the models shipped with aekit (the zoo); `models show NAME` prints a card",
                       description="Shipped models work by name wherever a model folder does: "
                       "`aekit compress photos/ -m photos-r4 -o latents/`.")
    p.add_argument("action", nargs="?", choices=("list", "show", "check"), default="list",
                   help="list (default), show NAME (the model card), check (cards agree with the models)")
    p.add_argument("name", nargs="?", help="model name (show)")
    p.add_argument("--json", action="store_true", help="list: one JSON object per model; show: the raw card")
    p.add_argument("--markdown", action="store_true", help="list: the README's markdown table")
    p.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    from aekit.cli import CLIError

    if args.action == "show":
        if not args.name or zoo.path(args.name) is None:
            raise CLIError(f"models show: {args.name!r} is not a shipped model (have: {', '.join(zoo.names())})")
        card = load_card(args.name)
        print(json.dumps(card, indent=1) if args.json else render(card), end="" if not args.json else "\n")
        return 0
    if args.action == "check":
        bad = [b for n in zoo.names() for b in check(n)]
        print("\n".join(bad) if bad else f"{len(zoo.names())} shipped models agree with their cards")
        return 2 if bad else 0
    print("\n".join(json.dumps(r) for r in rows()) if args.json else table(args.markdown))
    return 0
