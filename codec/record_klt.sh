#!/usr/bin/env bash
# The klt envelope with the post-filter (session 22), and the shipped photo models' standing against it.
# Evaluates the klt baselines (codec/train_klt.sh) on the held-out photos per ratio, then compares the shipped
# models' recorded curves (codec/results/photos-rd-postfilter-r{9,4}/results.json, session 21: same format version,
# same held-out photos) with that envelope: BD-rate / BD-PSNR (codec/evaluate.py's rule) and how many klt points
# some shipped model beats (fewer bits and more PSNR). Writes codec/results/photos-rd-postfilter-klt-r{9,4}/ and
# vs-models.md there. About 10 min a ratio on one CPU thread.
#   bash codec/record_klt.sh            # MODELS=models DATA=data/photos
set -euo pipefail
cd "$(dirname "$0")/.."
M=${MODELS:-models}; DATA=${DATA:-data/photos}
for r in 9 4; do
  out=codec/results/photos-rd-postfilter-klt-r$r
  [ -f "$out/results.json" ] || aekit evaluate "$DATA/test" -m "$M/photos-klt-r$r-w0.003" -m "$M/photos-klt-r$r-w0.01" \
    -m "$M/photos-klt-r$r-w0.03" --device cpu -o "$out" \
    --name "held-out photos (5: astronaut, coffee, LadyBird, Storm, GreenMeadow), ratio 1/$r, klt baseline with the post-filter (format version 8)"
  python - "$out/results.json" "codec/results/photos-rd-postfilter-r$r/results.json" "$out/vs-models.md" <<'PY'
import json, sys
from pathlib import Path
from aekit.codec.evaluate import _bd

klt_file, models_file, out = sys.argv[1:]
klt = [m for m in json.loads(Path(klt_file).read_text())["models"] if m.get("arch") == "klt"]
models = json.loads(Path(models_file).read_text())["models"]
lines = [f"# Shipped models ({models_file}) against the klt envelope ({klt_file})", "",
         f"Command: `bash codec/record_klt.sh`. {len(klt)} klt points.", "",
         "| model | BD-rate / BD-PSNR vs klt | klt points beaten (fewer bits and more PSNR) |", "|---|---:|---:|"]
every = [(m["bpp"], m["psnr"]) for m in models]
beats = lambda pts, k: any(b <= k["bpp"] and p > k["psnr"] for b, p in pts)
for row in _bd(models + klt, {}):
    if "klt" not in row:
        continue
    pts = [(m["bpp"], m["psnr"]) for m in models if m["model"] == row["model"]]
    bd = row["klt"]
    lines.append(f"| {Path(row['model']).name} | {bd['bd_rate']:+.1f} % / {bd['bd_psnr']:+.2f} dB | "
                 f"{sum(beats(pts, k) for k in klt)} of {len(klt)} |")
left = [k for k in klt if not beats(every, k)]
lines += ["", f"Beaten by some shipped model: {len(klt) - len(left)} of {len(klt)}."]
lines += [f"- not beaten: {Path(k['model']).name} q{k['quality']}: {k['bpp']:.3f} bpp, {k['psnr']:.2f} dB" for k in left]
Path(out).write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
done
