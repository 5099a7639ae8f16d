"""DistributedDataParallel training (aekit.distributed): 2 CPU processes (gloo) on a tiny model train
as one process does with the same global batch; only rank 0 writes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from aekit.checkpoint import load_checkpoint
from aekit.cli import main
from aekit.config import ModelConfig
from aekit.data import DataConfig
from aekit.train import TrainConfig, train

pytestmark = pytest.mark.slow  # spawns training processes (gloo)


@pytest.fixture(scope="module")
def runs(gray_dir, tmp_path_factory):
    """The same tiny run (64 images, global batch 16, 2 epochs) in 1 and in 2 processes."""
    from aekit.distributed import launch

    tmp = tmp_path_factory.mktemp("ddp")
    # quant="ste": deterministic rounding, so the only randomness (batch order) is shared by all ranks
    mcfg = ModelConfig(channels=1, ratio=4, width=8, blocks=0, quant="ste")
    tcfg = TrainConfig(data=str(gray_dir / "train"), out=str(tmp / "single"), epochs=2, batch_size=16, lr=3e-3,
                       seed=0, threads=1, hist_images=64,
                       data_cfg=DataConfig(resize="none", max_images=72, val_fraction=0.1, workers=1))
    single = train(tcfg, mcfg)
    ddp = launch(2, dataclasses.replace(tcfg, out=str(tmp / "ddp")), mcfg)
    return tmp, single, ddp


def test_two_processes_match_one_process(runs):
    tmp, single, ddp = runs
    a, b = load_checkpoint(tmp / "single" / "last.pt"), load_checkpoint(tmp / "ddp" / "last.pt")
    for ha, hb in zip(a["history"], b["history"], strict=True):
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-4)
        assert ha["val_loss"] == pytest.approx(hb["val_loss"], rel=1e-4)
    for k, va in a["state_dict"].items():  # BatchNorm names and running statistics included
        vb = b["state_dict"][k]
        assert va.shape == vb.shape, k
        if va.is_floating_point():
            assert torch.allclose(va, vb, rtol=1e-3, atol=1e-4), f"{k}: max diff {(va - vb).abs().max():.3g}"
    assert ddp["epochs"] == single["epochs"] == 2
    assert ddp["n_train"] == single["n_train"]
    assert b["train_config"]["batch_size"] == 16  # the global batch


def test_only_rank_zero_writes(runs):
    tmp, _, _ = runs
    names = sorted(p.name for p in (tmp / "ddp").iterdir())
    assert names == ["best.pt", "config.json", "last.pt", "log.csv", "log.jsonl"]
    assert len((tmp / "ddp" / "log.jsonl").read_text().splitlines()) == 2  # one line per epoch, not per rank
    assert "latent_hist" in load_checkpoint(tmp / "ddp" / "best.pt")


def test_batch_size_must_divide(gray_dir, tmp_path, capsys):
    rc = main(["train", str(gray_dir / "train"), "--out", str(tmp_path / "r"), "--nproc", "3",
               "--batch-size", "16", "--epochs", "1"])
    assert rc == 2
    assert "--batch-size 16 is not divisible by --nproc 3" in capsys.readouterr().err
