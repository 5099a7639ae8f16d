"""Issue 16: anomaly maps, small-flaw scores, feature bank, combined calibration, synthetic defects,
the defect benchmark's metrics, the estimator conventions and screen's exit codes, on tiny real models."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import torch

from aekit.cli import main
from conftest import needs_fmnist
from aekit.images import load_image
from aekit.detector.calibration import CalibrationError, default_alpha, min_calibration_size
from aekit.detector.defect_bench import aupro, auroc
from aekit.detector.defects import KINDS, make_defects
from aekit.detector.features import FeatureBank
from aekit.detector.model import Detector
from aekit.detector.scores import components, error_maps, image_scores, reduce_maps, smooth
from aekit.export.manifest import load_manifest
from aekit.train import corrupt, parse_noise


pytestmark = [pytest.mark.fmnist, needs_fmnist]  # real Fashion-MNIST images and a model trained on them


@pytest.fixture
def model(tiny_model, tmp_path):
    dest = tmp_path / "model"
    shutil.copytree(tiny_model(1, 4, "fmnist"), dest)  # trained on the Fashion-MNIST images screened here
    return dest


@pytest.fixture(scope="module")
def trousers(fmnist_dir) -> np.ndarray:
    files = sorted((fmnist_dir / "train" / "trouser").iterdir())
    return np.stack([load_image(f, 1)[0] for f in files])  # (N, 28, 28, 1)


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# ---- scores and maps ---------------------------------------------------------------------------
def test_score_specs_parse_and_reject():
    assert components("mse") == [("mse", "mean")] and components("ssim-max+feat") == [("ssim", "max"), ("feat", "")]
    assert components("msssim-top2.5") == [("msssim", "top2.5")]
    for bad in ("psnr", "mse-median", "mse-top0", "feat-max", "mse+mse"):
        with pytest.raises(ValueError, match="score"):
            components(bad)


def test_small_flaw_reducers_see_a_small_defect():
    rng = np.random.default_rng(0)
    x = rng.integers(100, 140, (2, 28, 28, 1), dtype=np.uint8)
    x_hat = x.copy()
    x_hat[1, 10:14, 10:14] = 255  # a 4x4 flaw in image 1 only
    for kind in ("mse", "ssim", "msssim"):
        m = error_maps(x, x_hat, kind)
        assert m.shape == (2, 28, 28) and m[0].max() == 0 and m[1, 12, 12] > 0
    m = error_maps(x, x_hat, "mse")
    mean, _ = image_scores(m, "mean")
    peak, sm = image_scores(m, "max")
    top, _ = image_scores(m, "top1")
    assert peak[1] / mean[1] > 10 and top[1] > mean[1]  # the max of the smoothed map is not diluted by area
    assert sm[1].sum() == pytest.approx(m[1].sum(), rel=0.02)  # smoothing keeps the mass (mirrored edges)
    assert reduce_maps(np.arange(100.0).reshape(1, 10, 10), "top10")[0] == pytest.approx(94.5)
    np.testing.assert_array_equal(smooth(m, 0), m)


# ---- feature bank ---------------------------------------------------------------------------------
def test_feature_bank_is_bounded_and_scores_novel_patches_higher():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(40, 3, 7, 7)).astype(np.float32)
    bank = FeatureBank.fit(y, bank_size=500, seed=0)
    assert bank.bank.shape == (500, 3 * 9 + 2)  # subsampled from 40 * 49 vectors
    loo = bank.score_maps(y[:5], image_ids=np.arange(5))
    assert loo.min() > 0  # leave-one-image-out: an image never matches its own vectors
    odd = y[:5].copy()
    odd[:, :, 3, 3] += 8.0  # one latent position far outside the normal range
    assert np.all(bank.score_maps(odd)[:, 3, 3] > loo[:, 3, 3])
    again = FeatureBank.from_arrays(bank.to_arrays("c/"), "c/")
    np.testing.assert_array_equal(again.score_maps(odd), bank.score_maps(odd))


# ---- synthetic defects, training corruption, metrics ---------------------------------------------
def test_defects_are_seeded_visible_and_masked(trousers):
    x = trousers[:20]
    d, m, kinds, sizes = make_defects(x, seed=3)
    d2, m2, _, _ = make_defects(x, seed=3)
    np.testing.assert_array_equal(d, d2)
    np.testing.assert_array_equal(m, m2)
    assert set(kinds) == set(KINDS) and set(sizes) == {2, 4, 6, 8}  # kinds cycle fastest, then sizes
    for i in range(len(x)):
        assert m[i].any() and not np.array_equal(d[i], x[i])
        assert np.array_equal(d[i][~m[i]], x[i][~m[i]])  # nothing changes outside the mask


def test_defect_noise_kind_corrupts_inputs_only():
    assert parse_noise("defects:0.5") == ("defects", 0.5) and parse_noise("mask:0.2") == ("mask", 0.2)
    with pytest.raises(ValueError, match="defects:PROBABILITY"):
        parse_noise("cutpaste:0.5")
    x = torch.rand(200, 1, 28, 28) * 2 - 1
    y = corrupt(x, ("defects", 0.5), torch.Generator().manual_seed(0))
    changed = (y != x).flatten(1).any(1).float().mean().item()
    assert 0.35 < changed < 0.6  # about half the images get a defect (a cut-paste may change nothing)
    frac = (y != x).flatten(1).float().mean(1)
    assert frac.max() <= 0.25  # local: at most a quarter of the image side squared (or a scratch)
    assert y.min() >= -1 and y.max() <= 1


def test_auroc_and_aupro():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    lab, s = rng.random(300) < 0.3, rng.normal(size=300)
    s[lab] += 1
    s[:10] = 0.0  # ties
    assert auroc(lab, s) == pytest.approx(sklearn.roc_auc_score(lab, s))
    masks = np.zeros((4, 16, 16), bool)
    masks[1, 2:6, 2:6] = masks[2, 8:12, 8:14] = True
    perfect = masks.astype(float) + 0.01 * rng.random(masks.shape)
    assert aupro(perfect, masks) == pytest.approx(1.0, abs=1e-3)
    assert aupro(rng.random(masks.shape), masks) < 0.25  # chance: about max_fpr / 2
    half = masks.astype(float)
    half[1] = 0.0  # one of two regions missed entirely: PRO 0.5 at every small FPR
    assert aupro(half + 0.001 * rng.random(masks.shape), masks) == pytest.approx(0.5, abs=0.02)


# ---- calibration rules ---------------------------------------------------------------------------
def test_default_alpha_fits_the_folder_and_infinite_thresholds_are_refused(model, trousers):
    assert default_alpha(500) == 0.01 and default_alpha(40) == 0.05 and default_alpha(12) == 0.1
    with pytest.raises(CalibrationError, match="need at least 4"):
        default_alpha(3)
    det = Detector(model, score="mse-max").fit(trousers[:40], "trouser")
    assert det.alpha_ == 0.05 and np.isfinite(det.thresholds_["trouser"])
    with pytest.raises(CalibrationError) as e:
        Detector(model, score="mse-max", alpha=0.01).fit(trousers[:30], "trouser")
    msg = str(e.value)
    assert "\n" not in msg and f"need at least {min_calibration_size(0.01)}" in msg and "30 calibration" in msg


def test_calibrate_cli_refuses_too_few_and_stores_nothing(model, fmnist_dir, tmp_path, capsys):
    few = tmp_path / "few"
    few.mkdir()
    for f in sorted((fmnist_dir / "train" / "bag").iterdir())[:10]:
        shutil.copy(f, few / f.name)
    rc, _, err = run(capsys, "calibrate", model, few, "--class", "bag", "--alpha", "0.01")
    assert rc == 2 and "need at least 99" in err and len(err.strip().splitlines()) == 1
    assert "calibration" not in load_manifest(model)
    rc, out, err = run(capsys, "calibrate", model, few, "--class", "bag")  # default alpha: what 10 images allow
    assert rc == 0, err and "alpha 0.1 (default for this folder)" in out


# ---- the estimator ---------------------------------------------------------------------------------
def test_detector_follows_scikit_learn_conventions(model, trousers):
    det = Detector(model, score="mse-max+feat", alpha=0.05, bank_size=2000)
    assert vars(det) == det.get_params()  # __init__ stores its parameters and nothing else
    assert det.get_params()["bank_size"] == 2000 and det.set_params(alpha=0.1) is det and det.alpha == 0.1
    with pytest.raises(ValueError, match="invalid parameter"):
        det.set_params(nope=1)
    assert not hasattr(det, "decision_scores_") and not hasattr(det, "calibrations_")
    base = pytest.importorskip("sklearn.base")
    twin = base.clone(det)
    assert twin.get_params() == det.get_params() and twin is not det
    det.fit(trousers[:60], "trouser")
    cc = det.class_calibration("trouser")
    assert cc.n_fit == 18 and cc.n == 42 and cc.bank is not None  # fit_fraction 0.3 fits bank and normalisers
    assert np.isnan(det.decision_scores_).sum() == 18 and set(cc.norm) == {"mse-max", "feat"}
    scores, maps = det.score_maps(trousers[60:], "trouser")
    assert maps[0].shape == (28, 28)
    det.save()
    assert (model / "calibration.npz").is_file()
    again = Detector(model)
    np.testing.assert_allclose(again.decision_function(trousers[60:], "trouser"), scores)
    assert again.thresholds_ == det.thresholds_
    (model / "calibration.npz").write_bytes(b"x")  # a tampered bank is refused, not silently used
    with pytest.raises(CalibrationError, match="sha256"):
        Detector(model).thresholds_


# ---- screen: maps for every image, crashes exit 2 ----------------------------------------------------
def test_screen_writes_maps_for_every_image(model, fmnist_dir, tmp_path, capsys):
    src = fmnist_dir / "train" / "trouser"
    assert run(capsys, "calibrate", model, src, "--class", "trouser", "--score", "mse-max")[0] == 0
    few = tmp_path / "few"
    few.mkdir()
    for f in sorted(src.iterdir())[:4]:
        shutil.copy(f, few / f.name)
    rc, _, err = run(capsys, "screen", model, few, "--out", tmp_path / "s", "--maps", tmp_path / "maps")
    assert rc in (0, 1), err
    for f in few.iterdir():
        raw = np.load(tmp_path / "maps" / (f.stem + ".npy"))
        assert raw.shape == (28, 28) and raw.dtype == np.float32 and raw.min() >= 0
        png = load_image(tmp_path / "maps" / (f.stem + ".png"), 3)[0]
        assert png.shape[1] > 2 * png.shape[0]  # image | overlay | colour scale


def test_screen_crash_exits_2_naming_the_file(model, fmnist_dir, tmp_path, capsys, monkeypatch):
    src = fmnist_dir / "train" / "trouser"
    assert run(capsys, "calibrate", model, src, "--class", "trouser", "--score", "mse")[0] == 0
    few = tmp_path / "few"
    few.mkdir()
    for f in sorted(src.iterdir())[:3]:
        shutil.copy(f, few / f.name)
    real = Detector.score_maps
    bad = sorted(few.iterdir())[1]
    bad_pixels = load_image(bad, 1)[0]

    def flaky(self, X, classes=None, maps=True):
        if any(np.array_equal(np.asarray(x), bad_pixels) for x in X):
            raise RuntimeError("onnxruntime exploded")
        return real(self, X, classes, maps)

    monkeypatch.setattr(Detector, "score_maps", flaky)
    rc, _, err = run(capsys, "screen", model, few, "--out", tmp_path / "s")
    assert rc == 2 and f"{bad}: scoring failed (RuntimeError: onnxruntime exploded)" in err
    recs = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and sum(r["error"] is not None for r in recs) == 1  # the other two are screened

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("aekit.detector.jobs.screen_folder", boom)
    rc, _, err = run(capsys, "screen", model, few, "--out", tmp_path / "s")
    assert rc == 2 and "unexpected RuntimeError: disk on fire" in err and str(few) in err
    assert len(err.strip().splitlines()) == 1


# ---- the defect benchmark and serve's maps --------------------------------------------------------------
def test_bench_detect_cli(model, fmnist_dir, tmp_path, capsys):
    rc, out, err = run(capsys, "bench-detect", model, fmnist_dir / "test" / "trouser", "--cal",
                       fmnist_dir / "train" / "trouser", "--score", "mse", "mse-max", "--limit", "20",
                       "--out", tmp_path / "b.v1")
    assert rc == 0, err
    res = json.loads((tmp_path / "b.v1.json").read_text())  # a dot in OUT is kept
    assert "--limit 20" in res["command"] and (tmp_path / "b.v1.md").is_file()
    assert [r["score"] for r in res["results"]] == ["mse", "mse-max"] and "| mse-max |" in out
    for r in res["results"]:
        assert r["n_normal"] == r["n_defective"] == 20 and r["alpha"] == 0.05
        for k in ("image_auroc", "pixel_auroc", "aupro", "fpr", "recall"):
            assert 0 <= r[k] <= 1
        assert set(r["recall_by_kind"]) == set(KINDS)
    assert "calibration" not in load_manifest(model)  # the benchmark never writes the model


def test_serve_screen_returns_the_map(model, fmnist_dir, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from aekit.serve.app import create_app
    from aekit.serve.config import ServeConfig

    cfg = ServeConfig(model=str(model), calibration=str(fmnist_dir / "test"), calibration_limit=20, alpha=0.1,
                      workdir=str(tmp_path / "work"))
    data = sorted((fmnist_dir / "test" / "bag").iterdir())[0].read_bytes()
    with TestClient(create_app(cfg)) as client:
        r = client.post("/v1/screen?class=bag&maps=1", content=data, headers={"content-type": "image/png"})
        plain = client.post("/v1/screen?class=bag", content=data, headers={"content-type": "image/png"}).json()
    assert r.status_code == 200, r.text
    m = r.json()["map"]
    raw = np.load(io.BytesIO(__import__("base64").b64decode(m["npy"])))
    assert raw.shape == (m["height"], m["width"]) == (28, 28) and m["max"] == pytest.approx(float(raw.max()), rel=1e-6)
    assert "map" not in plain and plain["score"] == r.json()["score"]
