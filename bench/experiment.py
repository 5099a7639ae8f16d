"""`aekit experiment`: the training techniques side by side on Fashion-MNIST, one table per ratio.

    aekit experiment --data data/fmnist --out runs/experiment [--epochs 8 --train-images 6000]
Every technique trains with the same budget (same images, epochs, width, batch, one CPU thread),
is exported to ONNX, and is measured on the test set as the codec decodes it: MSE, MAE, PSNR,
SSIM, classifier accuracy on reconstructions (next to originals), a linear probe on latents at
100 labels/class, training time. Resumable: finished runs, exports and rows are kept.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from aekit.metrics import psnr

logger = logging.getLogger(__name__)

# name -> (what it is, extra `aekit train` arguments). Rows other than "dcgan" use the default
# pixel-shuffle decoder, so "pixelshuffle" is the reference every technique changes one thing of.
TECHNIQUES: dict[str, tuple[str, list[str]]] = {
    "dcgan": ("DCGAN baseline: transposed-conv decoder, MSE", ["--upsample", "transpose"]),
    "pixelshuffle": ("sub-pixel (pixel-shuffle) decoder, MSE", []),
    "resnet": ("residual encoder/decoder", ["--arch", "resnet"]),
    "pretrained": ("ResNet-18 trunk encoder, 2 phases, discriminative lr", ["--arch", "pretrained"]),
    "ms-ssim": ("loss mse + 0.5 (1 - SSIM)", ["--loss", "mse:1,ms-ssim:0.5"]),
    "perceptual-vgg19": ("loss mse + 0.1 VGG19 relu2_2 features", ["--loss", "mse:1,perceptual:0.1",
                                                                  "--perceptual", "vgg19"]),
    "perceptual-vgg16": ("loss mse + 0.1 VGG16 relu1_2/2_2/3_3 (1/0.5/0.25)",
                         ["--loss", "mse:1,perceptual:0.1", "--perceptual", "vgg16"]),
    "progressive": ("progressive resizing: first half of the epochs at 14 px", []),  # args set per run
    "denoising": ("denoising: inputs + Gaussian noise sigma 0.1, clean targets", ["--noise", "gaussian:0.1"]),
    "vae": ("convolutional VAE, KL weight 0.01", ["--arch", "vae", "--kl-weight", "0.01"]),
}


@dataclass
class ExperimentConfig:
    data: str = "data/fmnist"  # folder with train/ and test/ class subfolders (aekit data fashion-mnist)
    out: str = "runs/experiment"  # runs, exports, rows and the tables
    ratios: list[int] = field(default_factory=lambda: [4, 9])  # latent ratios 1/N
    techniques: list[str] = field(default_factory=lambda: list(TECHNIQUES))  # rows, in this order
    train_images: int = 6000  # seeded, class-balanced training subset (10% of it held out for validation)
    test_images: int = 0  # test images measured (0: all)
    epochs: int = 8  # the same budget for every technique (the recorded table)
    width: int = 32  # model width
    batch_size: int = 32
    lr: float = 2e-3
    threads: int = 1  # torch/onnxruntime threads (one core: timings comparable between rows)
    probe_labels: int = 100  # labels per class for the linear probe
    probe_pool: int = 5000  # training images whose latents the probe draws its labelled subsets from
    vgg_weights: dict[str, str] = field(default_factory=dict)  # "vgg16"/"vgg19" -> local ImageNet weights
    encoder_weights: str | None = None  # local ImageNet ResNet-18 weights for "pretrained"
    seed: int = 0


def class_subset(src: Path, dst: Path, skip: int, per: int) -> Path:
    """dst/<class>/: images skip..skip+per (sorted) of each class folder of src, as hard links
    (copies where links fail); built under a temp name, so an interrupted run leaves no half set."""
    if dst.is_dir():
        return dst
    classes = sorted(p for p in src.iterdir() if p.is_dir()) if src.is_dir() else []
    if not classes:
        raise FileNotFoundError(f"{src}: no class folders (run: aekit data fashion-mnist {src.parent})")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for c in classes:
        (tmp / c.name).mkdir(parents=True)
        for f in sorted(c.iterdir())[skip:skip + per]:
            try:
                (tmp / c.name / f.name).hardlink_to(f)
            except OSError:
                shutil.copy2(f, tmp / c.name / f.name)
    tmp.rename(dst)
    return dst


def train_subset(cfg: ExperimentConfig) -> Path:
    """The autoencoders' class-balanced training set: the first train_images/10 images per class."""
    src = Path(cfg.data) / "train"
    n = len([p for p in src.iterdir() if p.is_dir()]) if src.is_dir() else 1
    return class_subset(src, Path(cfg.out) / f"data-train-{cfg.train_images}", 0, cfg.train_images // max(1, n))


def probe_pool(cfg: ExperimentConfig) -> Path:
    """Training images not in the autoencoders' subset, from which the probe draws labelled subsets."""
    src = Path(cfg.data) / "train"
    n = max(1, len([p for p in src.iterdir() if p.is_dir()]))
    return class_subset(src, Path(cfg.out) / f"data-probe-{cfg.probe_pool}", cfg.train_images // n,
                        cfg.probe_pool // n)


def random_vgg(net: str, out: Path, seed: int) -> str:
    """Seeded random VGG weights: ImageNet weights cannot be fetched here; rows say so."""
    import torch
    from torchvision.models.vgg import cfgs, make_layers

    path = out / f"{net}-random-seed{seed}.pt"
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        torch.save(make_layers(cfgs[{"vgg16": "D", "vgg19": "E"}[net]])[:16].state_dict(), path)
    return str(path)


def train_args(cfg: ExperimentConfig, name: str, ratio: int, data: Path, run: Path) -> tuple[list[str], str]:
    """The `aekit train` argument list of one row, and a note on what it could not have here."""
    _, extra = TECHNIQUES[name]
    extra, note = list(extra), ""
    if name == "progressive":
        extra += ["--progressive", f"14:{max(1, cfg.epochs // 2)}"]
    if name.startswith("perceptual"):
        net = extra[extra.index("--perceptual") + 1]
        weights = cfg.vgg_weights.get(net)
        if not weights:
            weights, note = random_vgg(net, Path(cfg.out), cfg.seed), f"{net.upper()} random init (no ImageNet weights here)"
        extra += ["--vgg-weights", weights]
    if name == "pretrained":
        if cfg.encoder_weights:
            extra += ["--encoder-weights", cfg.encoder_weights]
        else:
            note = "ResNet-18 trunk random init (no ImageNet weights here)"
    args = ["train", str(data), "--out", str(run), "--ratio", str(ratio), "--width", str(cfg.width),
            "--epochs", str(cfg.epochs), "--batch-size", str(cfg.batch_size), "--lr", str(cfg.lr),
            "--size", "28", "--resize", "none", "--threads", str(cfg.threads), "--seed", str(cfg.seed), *extra]
    return args, note


def run_aekit(args: list[str], log: Path) -> float:
    """Run `aekit ARGS` in a child process; returns its CPU seconds (user + sys)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "a") as f:
        f.write(f"$ aekit {shlex.join(args)}\n")
        f.flush()
        rc = subprocess.run([sys.executable, "-m", "aekit.cli", *args], stdout=f, stderr=f).returncode
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        raise RuntimeError(f"aekit {shlex.join(args)} failed (exit {rc}); see {log}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def train_run(cfg: ExperimentConfig, args: list[str], run: Path, log: Path) -> float:
    """Train (or resume an interrupted run); returns the CPU seconds of all its processes."""
    cpu_file = run / "cpu_s.json"
    done = (run / "log.jsonl").exists() and len((run / "log.jsonl").read_text().splitlines()) >= cfg.epochs
    if done and cpu_file.exists():
        return json.loads(cpu_file.read_text())["cpu_s"]
    spent = json.loads(cpu_file.read_text())["cpu_s"] if cpu_file.exists() else 0.0
    resume = ["--resume"] if (run / "last.pt").exists() else []
    spent += run_aekit(args + resume, log)
    cpu_file.write_text(json.dumps({"cpu_s": spent}))
    return spent


def pixel_probe(cfg: ExperimentConfig, model: Path, pool: Path) -> float:
    """The probe on raw pixels of the same images and labelled subsets: the baseline of the claim."""
    from aekit.bench.probe import probe
    from aekit.export.features import extract_features, pixel_features

    tr = extract_features(model, pool, threads=cfg.threads)
    te = extract_features(model, Path(cfg.data) / "test", max_images=cfg.test_images, seed=cfg.seed,
                          threads=cfg.threads)
    tr_px = pixel_features(tr.paths, tr.labels, tr.classes, 1)
    te_px = pixel_features(te.paths, te.labels, te.classes, 1)
    res = probe(tr, te, (cfg.probe_labels,), seed=cfg.seed, train_pixels=tr_px, test_pixels=te_px)
    return next(r.accuracy for r in res if r.features == "pixels")


NOISE_SIGMA = 0.1  # Gaussian noise of the denoising column, on the [0, 1] pixel scale (as --noise gaussian:0.1)


def noisy_copy(images: np.ndarray, seed: int) -> np.ndarray:
    """uint8 images plus seeded Gaussian noise of NOISE_SIGMA, clipped: the denoising test input."""
    rng = np.random.default_rng([seed, 7])
    noisy = images.astype(np.float32) + rng.normal(0, NOISE_SIGMA * 255, images.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def denoise_psnr(cfg: ExperimentConfig, model: Path, orig: np.ndarray) -> float:
    """PSNR of the model's reconstruction of noisy test images against the clean ones."""
    from aekit.export.runtime import Runtime

    rt = Runtime(model, device="cpu", threads=cfg.threads)
    noisy = noisy_copy(orig, cfg.seed)
    recon = np.concatenate([rt.reconstruct(noisy[s:s + 256]) for s in range(0, len(noisy), 256)])
    return psnr(orig, recon)


def measure(cfg: ExperimentConfig, model: Path, clf: Any, pool: Path) -> dict[str, Any]:
    """Test-set metrics of one exported model, as the codec decodes."""
    from aekit.bench.classifier import classifier_accuracy, reconstruct_folder, reconstruction_metrics
    from aekit.bench.probe import probe
    from aekit.export.features import extract_features

    test = Path(cfg.data) / "test"
    orig, recon, labels = reconstruct_folder(model, test, cfg.test_images, seed=cfg.seed, threads=cfg.threads)
    row = reconstruction_metrics(orig, recon)
    row["denoise_psnr_db"] = denoise_psnr(cfg, model, orig)
    row["clf_acc_recon"] = classifier_accuracy(clf, recon, labels)
    feats_tr = extract_features(model, pool, threads=cfg.threads)
    feats_te = extract_features(model, test, max_images=cfg.test_images, seed=cfg.seed, threads=cfg.threads)
    res = probe(feats_tr, feats_te, (cfg.probe_labels,), seed=cfg.seed)
    row["probe_acc"] = res[0].accuracy
    row["probe_std"] = res[0].std
    return row


def run_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    from aekit.bench.classifier import classifier_accuracy, load_classifier, reconstruct_folder, train_classifier

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data, pool = train_subset(cfg), probe_pool(cfg)
    clf_path = train_classifier(Path(cfg.data) / "train", threads=cfg.threads)  # cached in runs/classifier
    clf = load_classifier(clf_path)
    rows_file = out / "rows.jsonl"
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []
    done = {(r["technique"], r["ratio"]) for r in rows}
    for ratio in cfg.ratios:
        for name in cfg.techniques:
            if (name, ratio) in done:
                continue
            run, model = out / "runs" / f"{name}-r{ratio}", out / "models" / f"{name}-r{ratio}"
            args, note = train_args(cfg, name, ratio, data, run)
            log = out / "logs" / f"{name}-r{ratio}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.monotonic()
            cpu = train_run(cfg, args, run, log)
            if not (model / "manifest.json").exists():
                run_aekit(["export", str(run / "best.pt"), "--out", str(model)], log)
            history = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
            row = {"technique": name, "ratio": ratio, "what": TECHNIQUES[name][0], "note": note,
                   "command": "aekit " + shlex.join(args),
                   "train_time_s": round(sum(h["epoch_time_s"] for h in history), 1),
                   "train_cpu_s": round(cpu, 1), "epochs": len(history),
                   "val_psnr_by_epoch": [round(h["val_psnr"], 2) for h in history],
                   "epoch_time_s": [round(h["epoch_time_s"], 1) for h in history],
                   **measure(cfg, model, clf, pool), "wall_s": round(time.monotonic() - t0, 1)}
            rows.append(row)
            with open(rows_file, "a") as f:
                f.write(json.dumps(row) + "\n")
            logger.info("%s r%d: PSNR %.2f dB, clf %.4f, probe %.4f, %s s", name, ratio, row["psnr_db"],
                     row["clf_acc_recon"], row["probe_acc"], row["train_time_s"])
    orig, _, labels = reconstruct_folder(_any_model(out), Path(cfg.data) / "test", cfg.test_images, seed=cfg.seed)
    clf_orig = classifier_accuracy(clf, orig, labels)
    for r in rows:  # rows recorded before the denoising column existed get it now
        if "denoise_psnr_db" not in r:
            r["denoise_psnr_db"] = denoise_psnr(cfg, out / "models" / f"{r['technique']}-r{r['ratio']}", orig)
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg_noisy = psnr(orig, noisy_copy(orig, cfg.seed))
    return report(cfg, rows, clf_orig, clf.info, pixel_probe(cfg, _any_model(out), pool), cfg_noisy)


def _any_model(out: Path) -> Path:
    return next(p.parent for p in sorted((out / "models").glob("*/manifest.json")))


def time_to_reach(row: dict[str, Any], target: float) -> float | None:
    """Seconds of training until the validation PSNR first reached target (None: never)."""
    t = 0.0
    for psnr, dt in zip(row["val_psnr_by_epoch"], row["epoch_time_s"]):
        t += dt
        if psnr >= target:
            return round(t, 1)
    return None


def equal_quality(base: dict[str, Any], prog: dict[str, Any]) -> str:
    """Time saved at equal quality: when the full-size run first matched the progressive run's final PSNR."""
    target = prog["val_psnr_by_epoch"][-1]
    t = time_to_reach(base, target)
    if t is None:
        return f" The full-size run never fell to {target} dB."
    saved = t - prog["train_time_s"]
    return (f" At equal quality ({target} dB) the full-size run needed {t} s and the progressive run "
            f"{prog['train_time_s']} s: {'saved' if saved > 0 else 'lost'} {abs(saved):.1f} s "
            f"({100 * abs(saved) / t:.0f} %).")


def report(cfg: ExperimentConfig, rows: list[dict[str, Any]], clf_orig: float, clf_info: dict,
           probe_pixels: float, noisy_psnr: float) -> dict[str, Any]:
    from aekit.machine import cpu_name

    import torch

    meta = {
        "command": "aekit " + shlex.join(sys.argv[1:]) if sys.argv and "experiment" in sys.argv else "",
        "config": asdict(cfg), "machine": cpu_name(), "python": platform.python_version(),
        "torch": str(torch.__version__), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "probe_pixels_acc": probe_pixels,
        "noisy_input_psnr_db": noisy_psnr,
        "classifier": {"test_accuracy_originals": clf_orig,
                       **{k: clf_info.get(k) for k in ("n_train", "train_time_s", "config")}},
    }
    lines = [f"Fashion-MNIST, {cfg.train_images} training images, {cfg.epochs} epochs, width {cfg.width}, "
             f"batch {cfg.batch_size}, {cfg.threads} CPU thread(s) per run; test set "
             f"{cfg.test_images or 'all'} images. Classifier accuracy on the original test images: "
             f"**{clf_orig:.4f}**. Linear probe on raw pixels at {cfg.probe_labels} labels/class: "
             f"**{probe_pixels:.4f}**. MSE and MAE on [0, 1] pixels; SSIM is single-scale with a 7-px window "
             "(MS-SSIM's scales do not fit 28-px images). *Denoise PSNR*: reconstruction of the test images "
             f"with Gaussian noise σ = {NOISE_SIGMA} added (the noisy images themselves: {noisy_psnr:.2f} dB) "
             "against the clean ones. Train s is the wall time of the training epochs; train CPU s is the CPU "
             "time of the whole training process (start-up, data loading and histogram included).", ""]
    for ratio in cfg.ratios:
        rs = [r for r in rows if r["ratio"] == ratio]
        lines += [f"### Ratio 1/{ratio}", "",
                  "| technique | MSE | MAE | PSNR dB | SSIM | clf acc (orig {:.4f}) | probe acc @{}/class | "
                  "denoise PSNR dB | train s | train CPU s | note |".format(clf_orig, cfg.probe_labels),
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rs:
            lines.append(f"| {r['technique']} | {r['mse']:.5f} | {r['mae']:.4f} | {r['psnr_db']:.2f} | "
                         f"{r['structure']:.4f} | {r['clf_acc_recon']:.4f} | {r['probe_acc']:.4f} | "
                         f"{r['denoise_psnr_db']:.2f} | {r['train_time_s']} | {r['train_cpu_s']} | {r['note']} |")
        base = next((r for r in rs if r["technique"] == "pixelshuffle"), None)
        prog = next((r for r in rs if r["technique"] == "progressive"), None)
        if base and prog:
            target = base["val_psnr_by_epoch"][-1]
            t = time_to_reach(prog, target)
            lines += ["", f"Progressive resizing at 1/{ratio}: {prog['train_time_s']} s vs {base['train_time_s']} s "
                      f"for the full-size run; final validation PSNR {prog['val_psnr_by_epoch'][-1]} vs {target} dB; "
                      + (f"reached the full-size run's final PSNR after {t} s ({100 * (1 - t / base['train_time_s']):.0f} % "
                         "less time)." if t else "did not reach the full-size run's final PSNR in this budget.")
                      + equal_quality(base, prog)]
        lines.append("")
    result = {**meta, "rows": rows, "markdown": "\n".join(lines)}
    out = Path(cfg.out)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "results.md").write_text(result["markdown"] + "\n")
    return result


def register(sub: argparse._SubParsersAction) -> None:
    d = ExperimentConfig()
    p = sub.add_parser("experiment", help="compare training techniques on Fashion-MNIST (one table per ratio)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=d.data, help="folder with train/ and test/ class folders")
    p.add_argument("--out", default=d.out, help="output folder (resumable)")
    p.add_argument("--ratios", type=int, nargs="+", default=d.ratios, choices=(4, 9))
    p.add_argument("--techniques", nargs="+", default=d.techniques, choices=list(TECHNIQUES))
    p.add_argument("--train-images", type=int, default=d.train_images)
    p.add_argument("--test-images", type=int, default=d.test_images, help="0: all")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--probe-labels", type=int, default=d.probe_labels)
    p.add_argument("--probe-pool", type=int, default=d.probe_pool)
    p.add_argument("--vgg16-weights", help="local ImageNet VGG16 weights (default: seeded random, noted)")
    p.add_argument("--vgg19-weights", help="local ImageNet VGG19 weights (default: seeded random, noted)")
    p.add_argument("--encoder-weights", help="local ImageNet ResNet-18 weights (default: random init, noted)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.set_defaults(func=cmd_experiment)


def cmd_experiment(args: argparse.Namespace) -> int:
    vgg = {k: v for k, v in (("vgg16", args.vgg16_weights), ("vgg19", args.vgg19_weights)) if v}
    cfg = ExperimentConfig(data=args.data, out=args.out, ratios=args.ratios, techniques=args.techniques,
                           train_images=args.train_images, test_images=args.test_images, epochs=args.epochs,
                           width=args.width, batch_size=args.batch_size, lr=args.lr, threads=args.threads,
                           probe_labels=args.probe_labels, probe_pool=args.probe_pool, vgg_weights=vgg,
                           encoder_weights=args.encoder_weights, seed=args.seed)
    print(run_experiment(cfg)["markdown"])
    return 0
