"""Run the defect benchmark on the trained F-MNIST models: cal = the training hold-out, test = the class's test set."""
import json, sys
from pathlib import Path
import numpy as np
from aekit.images import load_image
from aekit.detector.defect_bench import run, table

recipe, cls, out = sys.argv[1], sys.argv[2], sys.argv[3]
scores = sys.argv[4].split(",")
limit = int(sys.argv[5]) if len(sys.argv) > 5 else 0
work = Path("/tmp/det16/work") / recipe / f"{cls}-s0"
cal_paths = json.loads((work / "split.json").read_text())["cal"]
cal = np.stack([load_image(p, 1)[0] for p in cal_paths])
test_paths = sorted(Path(f"/tmp/det16/fmnist/test/{cls}").iterdir())
test_paths = test_paths[:limit] if limit else test_paths
test = np.stack([load_image(p, 1)[0] for p in test_paths])
res = run(work / "model", test, cal, scores, 0.05, cls, 0, 20, 1)
res["recipe"] = recipe
res["command"] = "python " + " ".join(sys.argv)
Path(out).write_text(json.dumps(res, indent=1))
print(recipe, cls)
print(table(res), flush=True)
