"""Train the defect-benchmark models: classes x recipes (plain / defects noise), recorded settings.
    python bench/detector_defects/train_models.py CLASSES NOISES [EPOCHS [RATIO [WIDTH [SEED]]]]
SEED (default 0) seeds the 600-image calibration split and the training, as detector.benchmark's seeds."""
import sys, json, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from aekit.images import scan_folder
from aekit.detector.benchmark import BenchConfig, split, train_model

classes = sys.argv[1].split(",")
noises = sys.argv[2].split(",")
epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 8
ratio = int(sys.argv[4]) if len(sys.argv) > 4 else 9
width = int(sys.argv[5]) if len(sys.argv) > 5 else 16
seed = int(sys.argv[6]) if len(sys.argv) > 6 else 0
samples, _, _ = scan_folder("/tmp/det16/fmnist/train")
for noise in noises:
    for c in classes:
        cfg = BenchConfig(data="/tmp/det16/fmnist", work="/tmp/det16/work", width=width, ratio=ratio, epochs=epochs,
                          noise="" if noise == "plain" else noise, threads=1)
        work = Path(cfg.work) / cfg.name() / f"{c}-s{seed}"
        if (work / "model").is_dir():
            continue
        tr, cal = split([s for s in samples if s.label == c], cfg.cal_fraction, seed)
        t0 = time.time()
        model, summ = train_model(cfg, c, seed, tr, work)
        (work / "split.json").write_text(json.dumps({"cal": [str(s.path) for s in cal]}))
        print(c, noise, model, round(time.time() - t0), summ["best_val_psnr"], flush=True)
