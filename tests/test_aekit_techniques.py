"""Training techniques: architectures, feature losses, denoising, progressive resizing, VAE,
pretrained trunks; each trains on real images, and each architecture exports with parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aekit.cli import main
from aekit.config import ARCHITECTURE_NAMES, ModelConfig
from aekit.data import DataConfig
from aekit.models import ARCHITECTURES, ConvVAE, build_model
from aekit.train import TrainConfig, Trainer, corrupt, parse_noise, parse_progressive


def gray_batch(gray_dir: Path, n: int = 16) -> torch.Tensor:
    """n real gray 28x28 patches (n, 1, 28, 28) in [-1, 1]."""
    paths = sorted((gray_dir / "train").rglob("*.png"))[:: 37][:n]
    arr = np.stack([np.asarray(Image.open(p), dtype=np.float32) for p in paths])[:, None]
    return torch.from_numpy(arr / 127.5 - 1)


def steps_reduce_loss(model, x: torch.Tensor, steps: int = 12, **loss_kw) -> tuple[float, float]:
    from aekit.losses import ReconstructionLoss

    loss_fn = ReconstructionLoss(**({"spec": "mse"} | loss_kw))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(steps):
        out = model(x)
        loss, _ = loss_fn(out.x_hat, x)
        if out.kl is not None:
            loss = loss + 0.01 * out.kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


def test_cli_choices_match_the_registry():
    assert set(ARCHITECTURE_NAMES) == set(ARCHITECTURES)


@pytest.mark.parametrize("arch", ARCHITECTURE_NAMES)
@pytest.mark.parametrize("ratio,channels", [(4, 1), (9, 3)])
def test_architecture_shapes_and_ratio(arch, ratio, channels):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, channels=channels, ratio=ratio, width=8))
    x = torch.rand(2, channels, 30, 26) * 2 - 1  # not multiples of f: padded, then cropped back
    model.eval()
    out = model(x)
    f = model.factor
    assert out.x_hat.shape == x.shape
    assert out.y.shape == (2, model.latent_channels, -(-30 // f), -(-26 // f))
    if not model.cfg.rd:  # tanh latents and outputs; rate-distortion models have unbounded y (integer quantiser)
        assert out.y.abs().max() <= 1 and out.x_hat.abs().max() <= 1
    assert channels * f * f / model.latent_channels == ratio  # input elements / latent elements


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURE_NAMES if a != "klt"])
def test_each_architecture_learns_on_real_images(arch, gray_dir):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, channels=1, ratio=4, width=8))
    first, last = steps_reduce_loss(model, gray_batch(gray_dir))
    assert last < 0.7 * first


def test_klt_starts_from_the_principal_components(gray_dir):
    """The linear baseline needs no gradient steps to be good: PCA of the patches is its init."""
    torch.manual_seed(0)
    x = gray_batch(gray_dir)
    model = build_model(ModelConfig(arch="klt", channels=1, ratio=4)).eval()
    before = float(((model(x).x_hat - x) ** 2).mean())
    model.init_from_data(x)
    after = float(((model(x).x_hat - x) ** 2).mean())
    assert after < 0.2 * before
    assert 10 * np.log10(4 / after) > 22  # 4 of 16 coefficients per 4x4 patch, rounded to 8-grey-level steps


def test_vae_kl_sampling_and_deterministic_mean(gray_dir):
    torch.manual_seed(0)
    vae = build_model(ModelConfig(arch="vae", channels=1, ratio=4, width=8))
    x = gray_batch(gray_dir, 4)
    vae.train()
    out = vae(x)
    assert out.kl is not None and out.kl > 0
    vae.eval()
    a, b = vae(x), vae(x)
    assert a.kl is None and torch.equal(a.x_hat, b.x_hat)  # inference uses the mean, no sampling
    s = vae.sample(9, 28, 28, torch.Generator().manual_seed(1))
    assert s.shape == (9, 1, 28, 28) and s.min() >= -1 and s.max() <= 1
    assert not torch.equal(s[0], s[1])


def test_vae_sample_and_interpolate_cli(tmp_path, gray_dir, capsys):
    run = tmp_path / "vae"
    rc = main(["train", str(gray_dir / "train"), "--out", str(run), "--arch", "vae", "--width", "8",
               "--epochs", "1", "--max-images", "200", "--size", "28", "--resize", "none", "--threads", "1"])
    assert rc == 0
    assert main(["sample", str(run), "-n", "10", "-o", str(tmp_path / "grid.png")]) == 0
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (3 * 30 - 2, 4 * 30 - 2)  # 4 columns x 3 rows of 28 px with 2 px gaps
    a, b = sorted((gray_dir / "test").rglob("*.png"))[:2]
    assert main(["interpolate", str(run / "best.pt"), str(a), str(b), "--steps", "5",
                 "-o", str(tmp_path / "strip.png")]) == 0
    assert np.asarray(Image.open(tmp_path / "strip.png")).shape == (28, 7 * 30 - 2)


def test_sample_refuses_a_model_without_prior(train_tiny, tmp_path, capsys):
    run = train_tiny(1, 4)
    assert main(["sample", str(run), "-o", str(tmp_path / "g.png")]) == 2
    assert "has no prior to sample from (train with --arch vae)" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "nope"), "-o", str(tmp_path / "g.png")]) == 2
    assert not (tmp_path / "g.png").exists()


def test_noise_specs_and_corruption():
    assert parse_noise("") is None and parse_noise("gaussian:0.1") == ("gaussian", 0.1)
    for bad, msg in [("salt:0.1", "expected gaussian:SIGMA"), ("mask:x", "not a number"), ("mask:2", r"\(0, 1\]")]:
        with pytest.raises(ValueError, match=msg):
            parse_noise(bad)
    x = torch.zeros(4, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    noisy = corrupt(x, ("gaussian", 0.1), g)
    assert abs(float(noisy.std()) - 0.2) < 0.02  # sigma 0.1 on [0, 1] = 0.2 on [-1, 1]
    masked = corrupt(x, ("mask", 0.25), g)
    dropped = (masked == -1).all(dim=1)  # whole pixels, every channel
    assert abs(float(dropped.float().mean()) - 0.25) < 0.03
    assert ((masked == -1).any(dim=1) == dropped).all()


def test_progressive_schedule():
    assert parse_progressive("", 3) == [None, None, None]
    assert parse_progressive("14:2,21:1", 5) == [14, 14, 21, None, None]
    with pytest.raises(ValueError, match="leave at least one epoch"):
        parse_progressive("14:3", 3)
    with pytest.raises(ValueError, match="SIZE:EPOCHS"):
        parse_progressive("14", 3)


def test_progressive_sizes_must_be_below_the_training_size(gray_dir, tmp_path, capsys):
    from aekit.cli import main

    assert main(["train", str(gray_dir / "train"), "--out", str(tmp_path / "r"), "--size", "16", "--resize",
                 "random-crop", "--epochs", "2", "--progressive", "20:1", "--channels", "1"]) == 2
    assert "size 20 is not below the training size 16" in capsys.readouterr().err


def small_train(gray_dir: Path, out: Path, mcfg: ModelConfig, **tk) -> Trainer:
    tcfg = TrainConfig(data=str(gray_dir / "train"), out=str(out), batch_size=16, lr=3e-3, threads=1,
                       hist_images=64, data_cfg=DataConfig(resize="none", max_images=160, workers=2), **tk)
    return Trainer(tcfg, mcfg)


def test_denoising_and_progressive_training_run(fmnist_dir, tmp_path):
    # real data: on scikit-image texture patches 3 masked-denoising epochs need not raise PSNR
    tr = small_train(fmnist_dir, tmp_path / "run", ModelConfig(channels=1, width=8),
                     epochs=3, noise="mask:0.2", progressive="14:2")
    summary = tr.run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["size"] for r in rows] == [14, 14, 28]  # size column: low res first, then the images' own
    assert summary["noise"] == "mask:0.2" and summary["progressive"] == "14:2"
    assert rows[-1]["val_psnr"] > rows[0]["val_psnr"]


def test_pretrained_two_phase_and_discriminative_lr(gray_dir, tmp_path):
    import torchvision

    weights = tmp_path / "resnet18.pt"
    torch.manual_seed(3)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    tr = small_train(gray_dir, tmp_path / "run", ModelConfig(arch="pretrained", channels=1, width=8),
                     epochs=2, freeze_epochs=1, lr_ratio=0.1, encoder_weights=str(weights))
    assert tr.encoder_source == str(weights)
    ref = torch.load(weights, weights_only=True)
    assert torch.equal(tr.model.trunk.stem[0].weight, ref["conv1.weight"])  # ImageNet-style weights loaded
    assert [g["lr"] for g in tr.opt.param_groups] == pytest.approx([3e-5, 3e-4, 3e-3])  # early -> decoder
    conv1 = tr.model.trunk.stem[0].weight.detach().clone()
    bn_mean = tr.model.trunk.stem[1].running_mean.clone()
    head = tr.model.head.weight.detach().clone()
    tr.model.set_trunk_frozen(True)
    tr._train_epoch(0)  # phase 1: decoder (and head) only, trunk and its BN statistics untouched
    assert torch.equal(tr.model.trunk.stem[0].weight, conv1)
    assert torch.equal(tr.model.trunk.stem[1].running_mean, bn_mean)
    assert not torch.equal(tr.model.head.weight, head)
    tr.model.set_trunk_frozen(False)
    tr._train_epoch(1)  # phase 2: everything
    assert not torch.equal(tr.model.trunk.stem[0].weight, conv1)


def test_pretrained_weights_errors(tmp_path):
    from aekit.models import ResNetTrunk

    trunk = ResNetTrunk("resnet18", 4)
    with pytest.raises(FileNotFoundError, match="nope.pt: resnet18 weights file not found"):
        trunk.load_pretrained(tmp_path / "nope.pt")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match="bad.pt: resnet18 weights lack"):
        trunk.load_pretrained(tmp_path / "bad.pt")


def test_vgg16_multilayer_feature_loss(tmp_path, gray_dir):
    from torchvision.models.vgg import cfgs, make_layers

    from aekit.losses import PerceptualLoss, parse_perceptual_spec

    assert parse_perceptual_spec("vgg19") == ("vgg19", [("relu2_2", 1.0)])
    net, layers = parse_perceptual_spec("vgg16")
    assert net == "vgg16" and [w for _, w in layers] == sorted((w for _, w in layers), reverse=True)
    for bad, msg in [("vgg11:relu1_1", "expected NET:LAYER"), ("vgg16:relu9_9", "has no layer 'relu9_9'"),
                     ("vgg16:relu1_2=x", "not a number")]:
        with pytest.raises(ValueError, match=msg):
            parse_perceptual_spec(bad)
    torch.manual_seed(0)
    path = tmp_path / "vgg16.pt"
    torch.save(make_layers(cfgs["D"]).state_dict(), path)  # random weights: ImageNet's are not reachable here
    loss = PerceptualLoss(path, "vgg16:relu1_2=1,relu3_3=0.5")
    assert len(loss.features) == 16 and len(loss.taps) == 2  # stack cut after relu3_3
    x = gray_batch(gray_dir, 4)
    assert float(loss(x, x)) == 0 and float(loss(x.flip(-1), x)) > 0
    model = build_model(ModelConfig(channels=1, ratio=4, width=8))
    first, last = steps_reduce_loss(model, gray_batch(gray_dir), spec="mse:1,perceptual:0.1",
                                    vgg_weights=path, perceptual="vgg16")
    assert last < first


@pytest.mark.parametrize("arch", ["resnet", "pretrained", "vae"])
def test_every_variant_exports_with_parity(arch, gray_dir, tmp_path):
    from aekit.export.onnx import export_model
    from aekit.export.runtime import Runtime

    tr = small_train(gray_dir, tmp_path / "run", ModelConfig(arch=arch, channels=1, ratio=9, width=8),
                     epochs=1, freeze_epochs=0)
    tr.run()
    out = export_model(tmp_path / "run" / "best.pt", tmp_path / "model")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["arch"] == arch
    assert manifest["verification"]["encoder_max_abs_err"] < 1e-4
    rt = Runtime(out)
    img = np.asarray(Image.open(sorted((gray_dir / "test").rglob("*.png"))[0]))[None, :, :, None]
    assert rt.decode(rt.encode(img), 28, 28).shape == (1, 28, 28, 1)


def test_denoise_cli_reconstructs_a_folder_and_resumes(tiny_model, gray_dir, tmp_path, capsys):
    src = tmp_path / "noisy"
    for i, p in enumerate(sorted((gray_dir / "test").rglob("*.png"))[:12]):
        (src / p.parent.name).mkdir(parents=True, exist_ok=True)
        (src / p.parent.name / p.name).write_bytes(p.read_bytes())
    (src / "broken.png").write_bytes(b"not an image")
    model = tiny_model(1, 4)
    rc = main(["denoise", str(src), "-m", str(model), "-o", str(tmp_path / "clean")])
    err = capsys.readouterr().err
    assert rc == 2 and "broken.png" in err and "was not trained with --noise" in err
    outs = sorted((tmp_path / "clean").rglob("*.png"))
    assert len(outs) == 12 and np.asarray(Image.open(outs[0])).shape == (28, 28)
    main(["denoise", str(src), "-m", str(model), "-o", str(tmp_path / "clean")])
    assert "skipped 12 existing" in capsys.readouterr().err


@pytest.mark.slow  # trains and exports two models through subprocesses
def test_experiment_table_end_to_end(fmnist_dir, tmp_path):
    """Two techniques at one ratio, tiny budget: trained, exported, measured, tabled; rerun resumes."""
    from aekit.bench.experiment import ExperimentConfig, run_experiment, time_to_reach, train_args

    cfg = ExperimentConfig(data=str(fmnist_dir), out=str(tmp_path / "exp"), ratios=[9],
                           techniques=["pixelshuffle", "progressive"], train_images=200, test_images=100,
                           epochs=2, width=8, probe_labels=5, probe_pool=100)
    args, note = train_args(cfg, "perceptual-vgg16", 4, tmp_path, tmp_path / "run")
    assert "--vgg-weights" in args and "random init" in note  # no ImageNet weights here: the row says so
    result = run_experiment(cfg)
    rows = {r["technique"]: r for r in result["rows"]}
    assert set(rows) == {"pixelshuffle", "progressive"}
    for r in rows.values():
        assert 0 < r["mse"] < 1 and r["psnr_db"] > 8 and 0 <= r["clf_acc_recon"] <= 1 and 0 <= r["probe_acc"] <= 1
        assert 5 < r["denoise_psnr_db"] < 40
    assert "--progressive 14:1" in rows["progressive"]["command"]
    assert "### Ratio 1/9" in result["markdown"] and "Progressive resizing at 1/9" in result["markdown"]
    assert 15 < result["noisy_input_psnr_db"] < 25  # sigma 0.1 noise: about 20 dB
    assert (tmp_path / "exp" / "results.md").exists()
    again = run_experiment(cfg)  # everything kept: nothing retrained
    assert [r["train_cpu_s"] for r in again["rows"]] == [r["train_cpu_s"] for r in result["rows"]]
    assert time_to_reach({"val_psnr_by_epoch": [10, 12, 14], "epoch_time_s": [1, 2, 3]}, 12) == 3
    assert time_to_reach({"val_psnr_by_epoch": [10], "epoch_time_s": [1]}, 12) is None
