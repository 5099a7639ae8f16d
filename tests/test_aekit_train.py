"""Training: logs, checkpoints (weights_only), exact resume, bad input with clear messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from aekit.checkpoint import CheckpointError, load_checkpoint, load_model
from aekit.cli import main
from aekit.config import ModelConfig
from aekit.data import DataConfig, split_samples
from aekit.images import ImageError, scan_folder
from aekit.train import TrainConfig, train


def tiny(data, out, epochs=1, **kw):
    tcfg = TrainConfig(data=str(data), out=str(out), epochs=epochs, batch_size=32, seed=3,
                       data_cfg=DataConfig(resize="none", workers=2, max_images=160), hist_images=64, **kw)
    return tcfg, ModelConfig(channels=1, ratio=4, width=8, blocks=0)


def test_train_writes_logs_and_loadable_checkpoints(train_tiny):
    run = train_tiny(1, 4)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["val_psnr"] > 12
    assert all(8 < r["train_psnr"] < 60 for r in rows)  # aekit.metrics' per-image PSNR, as val_psnr
    assert (run / "log.csv").read_text().startswith("epoch,size,train_loss,train_psnr,val_loss,val_psnr")
    ckpt = load_checkpoint(run / "best.pt")  # torch.load(weights_only=True) inside
    hist = np.array(ckpt["latent_hist"])
    assert hist.shape == (4, 256) and hist.sum() > 0
    assert ckpt["summary"]["classes"] and ckpt["summary"]["n_train"] > 0
    model, _ = load_model(run / "best.pt")
    assert not model.training


def test_resume_reproduces_an_uninterrupted_run(gray_dir, tmp_path):
    data = gray_dir / "test"
    straight = train(*tiny(data, tmp_path / "a", epochs=2))
    train(*tiny(data, tmp_path / "b", epochs=2, time_budget=1e-9))  # "interrupted" after epoch 1
    assert len(load_checkpoint(tmp_path / "b" / "last.pt")["history"]) == 1
    resumed = train(*tiny(data, tmp_path / "b", epochs=2), resume=True)
    assert resumed["epochs"] == straight["epochs"] == 2
    a = load_checkpoint(tmp_path / "a" / "last.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "b" / "last.pt")["state_dict"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    # --stop-after: the same interruption on purpose, at an epoch boundary
    train(*tiny(data, tmp_path / "d", epochs=2, stop_after=1))
    assert len(load_checkpoint(tmp_path / "d" / "last.pt")["history"]) == 1
    train(*tiny(data, tmp_path / "d", epochs=2), resume=True)
    d = load_checkpoint(tmp_path / "d" / "last.pt")["state_dict"]
    assert all(torch.allclose(a[k].float(), d[k].float(), atol=1e-6) for k in a)
    # a checkpoint written before a model config field existed resumes (the field takes its default)
    ckpt = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    del ckpt["model_config"]["res_blocks"], ckpt["model_config"]["down_factor"]
    torch.save(ckpt, tmp_path / "b" / "last.pt")
    assert train(*tiny(data, tmp_path / "b", epochs=3), resume=True)["epochs"] == 3
    # a resume with other training settings is another experiment: refused, naming what differs
    train(*tiny(data, tmp_path / "c", epochs=2, time_budget=1e-9))
    # --time-budget counts the whole run's epochs, the resumed ones too: a resume past it runs one epoch
    train(*tiny(data, tmp_path / "c", epochs=3, time_budget=1e-9), resume=True)
    assert len(load_checkpoint(tmp_path / "c" / "last.pt")["history"]) == 2
    with pytest.raises(CheckpointError, match=r"other settings \(lr 0\.001 \(now 0\.5\)\)"):
        train(*tiny(data, tmp_path / "c", epochs=2, lr=0.5), resume=True)


def test_split_is_deterministic_and_stratified(gray_dir):
    samples, classes, _ = scan_folder(gray_dir / "test")
    t1, v1 = split_samples(samples, 0.1, seed=0)
    t2, v2 = split_samples(samples, 0.1, seed=0)
    _, v3 = split_samples(samples, 0.1, seed=1)
    assert v1 == v2 and v1 != v3 and len(t1) + len(v1) == len(samples)
    assert {s.label for s in v1} == set(classes)


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert "empty: no image files" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "nowhere: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"garbage")
    (bad / "b.jpg").write_bytes(b"\xff\xd8\xff garbage")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(bad / "tiny.png")
    args = ["train", str(bad), "--out", str(tmp_path / "r"), "--channels", "1", "--resize", "none"]
    assert main(args + ["--val-fraction", "0"]) == 2
    err = capsys.readouterr().err
    assert "a.png: cannot decode image" in err and "tiny.png: 2x2 is smaller than the down-sampling factor 4" in err
    assert "bad (training split): no usable images among 3 files" in err
    with pytest.raises(SystemExit) as e:
        main(["train", str(bad), "--out", str(tmp_path / "r"), "--ratio", "5"])
    assert e.value.code == 2
    assert "invalid choice: 5" in capsys.readouterr().err
    for opt, value in (("--batch-size", "0"), ("--width", "0"), ("--epochs", "0"), ("--val-fraction", "1.5"),
                       ("--rate-weight", "-1")):
        with pytest.raises(SystemExit) as e:  # usage errors in one line, not a traceback from inside training
            main(["train", str(bad), "--out", str(tmp_path / "r"), opt, value])
        assert e.value.code == 2 and f"argument {opt}" in capsys.readouterr().err
    (tmp_path / "junk.pth").write_text("junk")  # a bad weights file: one line naming it, exit 2, no traceback
    assert main(["train", str(bad), "--out", str(tmp_path / "p"), "--loss", "mse:1,perceptual:0.1",
                 "--vgg-weights", str(tmp_path / "junk.pth")]) in (2,)
    assert "junk.pth: not a readable VGG19 state_dict" in capsys.readouterr().err
    assert main(["train", str(bad), "--out", str(tmp_path / "f"), "--freeze-epochs", "3"]) == 2  # dcgan: no effect
    assert "--freeze-epochs applies to --arch pretrained, or --arch gdn-hp with --init-from (or resuming such a run) only" in capsys.readouterr().err
    for extra, says in ((["--encoder-width", "8"], "--encoder-width applies to --arch gdn and gdn-hp only"),
                        (["--arch", "gdn", "--hyper-width", "8"], "--hyper-width applies to --arch gdn-hp only"),
                        (["--arch", "gdn", "--freeze-decoder"], "--freeze-decoder applies to --arch gdn, gdn-hp or klt "
                                                                "with --init-from only"),
                        (["--arch", "gdn-hp", "--freeze-decoder"], "(this run: --arch gdn-hp, no --init-from)"),
                        (["--distill-weight", "1"], "--distill-weight applies to --distill-from only (this run: no "
                                                    "--distill-from)")):
        assert main(["train", str(bad), "--out", str(tmp_path / "f"), *extra]) == 2, extra
        assert says in capsys.readouterr().err
    (tmp_path / "taken").write_text("x")  # --out is a file: one line, before any data are read
    assert main(["train", str(bad), "--out", str(tmp_path / "taken")]) == 2
    assert "--out " in (err := capsys.readouterr().err) and "taken: exists and is not a folder" in err


def test_corrupt_and_foreign_checkpoints(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x80\x04 not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable aekit checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign.pt: not an aekit checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    # the reason is ours, in one line: not torch's advice to file an issue or to load with weights_only=False
    import pickle

    (tmp_path / "objects.pt").write_bytes(pickle.dumps({"a": object}))
    torch.save({"a": 1}, tmp_path / "whole.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:200])
    for name, why in (("objects.pt", "holds objects other than tensors"), ("cut.pt", "truncated or corrupt")):
        with pytest.raises(CheckpointError, match=f"{name}: not a readable aekit checkpoint") as e:
            load_checkpoint(tmp_path / name)
        assert why in str(e.value) and "issue" not in str(e.value) and "\n" not in str(e.value)


def test_images_over_the_cache_budget_are_reread_identically(gray_dir):
    from aekit.data import ImageSet

    samples, _, _ = scan_folder(gray_dir / "test")
    samples = samples[:40]
    cached = ImageSet(samples, 1, DataConfig(resize="none"), 4, train=True)
    uncached = ImageSet(samples, 1, DataConfig(resize="none", cache_mb=0), 4, train=True)
    assert all(im is not None for im in cached.images) and all(im is None for im in uncached.images)
    a = list(cached.batches(16, np.random.default_rng(1)))
    b = list(uncached.batches(16, np.random.default_rng(1)))
    assert len(a) == 3 and all((x == y).all() for x, y in zip(a, b))


def test_init_from_warm_starts_weights_with_a_fresh_schedule(gray_dir, tmp_path):
    from aekit.train import Trainer

    data = gray_dir / "test"
    train(*tiny(data, tmp_path / "a", epochs=1))
    tcfg, mcfg = tiny(data, tmp_path / "b", epochs=3, lr=2e-4, init_from=str(tmp_path / "a" / "last.pt"))
    t = Trainer(tcfg, mcfg)
    a = load_checkpoint(tmp_path / "a" / "last.pt")
    assert all(torch.equal(v, a["state_dict"][k]) for k, v in t.model.state_dict().items())
    assert t.start_epoch == 0 and t.opt.param_groups[0]["lr"] == 2e-4 and t.sched.T_max == 3
    summary = t.run()
    assert summary["epochs"] == 3 and summary["init_from"]["epoch"] == 1
    # a different architecture, or both --resume and --init-from, is refused with a clear line
    tcfg, _ = tiny(data, tmp_path / "c", init_from=str(tmp_path / "a" / "last.pt"))
    with pytest.raises(CheckpointError, match="differs from this run's in ratio"):
        Trainer(tcfg, ModelConfig(channels=1, ratio=9, width=8, blocks=0))
    with pytest.raises(ValueError, match="give one of them"):
        Trainer(*tiny(data, tmp_path / "a", init_from=str(tmp_path / "a" / "last.pt")), resume=True)


def test_cli_factor_res_blocks_and_stop_after_reach_the_codec(gray_dir, tmp_path):
    """--factor, --res-blocks and --stop-after through the CLI, then export and a compress/decompress round trip."""
    run, model = tmp_path / "run", tmp_path / "model"
    argv = ["train", str(gray_dir / "test"), "--out", str(run), "--arch", "gdn", "--channels", "1", "--ratio", "4",
            "--factor", "4", "--res-blocks", "1", "--width", "8", "--rate-weight", "0.01", "--resize", "none",
            "--max-images", "96", "--batch-size", "16", "--threads", "1", "--epochs", "2"]
    assert main([*argv, "--stop-after", "1"]) == 0
    ckpt = load_checkpoint(run / "last.pt")
    assert len(ckpt["history"]) == 1
    assert ckpt["model_config"]["down_factor"] == 4 and ckpt["model_config"]["res_blocks"] == 1
    assert main([*argv, "--resume"]) == 0 and len(load_checkpoint(run / "last.pt")["history"]) == 2
    assert main(["export", str(run / "best.pt"), "--out", str(model)]) == 0
    m = json.loads((model / "manifest.json").read_text())
    assert m["factor"] == 4 and m["latent_channels"] == 4
    src = gray_dir / "test" / sorted(p.name for p in (gray_dir / "test").iterdir())[0]
    assert main(["compress", str(src), "-m", str(model), "-o", str(tmp_path / "lat")]) == 0
    assert main(["decompress", str(tmp_path / "lat"), "-o", str(tmp_path / "out"), "-m", str(model)]) == 0
    out = sorted((tmp_path / "out").rglob("*.png"))
    assert len(out) == len(list(src.glob("*.png"))) and np.asarray(Image.open(out[0])).shape == (28, 28)
    # the default factor spelled out is the same config: a run started without --factor resumes with it
    assert ModelConfig(arch="gdn", channels=1, ratio=4, down_factor=16) == ModelConfig(arch="gdn", channels=1, ratio=4)
