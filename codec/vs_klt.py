"""The shipped models' standing against the klt baseline's envelope (issue 13's floor), as a markdown table.

    python -m aekit.codec.vs_klt KLT_RESULTS.json MODELS_RESULTS.json OUT.md [--command "how it was made"]

Both inputs are `aekit evaluate` results.json files of the same photos; KLT's `klt`-arch rows are the envelope.
Each model gets its BD-rate / BD-PSNR against the klt (codec/evaluate.py's rule, over the overlapping range) and
the number of klt points it beats: a point is beaten when the model has one with no more bits per pixel and more
PSNR. Used by codec/record_klt.sh.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def beats(points: list[tuple[float, float]], k: dict[str, Any]) -> bool:
    """Some (bpp, PSNR) of points has no more bits than klt point k and more PSNR."""
    return any(b <= k["bpp"] and p > k["psnr"] for b, p in points)


def vs_klt(klt_file: str | Path, models_file: str | Path, command: str = "bash codec/record_klt.sh") -> str:
    """The markdown report (see the module docstring). ValueError when KLT_RESULTS has no klt rows."""
    from aekit.codec.evaluate import _bd

    klt = [m for m in json.loads(Path(klt_file).read_text())["models"] if m.get("arch") == "klt"]
    if not klt:
        raise ValueError(f"{klt_file}: no klt rows")
    models = [m for m in json.loads(Path(models_file).read_text())["models"] if m.get("arch") != "klt"]
    lines = [f"# Shipped models ({models_file}) against the klt envelope ({klt_file})", "",
             f"Command: `{command}`. {len(klt)} klt points.", "",
             "| model | BD-rate / BD-PSNR vs klt | klt points beaten (fewer bits and more PSNR) |", "|---|---:|---:|"]
    for row in _bd(models + klt, {}):
        if "klt" not in row:
            continue
        pts = [(m["bpp"], m["psnr"]) for m in models if m["model"] == row["model"]]
        bd = row["klt"]
        figure = (f"{bd['bd_rate']:+.1f} % / {bd['bd_psnr']:+.2f} dB" if bd.get("bd_rate") is not None
                  and bd.get("bd_psnr") is not None else f"n/a ({bd.get('why') or 'no overlap'})")
        lines.append(f"| {Path(row['model']).name} | {figure} | {sum(beats(pts, k) for k in klt)} of {len(klt)} |")
    left = [k for k in klt if not beats([(m["bpp"], m["psnr"]) for m in models], k)]
    lines += ["", f"Beaten by some shipped model: {len(klt) - len(left)} of {len(klt)}."]
    lines += [f"- not beaten: {Path(k['model']).name} q{k['quality']}: {k['bpp']:.3f} bpp, {k['psnr']:.2f} dB"
              for k in left]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m aekit.codec.vs_klt", description=__doc__.splitlines()[0])
    p.add_argument("klt", help="aekit evaluate results.json with the klt models")
    p.add_argument("models", help="aekit evaluate results.json with the models to compare")
    p.add_argument("out", help="markdown file to write")
    p.add_argument("--command", default="bash codec/record_klt.sh", help="how the inputs were made (for the record)")
    a = p.parse_args(argv)
    text = vs_klt(a.klt, a.models, a.command)
    Path(a.out).write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
