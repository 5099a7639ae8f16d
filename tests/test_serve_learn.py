"""Online learning in `aekit serve --learn`: only images posted to /v1/learn train (never calibration images),
bounded queue, training, atomic swaps, old latents, failures."""

from __future__ import annotations

import time
import warnings
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e \".[serve]\")")
pytest.importorskip("httpx", reason="httpx is not installed (pip install -e \".[test]\")")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from aekit.serve.app import create_app
from aekit.serve.config import ServeConfig

PNG = {"content-type": "image/png"}
AEL = {"content-type": "application/octet-stream"}


@pytest.fixture(scope="module")
def bags(fmnist_dir) -> list[Path]:
    """Normal images to learn from: training images, disjoint from the calibration folder (test/)."""
    return sorted((fmnist_dir / "train" / "bag").iterdir())[:12]


@pytest.fixture()
def cfg(tiny_model, fmnist_dir) -> ServeConfig:
    return ServeConfig(model=str(tiny_model(1, 4, "fmnist")), calibration=str(fmnist_dir / "test"), calibration_limit=10,
                       alpha=0.1, learn=True, batch_size=4, swap_every_s=0.0, swap_min_steps=2, keep_versions=1)


def test_queue_is_bounded_and_requests_never_wait(cfg, bags):
    app = create_app(replace(cfg, queue_size=2))  # no lifespan: the worker does not run, the queue fills
    c = TestClient(app)
    codes = [c.post("/v1/learn", content=p.read_bytes(), headers=PNG).status_code for p in bags[:5]]
    assert codes == [200] * 5
    s = c.get("/v1/status").json()["learning"]
    assert (s["accepted"], s["dropped"], s["queued"]) == (2, 3, 2)
    app.state.server.close()


def test_learns_swaps_and_old_latents_still_decode(cfg, bags):
    with TestClient(create_app(cfg)) as c:
        old = c.post("/v1/compress", content=bags[0].read_bytes(), headers=PNG)
        v0 = old.headers["x-model-id"]
        for p in bags:
            assert c.post("/v1/learn", content=p.read_bytes(), headers=PNG).status_code == 200
        deadline = time.monotonic() + 240
        while (s := c.get("/v1/status").json())["version"] < 1 and time.monotonic() < deadline:
            assert s["learning"]["failed_exports"] == 0, s["learning"]["last_error"]
            time.sleep(0.5)
        assert s["version"] >= 1 and s["model_id"] != v0, s
        assert s["learning"]["steps"] >= cfg.swap_min_steps and s["learning"]["running_loss"] > 0
        assert s["calibrated"]  # each learned version is recalibrated on the calibration images
        d = c.post("/v1/decompress", content=old.content, headers=AEL)
        assert d.status_code == 200 and d.headers["x-model-version"] == "0"  # version 0 always decodes
        r = c.post("/v1/screen?class=bag", content=bags[0].read_bytes(), headers=PNG).json()
        assert r["version"] >= 1 and r["verdict"] in ("normal", "anomaly")


def test_failed_update_keeps_last_good_model_and_pruned_versions_answer_409(cfg, bags, monkeypatch):
    app = create_app(cfg)
    server = app.state.server
    learner, c = server.learner, TestClient(app)
    learner.load()
    for p in bags[:4]:
        c.post("/v1/learn", content=p.read_bytes(), headers=PNG)
    learner._step(learner._groups([learner.queue.get() for _ in range(4)])[0])
    assert learner.update() and server.store.current.version == 1
    v1_latent = c.post("/v1/compress", content=bags[0].read_bytes(), headers=PNG).content

    import aekit.export.onnx

    def broken(*a, **k):
        raise aekit.export.onnx.ExportError("onnxruntime disagrees with PyTorch (simulated)")

    monkeypatch.setattr(aekit.export.onnx, "export_model", broken)
    assert not learner.update()
    s = c.get("/v1/status").json()
    assert s["version"] == 1 and s["learning"]["failed_exports"] == 1 and "simulated" in s["learning"]["last_error"]
    assert c.post("/v1/reconstruct", content=bags[1].read_bytes(), headers=PNG).status_code == 200
    assert c.post("/v1/learn", content=bags[5].read_bytes(), headers=PNG).json()["queued"]
    monkeypatch.undo()
    learner._step(learner._groups([learner.queue.get()])[0])  # new weights, so version 2 gets a new id
    assert learner.update() and server.store.current.version == 2  # keep_versions=1: v1 is pruned
    r = c.post("/v1/decompress", content=v1_latent, headers=AEL)
    assert r.status_code == 409 and "version 1" in r.json()["error"] and "no longer loaded" in r.json()["error"]
    server.close()


