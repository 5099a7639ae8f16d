"""One-class Fashion-MNIST benchmark: AUROC and realised false-positive rate per class and seed.

    flock /tmp/aekit-cpu.lock python -m aekit.detector.benchmark --seeds 0 1 2 --out detector/results/NAME.json
For each class: train on that class's training images minus a seeded calibration hold-out,
export to ONNX, calibrate (conformal) on the hold-out, score the full 10k test set (that
class normal, the other nine anomalous) through onnxruntime, exactly as `aekit screen` does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aekit.images import Sample, load_image, scan_folder
from aekit.detector.calibration import conformal_threshold
from aekit.detector.scores import error_maps, reduce_maps

ALPHAS = (0.05, 0.01)
VARIANTS = ("mse", "ssim", "mse-float", "ssim-float")  # score [-float: unquantised latent round trip]


@dataclass
class BenchConfig:
    data: str = "data/fmnist"  # Fashion-MNIST class folders: train/ and test/
    work: str = "runs/detector-bench"  # run and model folders (large, git-ignored)
    classes: list[str] = field(default_factory=list)  # empty: all ten
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # seeds the split, weights and batches
    cal_fraction: float = 0.1  # of each class's training images held out for calibration
    val_fraction: float = 0.05  # of the rest held out to pick the best epoch (not calibration)
    ratio: int = 9  # latent ratio 1/N (9: the narrower bottleneck)
    width: int = 32  # model width
    blocks: int = 1  # extra conv blocks at latent resolution
    latent_levels: int = 256  # quantisation levels of the latent
    epochs: int = 10  # training epochs per model
    batch_size: int = 64
    lr: float = 2e-3
    loss: str = "mse"  # training loss spec (aekit.losses)
    noise: str = ""  # training input corruption (aekit.train --noise), e.g. defects:0.5
    tag: str = ""  # names the work subfolder (default: derived from the settings)
    threads: int = 0  # torch and onnxruntime threads (0: their defaults); 1 on a shared machine

    def name(self) -> str:
        noise = f"-{self.noise.replace(':', '')}" if self.noise else ""
        return self.tag or f"r{self.ratio}-w{self.width}-b{self.blocks}-e{self.epochs}-{self.loss.replace(':', '').replace(',', '_')}{noise}"


def load_all(samples: list[Sample]) -> np.ndarray:
    """Decode samples to one uint8 (N, H, W, 1) array (all Fashion-MNIST images are 28x28)."""
    with ThreadPoolExecutor(4) as pool:
        return np.stack(list(pool.map(lambda s: load_image(s.path, 1)[0], samples)))


def split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    order = np.random.default_rng([seed, 4242]).permutation(len(samples))
    n_cal = int(round(len(samples) * fraction))
    return [samples[i] for i in sorted(order[n_cal:])], [samples[i] for i in sorted(order[:n_cal])]


def link_folder(samples: list[Sample], dest: Path) -> Path:
    """A folder of symlinks to the training images (aekit.train takes folders)."""
    dest.mkdir(parents=True, exist_ok=True)
    for s in samples:
        link = dest / s.path.name
        if not link.exists():
            os.symlink(s.path, link)
    return dest


def train_model(cfg: BenchConfig, cls: str, seed: int, train_samples: list[Sample], work: Path) -> tuple[Path, dict]:
    from aekit.config import ModelConfig
    from aekit.data import DataConfig
    from aekit.train import TrainConfig, train
    from aekit.export.onnx import export_model

    data = link_folder(train_samples, work / "train")
    mcfg = ModelConfig(channels=1, ratio=cfg.ratio, width=cfg.width, blocks=cfg.blocks, latent_levels=cfg.latent_levels)
    tcfg = TrainConfig(data=str(data), out=str(work / "run"), epochs=cfg.epochs, batch_size=cfg.batch_size,
                       lr=cfg.lr, loss=cfg.loss, noise=cfg.noise, seed=seed, device="cpu", hist_images=512,
                       data_cfg=DataConfig(resize="none", val_fraction=cfg.val_fraction, workers=2))
    summary = train(tcfg, mcfg)
    model = export_model(work / "run" / "best.pt", work / "model", force=True)
    return model, summary


def score_variants(model_dir: Path, images: np.ndarray, threads: int = 0) -> dict[str, np.ndarray]:
    """Scores of every variant for uint8 (N, H, W, 1) images, batched through onnxruntime."""
    from aekit.detector.model import Detector

    det = Detector(model_dir, threads=threads)
    out: dict[str, list[np.ndarray]] = {v: [] for v in VARIANTS}
    for i in range(0, len(images), 500):
        x = images[i : i + 500]
        for latent, suffix in (("quantised", ""), ("float", "-float")):
            x_hat = det.reconstruct(det.routes[None], x, latent)
            for score in ("mse", "ssim"):
                out[score + suffix].append(reduce_maps(error_maps(x, x_hat, score)))
    return {k: np.concatenate(v) for k, v in out.items()}


def evaluate_run(cal: dict[str, np.ndarray], test: dict[str, np.ndarray], is_anomaly: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    res = {}
    for v in VARIANTS:
        sc = np.sort(cal[v])
        row = {"auroc": float(roc_auc_score(is_anomaly, test[v])),
               "auprc": float(average_precision_score(is_anomaly, test[v]))}
        for a in ALPHAS:
            t = conformal_threshold(sc, a)
            flagged = test[v] > t
            row[f"fpr@{a}"] = float(flagged[~is_anomaly].mean())
            row[f"recall@{a}"] = float(flagged[is_anomaly].mean())
        res[v] = row
    return res


def run_one(cfg: BenchConfig, cls: str, seed: int, train_by_class: dict[str, list[Sample]],
            test_x: np.ndarray, test_y: np.ndarray) -> dict[str, Any]:
    work = Path(cfg.work) / cfg.name() / f"{cls}-s{seed}"
    done = work / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.monotonic()
    train_s, cal_s = split(train_by_class[cls], cfg.cal_fraction, seed)
    model, summary = train_model(cfg, cls, seed, train_s, work)
    t_train = time.monotonic() - t0
    cal_scores = score_variants(model, load_all(cal_s), cfg.threads)
    test_scores = score_variants(model, test_x, cfg.threads)
    res = {"class": cls, "seed": seed, "n_train": summary["n_train"], "n_val": summary["n_val"], "n_cal": len(cal_s),
           "best_val_psnr": summary["best_val_psnr"], "train_s": round(t_train, 1),
           "score_s": round(time.monotonic() - t0 - t_train, 1),
           "metrics": evaluate_run(cal_scores, test_scores, test_y != cls)}
    done.write_text(json.dumps(res, indent=1))
    print(f"{cls} seed {seed}: AUROC mse {res['metrics']['mse']['auroc']:.4f} ssim "
          f"{res['metrics']['ssim']['auroc']:.4f}  train {t_train:.0f}s", file=sys.stderr)
    return res


def summarise(runs: list[dict[str, Any]], classes: list[str], seeds: list[int]) -> dict[str, Any]:
    """Per variant: per-class mean/std over seeds; the class-mean per seed, then mean/std over seeds."""
    out = {}
    for v in VARIANTS:
        per = {}
        keys = ["auroc", "auprc"] + [f"{m}@{a}" for a in ALPHAS for m in ("fpr", "recall")]
        for k in keys:
            table = np.array([[next(r for r in runs if r["class"] == c and r["seed"] == s)["metrics"][v][k]
                               for s in seeds] for c in classes])  # (classes, seeds)
            per[k] = {"per_class_mean": dict(zip(classes, table.mean(1).round(5).tolist())),
                      "per_class_std": dict(zip(classes, table.std(1).round(5).tolist())),
                      "mean": float(table.mean()), "std_over_seeds": float(table.mean(0).std()),
                      "max_class_mean": float(table.mean(1).max())}
        out[v] = per
    return out


def machine() -> dict[str, Any]:
    import onnxruntime
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "torch_threads": torch.get_num_threads()}


def run(cfg: BenchConfig, summarise_only: bool = False) -> dict[str, Any]:
    """Train and score every (seed, class), seeds outermost; cached runs are reused.

    summarise_only: no training; summarise the cached runs of the seeds complete for every class.
    """
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    train_samples, classes, _ = scan_folder(Path(cfg.data) / "train")
    test_samples, _, _ = scan_folder(Path(cfg.data) / "test")
    classes = cfg.classes or classes
    by_class: dict[str, list[Sample]] = {}
    for s in train_samples:
        by_class.setdefault(s.label, []).append(s)
    t0 = time.monotonic()
    if summarise_only:
        work = Path(cfg.work) / cfg.name()
        done = {(c, s): work / f"{c}-s{s}" / "result.json" for s in cfg.seeds for c in classes}
        cfg.seeds = [s for s in cfg.seeds if all(done[(c, s)].is_file() for c in classes)]
        runs = [json.loads(done[(c, s)].read_text()) for s in cfg.seeds for c in classes]
    else:
        test_x, test_y = load_all(test_samples), np.array([s.label for s in test_samples])
        runs = [run_one(cfg, c, s, by_class, test_x, test_y) for s in cfg.seeds for c in classes]
    return {"benchmark": "fashion-mnist one-class (train on one class, test on the full 10k test set)",
            "config": asdict(cfg), "classes": classes, "machine": machine(),
            "wall_s": round(time.monotonic() - t0, 1), "summary": summarise(runs, classes, cfg.seeds), "runs": runs}


def table(result: dict[str, Any]) -> str:
    """Markdown: AUROC per class (mean +/- std over seeds) and FPR at each alpha, per score."""
    s, classes = result["summary"], result["classes"]
    head = "| score | " + " | ".join(classes) + " | mean ± std (seeds) |"
    lines = [head, "|" + "---|" * (len(classes) + 2)]
    for v in VARIANTS:
        a = s[v]["auroc"]
        cells = [f"{100 * a['per_class_mean'][c]:.1f}±{100 * a['per_class_std'][c]:.1f}" for c in classes]
        lines.append(f"| {v} | " + " | ".join(cells) + f" | **{100 * a['mean']:.1f} ± {100 * a['std_over_seeds']:.1f}** |")
    lines += ["", "| score | " + " | ".join(f"FPR@{a} (target {a})" for a in ALPHAS)
              + " | " + " | ".join(f"worst class FPR@{a}" for a in ALPHAS) + " | "
              + " | ".join(f"recall@{a}" for a in ALPHAS) + " |", "|---|" + "---|" * (3 * len(ALPHAS))]
    for v in VARIANTS:
        f = [f"{100 * s[v][f'fpr@{a}']['mean']:.2f}%" for a in ALPHAS]
        w = [f"{100 * s[v][f'fpr@{a}']['max_class_mean']:.2f}%" for a in ALPHAS]
        r = [f"{100 * s[v][f'recall@{a}']['mean']:.1f}%" for a in ALPHAS]
        lines.append(f"| {v} | " + " | ".join(f + w + r) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    d = BenchConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="result JSON (a .md table is written beside it)")
    for name in ("data", "work", "loss", "noise", "tag"):
        p.add_argument(f"--{name}", default=getattr(d, name))
    for name in ("ratio", "width", "blocks", "latent_levels", "epochs", "batch_size"):  # threads: below
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    for name in ("cal_fraction", "val_fraction", "lr"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(d, name))
    p.add_argument("--classes", nargs="*", default=[])
    p.add_argument("--seeds", nargs="*", type=int, default=d.seeds)
    p.add_argument("--threads", type=int, default=d.threads, help="torch/onnxruntime threads (0: default)")
    p.add_argument("--summarise-only", action="store_true", help="no training: summarise the finished runs")
    args = p.parse_args(argv)
    cfg = BenchConfig(**{k: v for k, v in vars(args).items() if k not in ("out", "summarise_only")})
    result = run(cfg, args.summarise_only)
    result["command"] = "python -m aekit.detector.benchmark " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    md = table(result)
    out.with_suffix(".md").write_text(f"`{result['command']}`\n\n{md}\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
