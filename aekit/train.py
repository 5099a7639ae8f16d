"""Training loop: Adam, per-epoch validation (PSNR on truly quantised latents), logs, resume.

    aekit train DATA --ratio 4 --out runs/NAME [--epochs 20 | --time-budget 30]
Writes runs/NAME/{last.pt, best.pt, log.jsonl, log.csv, config.json}.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from aekit import distributed
from aekit.augment import (  # noqa: F401 - DEFECT_KINDS, paste_defects: still importable from here
    DEFECT_KINDS, corrupt, parse_noise, parse_progressive, paste_defects)
from aekit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from aekit.config import ModelConfig
from aekit.data import DataConfig, ImageSet, report_skipped, split_samples, subsample
from aekit.images import resample_matrix, scan_folder
from aekit.losses import ReconstructionLoss
from aekit.machine import usable_cores
from aekit.metrics import psnr_torch
from aekit.models import Autoencoder, build_model
from aekit.models.base import AEOutput


log = logging.getLogger(__name__)
REFIT_VALUES = 8192  # latent values per channel the final prior refit uses (bounded time and memory)
PRIOR_LR_SCALE = 10.0  # RD models: the factorized prior's lr relative to the transforms' (CompressAI's aux lr 1e-3 vs 1e-4)
HYPER_LR_SCALE = 5.0  # gdn-hp: the hyperprior's lr relative to the transforms' (it starts from scratch on warm transforms)


@dataclass
class TrainConfig:
    data: str  # training image folder (flat, or one subfolder per class)
    out: str  # run folder for checkpoints and logs
    val_data: str | None = None  # separate validation folder; default: a split of data
    epochs: int = 20  # passes over the training set
    time_budget: float = 0.0  # minutes of the whole run, resumed epochs included; stop after the epoch crossing it
    stop_after: int = 0  # epochs of this invocation, then stop (checkpointed; --resume goes on with the same schedule)
    batch_size: int = 32  # images per step
    lr: float = 1e-3  # Adam learning rate (cosine-decayed to 5% over `epochs`)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam betas
    loss: str = "mse"  # loss spec, e.g. "mse", "l1:1,ms-ssim:0.5", "mse:1,perceptual:0.1"
    vgg_weights: str | None = None  # local VGG state_dict for the perceptual loss
    perceptual: str = "vgg19"  # feature loss layers: "vgg19" (relu2_2), "vgg16" (3 layers) or NET:LAYER=W,...
    noise: str = ""  # denoising: corrupt inputs, keep targets clean: "gaussian:SIGMA" or "mask:FRACTION"
    kl_weight: float = 0.01  # arch "vae": weight of the KL term (nats per image element)
    progressive: str = ""  # progressive resizing: "SIZE:EPOCHS[,SIZE:EPOCHS]" at low sizes first
    encoder_weights: str | None = None  # arch "pretrained": local ResNet state_dict (else torchvision's)
    freeze_epochs: int = 1  # arch "pretrained": phase 1 epochs training the decoder with the trunk frozen
    lr_ratio: float = 0.3  # arch "pretrained": each earlier encoder group gets this times the next one's lr
    rate_weight: float = 0.0  # lambda of the rate term: loss += lambda * estimated bits per pixel
    clip_grad: float = 0.0  # max global gradient norm (0: no clipping; CompressAI's recipe uses 1.0)
    device: str = "auto"  # auto (cuda > mps > cpu), cuda, mps or cpu
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16)
    seed: int = 0  # seeds weights, split, batch order and noise
    threads: int = 0  # torch CPU threads (0: the usable cores / processes); the CLI sets OMP_WAIT_POLICY=PASSIVE first
    hist_images: int = 2000  # training images encoded for the latent symbol histogram
    init_from: str | None = None  # warm start: weights of this checkpoint, fresh optimiser and lr schedule
    freeze_decoder: bool = False  # RD archs with init_from: g_s keeps the loaded weights for the whole run
    distill_from: str | None = None  # RD archs: a teacher checkpoint whose y = g_a(x) the student's g_a learns
    distill_weight: float = 0.01  # weight of mean((y - y_teacher)^2), y in quantisation steps
    distill_epochs: int = 0  # epochs with the distillation term (0: all)
    grid_scale: float = 1.0  # RD archs: the model sees each image resampled by this (bicubic), x̂ resampled back
    data_cfg: DataConfig = field(default_factory=DataConfig)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        d["data_cfg"] = DataConfig(**d.get("data_cfg", {}))
        d["betas"] = tuple(d.get("betas", (0.9, 0.999)))
        return cls(**d)


def cpu_threads() -> int:
    """Threads for torch on CPU: the usable cores (affinity mask) shared among this host's processes."""
    return max(1, usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def to_tensor(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, C) -> float (B, C, H, W) in [-1, 1] on device."""
    x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1


class Trainer:
    """One training run; `run()` trains to the end (or budget) and returns the summary."""

    def __init__(self, tcfg: TrainConfig, mcfg: ModelConfig, resume: bool = False):
        self.tcfg, self.mcfg, self.out = tcfg, mcfg, Path(tcfg.out)
        self.device = distributed.setup(pick_device(tcfg.device))  # joins the process group under --nproc
        if self.device.type == "cpu":  # deliberate, not torch's default (which counts every core of the host)
            torch.set_num_threads(tcfg.threads if tcfg.threads > 0 else cpu_threads())
            logging.getLogger(__name__).info("torch: %d CPU threads, OMP_WAIT_POLICY=%s", torch.get_num_threads(),
                                             os.environ.get("OMP_WAIT_POLICY", "unset (spinning)"))
        self.start_epoch, self.best_val, self.best_epoch = 0, math.inf, -1
        self.trained_side = 0  # side (px) of the last training batch, logged per epoch
        self.history: list[dict[str, Any]] = []
        self.warm_start: dict[str, Any] | None = None  # --init-from: where the weights came from
        torch.manual_seed(tcfg.seed)
        self.model: Autoencoder = build_model(mcfg).to(self.device)
        self.loss_fn = ReconstructionLoss(tcfg.loss, tcfg.vgg_weights, tcfg.perceptual).to(self.device)
        self.noise = parse_noise(tcfg.noise)
        self.phases = parse_progressive(tcfg.progressive, tcfg.epochs)
        if resume and tcfg.init_from:
            raise ValueError("--init-from starts a new run from a checkpoint's weights; --resume continues "
                             "this run's own last.pt: give one of them")
        self.encoder_source = self._pretrained_init() if not (resume or tcfg.init_from) else None
        self.opt = torch.optim.Adam(self._param_groups(), lr=tcfg.lr, betas=tcfg.betas)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.opt, T_max=max(1, tcfg.epochs), eta_min=tcfg.lr * 0.05
        )
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.train_set, self.val_set, self.classes = self._load_data()
        side = tcfg.data_cfg.size if tcfg.data_cfg is not None else 0  # resolved by the load when it was 0
        big = sorted({p for p in self.phases if p and side and p >= side})
        if big:
            raise ValueError(f"--progressive {tcfg.progressive!r}: size {big[0]} is not below the training size {side} "
                             "(progressive resizing trains on down-scaled images first)")
        if tcfg.grid_scale != 1.0 and not (mcfg.rd and 0.25 <= tcfg.grid_scale <= 4):
            raise ValueError(f"--grid-scale {tcfg.grid_scale:g}: applies to rate-distortion archs only, "
                             "between 0.25 and 4")
        self._resamplers: dict[tuple[int, int, str], torch.Tensor] = {}
        if mcfg.rd and tcfg.rate_weight <= 0:
            raise ValueError(f"arch {mcfg.arch!r} is rate-distortion trained: give --rate-weight "
                             "(the weight of the bits per pixel against the distortion, e.g. 0.005)")
        if tcfg.init_from and not resume:
            self._warm_start(tcfg.init_from)
        elif hasattr(self.model, "init_from_data") and not resume:
            self._init_from_data()
        if resume:
            self._resume()
        if mcfg.hyperprior and tcfg.init_from:  # the first --freeze-epochs train the hyperprior alone
            self.model.warm_transforms = True
        if tcfg.freeze_decoder and not (mcfg.rd and (tcfg.init_from or resume)):
            raise ValueError("freeze_decoder keeps a loaded g_s fixed: it needs an RD architecture and --init-from")
        self.teacher = self._teacher(tcfg.distill_from) if tcfg.distill_from else None
        self.distilling = False  # this epoch adds the distillation term (set per epoch in run)
        # the step's forward: the model, or it inside DistributedDataParallel (aekit.distributed)
        self.net = distributed.wrap(self.model, self.device, tcfg.seed, find_unused=tcfg.rate_weight == 0)

    def _init_from_data(self) -> None:
        """Data-driven init (the klt baseline's PCA) from up to 64 seeded training images."""
        rng = np.random.default_rng([self.tcfg.seed, 7])
        batch = next(iter(self.train_set.batches(min(64, len(self.train_set)), rng)))
        self.model.init_from_data(to_tensor(batch, self.device))

    def _warm_start(self, path: str) -> None:
        """Load every weight (transforms and entropy model) of another run's checkpoint; the optimiser,
        the lr schedule, the epoch count and the history start fresh (fine-tuning, or training on past a
        finished cosine schedule). Raises CheckpointError if its model config differs from this run's."""
        ckpt = load_checkpoint(path)
        old = {**ModelConfig().to_dict(), **ckpt["model_config"]}  # fields added since: their defaults
        diff = sorted(k for k, v in self.mcfg.to_dict().items() if old.get(k) != v)
        widths = {"encoder_width", "hyper_width"}  # narrower g_a / hyperprior: what fits carries over (g_s)
        if set(diff) - widths == {"arch"} and {old["arch"], self.mcfg.arch} == {"gdn", "gdn-hp"}:
            self._load_matching(path, ckpt["state_dict"])  # gdn <-> gdn-hp: the transforms carry over
        elif diff and set(diff) <= widths:
            self._load_matching(path, ckpt["state_dict"], keep_prior=True)
        elif diff:
            raise CheckpointError(f"{path}: model config differs from this run's in {', '.join(diff)}; "
                                  "--init-from needs the same architecture (or gdn for gdn-hp; "
                                  "--encoder-width and --hyper-width may differ)")
        elif self.mcfg.hyperprior:
            self._load_matching(path, ckpt["state_dict"], keep_prior=True)  # also a mean-free gdn-hp's
        else:
            self.model.load_state_dict(ckpt["state_dict"])
        prior = ckpt.get("summary") or {}
        self.encoder_source = prior.get("encoder_init")
        own_time = prior.get("train_time_s", sum(h.get("epoch_time_s", 0.0) for h in ckpt.get("history", [])))
        earlier = ckpt.get("warm_start") or prior.get("init_from") or {}  # that run's own warm start, if any
        # epochs and time of every earlier stage together (a stage 3 counts stages 1 and 2)
        self.warm_start = {"checkpoint": str(Path(path).resolve()), "epoch": ckpt["epoch"] + 1 + int(earlier.get("epoch", 0)),
                           "train_time_s": round(own_time + float(earlier.get("train_time_s", 0.0)), 1)}
        log.info(f"weights from {path} (epoch {ckpt['epoch'] + 1} of that run); new optimiser and schedule")

    def _teacher(self, path: str) -> torch.nn.Module:
        """The distillation teacher (Hinton et al. 2015's idea applied to the analysis transform): a
        checkpoint of an RD model with this run's ratio, channels and factor, frozen in eval mode.
        Raises CheckpointError for a checkpoint that does not fit."""
        from aekit.checkpoint import load_model

        teacher, ckpt = load_model(path)
        tcfg = ModelConfig.from_dict(ckpt["model_config"])
        if not self.mcfg.rd or not tcfg.rd or (tcfg.channels, tcfg.ratio, tcfg.factor) != \
                (self.mcfg.channels, self.mcfg.ratio, self.mcfg.factor):
            raise CheckpointError(f"{path}: a distillation teacher must be an RD model of this run's channels, ratio "
                                  f"and factor (it is {tcfg.arch}, {tcfg.channels} ch, 1/{tcfg.ratio}, f {tcfg.factor})")
        for p in teacher.parameters():
            p.requires_grad_(False)
        log.info(f"distilling g_a from {path} (weight {self.tcfg.distill_weight}, "
                 f"{'all' if not self.tcfg.distill_epochs else self.tcfg.distill_epochs} epochs)")
        return teacher.to(self.device).eval()

    def _load_matching(self, path: str, state: dict[str, torch.Tensor], keep_prior: bool = False) -> None:
        """Load every tensor of `state` whose name and shape this model has (a gdn run's g_a, g_s
        and gain into gdn-hp; keep_prior: the z prior too); the rest keep their init. A hyper
        decoder whose last layer predicted ln σ only (gdn-hp before the mean) loads into the ln σ half
        of this one's, with the μ half zero: the model starts as the mean-free one."""
        own = self.model.state_dict()
        take = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape
                and (keep_prior or not k.startswith("entropy."))}
        for k, v in state.items():
            if k.startswith("hyper_decoder.") and k in own and own[k].shape[0] == 2 * v.shape[0] \
                    and own[k].shape[1:] == v.shape[1:]:
                take[k] = torch.cat([torch.zeros_like(v), v])
        self.model.load_state_dict(take, strict=False)
        parts = sorted({k.split(".")[0] for k in own})
        fresh = [p for p in parts if not any(k.split(".")[0] == p for k in take)]
        partly = [p for p in parts if p not in fresh and any(k.split(".")[0] == p and k not in take for k in own)]
        log.info(f"weights from {path}: {len(take)} tensors of the transforms; new: {', '.join(fresh) or 'none'}"
                 + (f"; partly new (the tensors whose shapes differ): {', '.join(partly)}" if partly else ""))

    def _pretrained_init(self) -> str | None:
        """Load ImageNet weights into a pretrained trunk (new runs only; resume loads all)."""
        trunk = getattr(self.model, "trunk", None)
        if trunk is None:
            return None
        source = trunk.load_pretrained(self.tcfg.encoder_weights)
        log.info(f"encoder trunk: {self.mcfg.backbone} from {source}")
        return source

    def _param_groups(self) -> list[dict[str, Any]]:
        """Discriminative learning rates: the last group (decoder) gets lr, each earlier
        encoder group lr_ratio times the next one's (one group for most architectures)."""
        groups = [g for g in self.model.param_groups() if g]
        n = len(groups)
        out = [{"params": g, "lr": self.tcfg.lr * self.tcfg.lr_ratio ** (n - 1 - i)} for i, g in enumerate(groups)]
        if hasattr(self.model, "entropy_parameters"):  # RD models: the prior learns PRIOR_LR_SCALE x faster
            out.append({"params": self.model.entropy_parameters(), "lr": self.tcfg.lr * PRIOR_LR_SCALE})
        if hasattr(self.model, "hyper_parameters"):  # gdn-hp: h_a, h_s learn HYPER_LR_SCALE x faster
            out.append({"params": self.model.hyper_parameters(), "lr": self.tcfg.lr * HYPER_LR_SCALE})
        return out

    def _amp_dtype(self) -> torch.dtype | None:
        if not (self.tcfg.amp and self.device.type == "cuda"):
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def _load_data(self) -> tuple[ImageSet, ImageSet | None, list[str]]:
        t, dc = self.tcfg, self.tcfg.data_cfg
        samples, classes, skipped = scan_folder(t.data)
        report_skipped(skipped)
        samples = subsample(samples, dc.max_images, t.seed)
        if t.val_data:
            val_samples, _, vskipped = scan_folder(t.val_data)
            report_skipped(vskipped)
            train_samples = samples
        else:
            train_samples, val_samples = split_samples(samples, dc.val_fraction, t.seed)
        f = self.mcfg.factor
        train = ImageSet(train_samples, self.mcfg.channels, dc, f, train=True, source=f"{t.data} (training split)")
        val = ImageSet(val_samples, self.mcfg.channels, dc, f, train=False,
                       source=f"{t.val_data or t.data} (validation split)") if val_samples else None
        log.info(f"data: {len(train)} training, {len(val) if val else 0} validation images"
                 + (f", {len(classes)} classes" if classes else ""))
        return train, val, classes

    def _resume(self) -> None:
        path = self.out / "last.pt"
        ckpt = load_checkpoint(path)
        saved = {**ModelConfig().to_dict(), **ckpt["model_config"]}  # fields added since: their defaults
        if saved != self.mcfg.to_dict():
            diff = _differences(saved, self.mcfg.to_dict(), set())
            raise CheckpointError(f"{path}: model config differs from this run's ({diff}); start a new --out")
        old = ckpt.get("train_config")
        if isinstance(old, dict):  # a resumed run must be the run that was interrupted (paths and budgets aside)
            diff = _differences(old, asdict(self.tcfg), RESUME_MAY_CHANGE)
            if diff:
                raise CheckpointError(f"{path}: it was trained with other settings ({diff}); resume with the same "
                                      "options, or start a new --out")
            if self.tcfg.epochs != old.get("epochs"):
                log.info("epochs %s -> %s: the cosine schedule is stretched from epoch %d on (not the same as a run "
                         "started with %s)", old.get("epochs"), self.tcfg.epochs, ckpt["epoch"] + 2, self.tcfg.epochs)
        self.model.load_state_dict(ckpt["state_dict"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.sched.T_max = max(1, self.tcfg.epochs)  # resuming may extend the run
        if "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng_torch"])
        self.start_epoch = ckpt["epoch"] + 1
        self.best_val, self.best_epoch = ckpt["best_val"], ckpt["best_epoch"]
        self.history = list(ckpt["history"])
        self.warm_start = ckpt.get("warm_start")
        log.info(f"resumed from {path} at epoch {self.start_epoch + 1}")

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        if distributed.is_main():
            (self.out / "config.json").write_text(json.dumps(self.config_dict(), indent=2))
        t0 = time.monotonic() - sum(h["epoch_time_s"] for h in self.history)
        for epoch in range(self.start_epoch, self.tcfg.epochs):
            t_epoch = time.monotonic()
            self.model.set_trunk_frozen(epoch < self.tcfg.freeze_epochs)  # two-phase (pretrained trunk)
            if self.tcfg.freeze_decoder:  # after set_trunk_frozen, which may have unfrozen it
                for p in self.model.decoder.parameters():
                    p.requires_grad_(False)
            self.distilling = self.teacher is not None and (not self.tcfg.distill_epochs or epoch < self.tcfg.distill_epochs)
            train_loss, train_psnr = self._train_epoch(epoch)
            val = self.evaluate(self.val_set) if self.val_set and distributed.is_main() else {"loss": train_loss, "psnr": train_psnr, "bpp": float("nan")}
            self.sched.step()
            row = {
                "epoch": epoch + 1,
                "size": self.trained_side,  # side of the images this epoch trained on
                "train_loss": train_loss,
                "train_psnr": train_psnr,  # aekit.metrics' PSNR (per image on uint8, mean), of training-mode outputs
                "val_loss": val["loss"],
                "val_psnr": val["psnr"],
                "val_bpp_est": val["bpp"],
                "lr": self.opt.param_groups[0]["lr"],
                "epoch_time_s": time.monotonic() - t_epoch,
            }
            if distributed.is_main():  # rank 0 alone logs and saves
                self._log(row)
                if val["loss"] < self.best_val:
                    self.best_val, self.best_epoch = val["loss"], epoch
                    save_checkpoint(self.out / "best.pt", self._payload(epoch))
                save_checkpoint(self.out / "last.pt", self._payload(epoch))
            if distributed.agree(self.tcfg.time_budget and time.monotonic() - t0 > self.tcfg.time_budget * 60):
                log.info(f"time budget of {self.tcfg.time_budget} min reached after epoch {epoch + 1}")
                break
            if self.tcfg.stop_after and epoch + 1 - self.start_epoch >= self.tcfg.stop_after:
                log.info(f"stopped after {self.tcfg.stop_after} epoch(s) of this run, at epoch {epoch + 1} of "
                         f"{self.tcfg.epochs} (--stop-after); --resume goes on")
                break
        return self._finish(time.monotonic() - t0) if distributed.is_main() else {}

    def _train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over the training set: (mean loss, mean per-image PSNR) over every rank's images."""
        from tqdm import tqdm

        self.model.train()
        rng = np.random.default_rng([self.tcfg.seed, epoch])
        n_batches = math.ceil(len(self.train_set) * max(1, self.tcfg.data_cfg.repeat) / self.tcfg.batch_size)
        total, total_psnr, n = 0.0, 0.0, 0
        bar = tqdm(distributed.shard(self.train_set.batches(self.tcfg.batch_size, rng)), total=n_batches,
                   desc=f"epoch {epoch + 1}/{self.tcfg.epochs}", leave=False, file=sys.stderr,
                   disable=None)
        size = self.phases[epoch]
        for batch in bar:
            x = to_tensor(batch, self.device)
            if size:  # progressive resizing: this epoch trains on down-scaled images
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            self.trained_side = x.shape[-1]
            loss, parts = self._step(x)
            total += loss * len(x)
            total_psnr += parts["_psnr_sum"]
            n += len(x)
            bar.set_postfix(loss=f"{loss:.4f}")
        total, total_psnr, n = distributed.all_sum(total, total_psnr, n)  # over all ranks' slices
        return total / n, total_psnr / n

    def _step(self, x: torch.Tensor) -> tuple[float, dict[str, float]]:
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            inp = corrupt(x, self.noise) if self.noise else x  # denoising: clean targets
            out = self._forward(self.net, inp)
            loss, parts = self.loss_fn(out.x_hat.float(), x)
            if out.kl is not None:
                parts["kl"] = float(out.kl.detach())
                loss = loss + self.tcfg.kl_weight * out.kl
            if self.tcfg.rate_weight > 0:
                bpp = self.model.rate_bpp(out, x.shape[0] * x.shape[2] * x.shape[3])
                parts["bpp"] = float(bpp.detach())
                loss = loss + self.tcfg.rate_weight * bpp
            if self.distilling:  # the student's y follows the teacher's, in quantisation steps
                with torch.no_grad():
                    y_t = self.teacher.encode(self.teacher.pad(inp))  # the input the student saw
                d = torch.mean((out.y.float() - y_t.float()) ** 2)
                parts["distill"] = float(d.detach())
                loss = loss + self.tcfg.distill_weight * d
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss * distributed.loss_weight(len(x))).backward()  # 1 unless slices differ
        if self.tcfg.clip_grad > 0:  # RD recipes: bounds the early latent blow-up at higher lr
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tcfg.clip_grad)
        self.scaler.step(self.opt)
        self.scaler.update()
        parts["_psnr_sum"] = float(psnr_torch(out.x_hat.detach().float(), x).sum())  # the codec's PSNR, summed
        return float(loss.detach()), parts

    def _forward(self, net: torch.nn.Module, x: torch.Tensor) -> AEOutput:
        """net(x), or with --grid-scale s: net(R_s x) and x̂ resampled back to x's size (bicubic, Pillow's
        filter: aekit.images.resample_matrix, differentiable). The rate stays per pixel of x (the image's
        own grid), so λ means what it means for a model that runs at scale 1."""
        s = self.tcfg.grid_scale
        if s == 1.0:
            return net(x)
        h, w = x.shape[-2:]
        H, W = max(1, round(h * s)), max(1, round(w * s))
        out = net(self._resample(x, H, W))
        out.x_hat = self._resample(out.x_hat, h, w)
        return out

    def _resample(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, h, w): M_h @ x @ M_w.T with the bicubic matrices (cached per size)."""
        def m(n_in: int, n_out: int) -> torch.Tensor:
            key = (n_in, n_out, str(x.device))
            if key not in self._resamplers:
                self._resamplers[key] = torch.from_numpy(resample_matrix(n_in, n_out)).float().to(x.device)
            return self._resamplers[key]

        return m(x.shape[-2], h) @ x @ m(x.shape[-1], w).T

    @torch.no_grad()
    def evaluate(self, data: ImageSet) -> dict[str, float]:
        """Loss and MSE with truly rounded latents (eval mode), as the codec will decode."""
        self.model.eval()
        total, total_mse, bits, n, pixels, psnr_sum = 0.0, 0.0, 0.0, 0, 0, 0.0
        gen = torch.Generator(self.device).manual_seed(self.tcfg.seed)  # the same corruption every epoch
        for batch in data.batches(self.tcfg.batch_size, None):
            x = to_tensor(batch, self.device)
            out = self._forward(self.model, corrupt(x, self.noise, gen) if self.noise else x)
            loss, _ = self.loss_fn(out.x_hat, x)
            px = x.shape[0] * x.shape[2] * x.shape[3]
            bpp = float(self.model.rate_bpp(out, px)) if self.tcfg.rate_weight > 0 else 0.0
            total += (float(loss) + self.tcfg.rate_weight * bpp) * len(x)
            total_mse += float(torch.mean((out.x_hat - x) ** 2)) * len(x)
            psnr_sum += float(psnr_torch(out.x_hat, x).sum())  # the codec's PSNR: per image, on uint8
            bits += bpp * px
            n, pixels = n + len(x), pixels + px
        # the learned prior is trained only by the rate term: without it its estimate means nothing
        bpp = bits / pixels if self.tcfg.rate_weight > 0 else float("nan")
        return {"loss": total / n, "mse": total_mse / n, "psnr": psnr_sum / n, "bpp": bpp}

    def _log(self, row: dict[str, Any]) -> None:
        prev = self.history[-1] if self.history else None
        self.history.append(row)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        new_csv = not (self.out / "log.csv").exists()
        with open(self.out / "log.csv", "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new_csv:
                w.writeheader()
            w.writerow(row)
        log.info(f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.5f} psnr {row['train_psnr']:.2f}"
                 f"  val loss {row['val_loss']:.5f} psnr {row['val_psnr']:.2f}"
                 + (f" bpp~{row['val_bpp_est']:.3f}" if self.tcfg.rate_weight > 0 else "")
                 + f"  {row['epoch_time_s']:.1f}s")
        if prev and row["val_loss"] > prev["val_loss"] and row["train_loss"] < prev["train_loss"]:
            warnings.warn(f"validation loss rose ({prev['val_loss']:.5f} -> {row['val_loss']:.5f}) while "
                          f"training loss fell: possible overfitting; best.pt keeps epoch {self.best_epoch + 1}",
                          stacklevel=2)

    def config_dict(self) -> dict[str, Any]:
        return {"model": self.mcfg.to_dict(), "train": asdict(self.tcfg)}

    def _payload(self, epoch: int) -> dict[str, Any]:
        return {
            "model_config": self.mcfg.to_dict(),
            "train_config": asdict(self.tcfg),
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "epoch": epoch,
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "warm_start": self.warm_start,
            "history": self.history,
            "classes": self.classes,
        }

    def _finish(self, train_time: float) -> dict[str, Any]:
        """Reload best.pt, add the latent histogram and the training summary to it."""
        best = load_checkpoint(self.out / "best.pt")
        self.model.load_state_dict(best["state_dict"])
        best_row = self.history[self.best_epoch] if 0 <= self.best_epoch < len(self.history) else self.history[-1]
        summary = {
            "data": str(Path(self.tcfg.data).resolve()),
            "val_data": str(Path(self.tcfg.val_data).resolve()) if self.tcfg.val_data else None,
            "classes": self.classes,
            "n_train": len(self.train_set),
            "n_val": len(self.val_set) if self.val_set else 0,
            "epochs": len(self.history),
            "best_epoch": self.best_epoch + 1,
            "best_val_psnr": best_row["val_psnr"],
            "final_val_psnr": self.history[-1]["val_psnr"],
            "loss": self.tcfg.loss,
            "noise": self.tcfg.noise,
            "progressive": self.tcfg.progressive,
            "encoder_init": self.encoder_source or (best.get("summary") or {}).get("encoder_init"),
            "train_time_s": round(train_time, 1),
            "init_from": self.warm_start or (best.get("summary") or {}).get("init_from"),
            "device": str(self.device),
            "torch": str(torch.__version__),
        }
        if self.tcfg.grid_scale != 1.0:  # trained for a resampled grid: `aekit rescale` it (README, Training)
            summary["grid_scale"] = self.tcfg.grid_scale
        # tanh models: the empirical symbol histogram; RD models export tables from their prior,
        # refitted first to the trained encoder's latents (the transform is fixed by then)
        if self.mcfg.rd:
            summary["prior_refit_bpp"] = self.refit_prior()
            best["state_dict"] = self.model.state_dict()
        best["latent_hist"] = [] if self.mcfg.rd else self.latent_histogram()
        best["summary"] = summary
        save_checkpoint(self.out / "best.pt", {k: v for k, v in best.items() if k not in ("format", "version")})
        log.info(f"best epoch {summary['best_epoch']}: val PSNR {summary['best_val_psnr']:.2f} dB "
              f"-> {self.out / 'best.pt'}")
        return summary

    def refit_prior(self, steps: int = 1000, lr: float = 1e-2) -> list[float]:
        """Fit the factorized prior alone to the final encoder's latents of training images
        (gdn-hp: to ẑ's source z = h_a(ŷ), as the codec computes it).

        During training the prior chases a moving transform; once the transform is fixed, a
        short fit of the prior (y + U(-½, ½), REFIT_VALUES seeded values per channel from up to
        hist_images training crops, full-batch Adam with a cosine-decayed lr) makes the exported
        tables match the latents the codec will code.
        Returns the estimated bits per latent element [before, after].
        """
        self.model.eval()
        ys, seen = [], 0
        rng = np.random.default_rng([self.tcfg.seed, 10**6])
        with torch.no_grad():
            for batch in self.train_set.batches(self.tcfg.batch_size, rng):
                x = to_tensor(batch, self.device)
                if self.tcfg.grid_scale != 1.0:  # the latents of the grid the model was trained on
                    x = self._resample(x, round(x.shape[-2] * self.tcfg.grid_scale), round(x.shape[-1] * self.tcfg.grid_scale))
                ys.append(self.model.prior_inputs(x).float())
                seen += len(x)
                if seen >= self.tcfg.hist_images:
                    break
        y = torch.cat(ys).transpose(0, 1).reshape(len(ys[0][0]), -1)  # (c_y, N·h·w)
        keep = torch.randperm(y.shape[1], generator=torch.Generator().manual_seed(self.tcfg.seed))[:REFIT_VALUES]
        y = y[:, keep.to(y.device)].reshape(1, y.shape[0], -1, 1)  # (1, c_y, M, 1): M values per channel
        prior = self.model.entropy
        opt = torch.optim.Adam(prior.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 0.01)
        per_elem = []
        for i in range(steps + 1):
            bits = -torch.log2(prior.likelihood(y + torch.empty_like(y).uniform_(-0.5, 0.5))).mean()
            if i in (0, steps):
                with torch.no_grad():
                    per_elem.append(round(float(-torch.log2(prior.likelihood(torch.round(y))).mean()), 4))
            if i == steps:
                break
            opt.zero_grad(set_to_none=True)
            bits.backward()
            opt.step()
            sched.step()
        log.info(f"prior refit on {y.shape[2]} latents per channel from {seen} training crops: "
              f"{per_elem[0]:.3f} -> {per_elem[1]:.3f} bits per latent element")
        return per_elem

    @torch.no_grad()
    def latent_histogram(self) -> list[list[int]]:
        """Counts of each 8-bit symbol per latent channel over training images (c_y x levels)."""
        self.model.eval()
        levels, cy = self.mcfg.latent_levels, self.mcfg.latent_channels
        counts = torch.zeros(cy, levels, dtype=torch.int64)
        seen = 0
        rng = np.random.default_rng([self.tcfg.seed, 10**6])  # random crops add diversity
        for batch in self.train_set.batches(self.tcfg.batch_size, rng):
            x = to_tensor(batch, self.device)
            y = self.model.encode(self.model.pad(x)).float().cpu()
            q = torch.round((y + 1) * ((levels - 1) / 2)).clamp(0, levels - 1).long()  # symbols
            for c in range(cy):
                counts[c] += torch.bincount(q[:, c].flatten(), minlength=levels)
            seen += len(x)
            if seen >= self.tcfg.hist_images:
                break
        return counts.tolist()


# Settings a --resume may change: where the data and outputs are, how long and on what it runs.
RESUME_MAY_CHANGE = {"data", "val_data", "out", "epochs", "time_budget", "stop_after", "device", "threads", "vgg_weights",
                     "encoder_weights", "init_from"}


def _differences(old: dict[str, Any], new: dict[str, Any], ignore: set[str]) -> str:
    """'key old (now new), ...' for the settings that differ (nested dicts by their keys), '' if none."""
    out = []
    for k in sorted(set(old) | set(new)):
        if k in ignore or old.get(k) == new.get(k):
            continue
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _differences(a, b, set())
            out.append(f"{k}: {inner}")
        else:
            out.append(f"{k} {a!r} (now {b!r})")
    return ", ".join(out)


def train(tcfg: TrainConfig, mcfg: ModelConfig, resume: bool = False) -> dict[str, Any]:
    """Train a model; returns the training summary (also stored in best.pt)."""
    return Trainer(tcfg, mcfg, resume=resume).run()