def test_learn_without_checkpoint_is_a_clear_error(cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="--checkpoint"):
        create_app(replace(cfg, checkpoint=str(tmp_path / "missing.pt")))


def test_only_images_marked_normal_are_learned(cfg, bags, fmnist_dir):
    """/v1/screen, /v1/compress, /v1/reconstruct never feed training; /v1/learn does, except calibration images."""
    app = create_app(cfg)
    c = TestClient(app)
    anomaly = sorted((fmnist_dir / "test" / "trouser").iterdir())[-1].read_bytes()
    for url in ("/v1/screen?class=bag", "/v1/compress", "/v1/reconstruct", "/v1/analyze"):
        c.post(url, content=anomaly, headers=PNG)
    assert c.get("/v1/status").json()["learning"]["accepted"] == 0
    calibration_image = sorted((fmnist_dir / "test" / "bag").iterdir())[0].read_bytes()
    r = c.post("/v1/learn", content=calibration_image, headers=PNG)
    assert r.status_code == 409 and "calibration set" in r.json()["error"]
    r = c.post("/v1/learn", content=bags[0].read_bytes(), headers=PNG)
    assert r.status_code == 200 and r.json()["queued"] is True
    assert c.get("/v1/status").json()["learning"]["accepted"] == 1
    app.state.server.close()


def test_learn_token_and_learning_off(cfg, bags, tmp_path):
    app = create_app(replace(cfg, learn_token="s3cret"))
    c = TestClient(app)
    assert c.post("/v1/learn", content=bags[0].read_bytes(), headers=PNG).status_code == 403
    ok = c.post("/v1/learn", content=bags[0].read_bytes(), headers={**PNG, "x-learn-token": "s3cret"})
    assert ok.status_code == 200
    app.state.server.close()
    off = create_app(replace(cfg, learn=False))
    r = TestClient(off).post("/v1/learn", content=bags[0].read_bytes(), headers=PNG)
    assert r.status_code == 409 and "--learn" in r.json()["error"]
    off.state.server.close()


def test_rate_distortion_models_learn_with_their_rate_term(gray_dir, tmp_path):
    """A gdn checkpoint: the learner's loss is MSE + the run's λ·bits, so the prior learns too (MSE alone
    would leave it fixed while the latents drift, and every learned version's files would grow)."""
    import types

    import numpy as np
    import torch

    from aekit.cli import main
    from aekit.serve.learn import Learner

    run = tmp_path / "run"
    assert main(["train", str(gray_dir / "test"), "--out", str(run), "--arch", "gdn", "--channels", "1",
                 "--factor", "4", "--width", "8", "--rate-weight", "0.01", "--resize", "none", "--max-images", "64",
                 "--batch-size", "16", "--epochs", "1", "--threads", "1"]) == 0
    store = types.SimpleNamespace(current=types.SimpleNamespace(manifest={}))
    learner = Learner(ServeConfig(model="m", checkpoint=str(run / "best.pt"), learn=True), store, tmp_path / "w")
    learner.load()
    assert learner.rate_weight == 0.01
    prior = [p.detach().clone() for p in learner.model.entropy_parameters()]
    learner._step(np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8))
    assert any(not torch.equal(a, b) for a, b in zip(prior, learner.model.entropy_parameters()))
