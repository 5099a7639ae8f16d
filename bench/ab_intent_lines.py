"""A/B: folder compress of the 10,000 Fashion-MNIST test images with and without the ledger's intent lines
(aekit.codec.jobs.Ledger.intend), interleaved on a quiet machine; results: bench/results/intent_lines_ab.txt.

    python bench/ab_intent_lines.py [SRC=data/fmnist/test] [SCRATCH=/tmp]
"""
import shutil, sys, time
from pathlib import Path
import aekit.codec.jobs as jobs
from aekit.codec.core import Codec, CodecConfig
from aekit.export.manifest import resolve_model
src = Path(sys.argv[1] if len(sys.argv) > 1 else "data/fmnist/test")
codec = Codec(resolve_model("fmnist-r4"), CodecConfig(device="cpu"))
real = jobs.Ledger.intend
res = {"with": [], "without": []}
for rnd in range(3):
    for mode in ("with", "without"):
        jobs.Ledger.intend = real if mode == "with" else (lambda self, dsts: None)
        out = Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp") / f"ab-{mode}"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        rep = jobs.compress_tree(src, out, codec, jobs.JobConfig(progress=False))
        dt = time.perf_counter() - t
        if rnd:  # round 0 warms up
            res[mode].append(dt)
        print(rnd, mode, rep.ok, round(dt, 2), flush=True)
print({k: [round(v, 2) for v in vs] for k, vs in res.items()}, "ratio with/without", round(min(res["with"]) / min(res["without"]), 3))
