"""The whole-latent nearest-neighbour score `knn` (one-class / wrong-product screening), banks fitted on
other normal images than the calibration ones (--fit-dir, train-per-class), the BLAS nearest-neighbour
search, and the fast map files of `screen --maps` (same pixels and arrays, written in I/O threads)."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest

from aekit.cli import main
from conftest import needs_fmnist
from aekit.images import load_image
from aekit.detector.features import ImageBank, _nn_distances
from aekit.detector.heatmap import _bar_rows, colour_bar, map_files, map_panel, npy_bytes
from aekit.detector.model import Detector
from aekit.detector.scores import components


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# ---- numpy parts -------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3])
def test_nearest_neighbours_match_brute_force(k):
    rng = np.random.default_rng(0)
    q, bank = rng.normal(size=(300, 12)).astype(np.float32), rng.normal(size=(500, 12)).astype(np.float32)
    full = np.sqrt(((q[:, None, :].astype(np.float64) - bank[None]) ** 2).sum(-1))  # (300, 500)
    d, i = _nn_distances(q, bank, k=k)
    np.testing.assert_array_equal(i, np.argsort(full, axis=1)[:, :k])
    np.testing.assert_allclose(d, np.sort(full, axis=1)[:, :k], rtol=1e-5)
    ids = rng.integers(0, 50, 500)  # leave-one-image-out: rows of the same image never match
    q_ids = ids[:300]
    d, i = _nn_distances(bank[:300], bank, q_ids, ids, k=k)
    assert np.all(ids[i] != q_ids[:, None]) and d.min() > 0


def test_image_bank_is_bounded_and_scores_other_images_higher():
    rng = np.random.default_rng(1)
    y = np.clip(rng.normal(0, 0.3, size=(60, 4, 5, 5)), -1, 1).astype(np.float32)
    bank = ImageBank.fit(y, bank_size=40, seed=0, k=3)
    assert bank.bank.shape == (40, 100) and bank.k == 3
    loo, loo_maps = bank.scores(y[:10], image_ids=np.arange(10))
    assert loo.min() > 0 and loo_maps.shape == (10, 5, 5)
    other = y[:10].copy()
    other[:, 2] = 1.0  # a whole channel off: another kind of image
    s, maps = bank.scores(other)
    assert np.all(s > loo)
    assert np.all(maps[:, 2:4, 2:4].sum(axis=(1, 2)) > 0)
    one = ImageBank.fit(y, bank_size=40, seed=0, k=1)  # k = 1: the map sums to the squared distance
    s1, m1 = one.scores(other)
    np.testing.assert_allclose(m1.sum(axis=(1, 2)), s1**2, rtol=1e-4)
    again = ImageBank.from_arrays(bank.to_arrays("c/"), "c/")
    np.testing.assert_array_equal(again.scores(other)[0], s)
    big = np.repeat(np.repeat(other, 2, axis=2), 2, axis=3)  # other image sizes: resampled to the fitted grid
    assert bank.scores(big)[1].shape == (10, 5, 5)


def test_knn_score_spec():
    assert components("knn") == [("knn", "")] and components("mse+knn") == [("mse", "mean"), ("knn", "")]
    with pytest.raises(ValueError, match="score"):
        components("knn-max")


@pytest.mark.parametrize("shape", [(28, 28, 1), (40, 31, 3), (300, 257, 1)])
def test_map_files_are_the_panel_and_the_raw_map(shape):
    rng = np.random.default_rng(2)
    im = rng.integers(0, 255, shape, dtype=np.uint8)
    m = rng.random(shape[:2])
    files = map_files(im, m, 0.5)
    np.testing.assert_array_equal(np.load(io.BytesIO(files[".npy"])), m.astype(np.float32))
    buf = io.BytesIO()
    np.save(buf, m.astype(np.float32))
    assert npy_bytes(m) == buf.getvalue()  # byte for byte what np.save writes
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(files[".png"]))), map_panel(im, m, 0.5))
    colour_bar.cache_clear()
    _bar_rows.cache_clear()
    for _ in range(3):
        map_files(im, m, 0.5)
    assert colour_bar.cache_info().misses == 1  # drawn once per class scale, not per image


def test_map_files_land_whole_with_plain_permissions(tmp_path, monkeypatch):
    """write_map_files(durable=False): the class folder is made when missing, both files land with the mode a
    plain open() gives (FILE_MODE) and no temp file stays; a killed run's temp under the next name (PID reused)
    is stepped over; a write that fails leaves neither a file nor a temp."""
    import os
    import stat

    from aekit.detector.heatmap import write_map_files
    from aekit.images import FILE_MODE

    files = {".png": b"png-bytes", ".npy": b"npy-bytes"}
    paths = write_map_files(tmp_path / "maps" / "sneaker" / "img1", files, durable=False)
    assert [p.name for p in paths] == ["img1.png", "img1.npy"]
    assert [p.read_bytes() for p in paths] == [b"png-bytes", b"npy-bytes"]
    assert all(stat.S_IMODE(p.stat().st_mode) == FILE_MODE for p in paths)
    write_map_files(tmp_path / "maps" / "sneaker" / "img1", {".png": b"again", ".npy": b"again"}, durable=False)
    assert sorted(os.listdir(tmp_path / "maps" / "sneaker")) == ["img1.npy", "img1.png"]  # replaced, no .part
    import aekit.detector.heatmap as heatmap

    n = next(heatmap._PART_NUMBERS) + 1  # a killed run's temp (same PID) in the way of the next name
    (tmp_path / "maps" / "sneaker" / f".img3.png.{os.getpid()}-{n}.part").write_bytes(b"stale")
    write_map_files(tmp_path / "maps" / "sneaker" / "img3", files, durable=False)
    assert (tmp_path / "maps" / "sneaker" / "img3.png").read_bytes() == b"png-bytes"
    (tmp_path / "maps" / "sneaker" / f".img3.png.{os.getpid()}-{n}.part").unlink()
    for name in ("img3.png", "img3.npy"):
        (tmp_path / "maps" / "sneaker" / name).unlink()
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError, match="No space left"):
        write_map_files(tmp_path / "maps" / "sneaker" / "img2", files, durable=False)
    monkeypatch.setattr(os, "replace", real)
    assert sorted(os.listdir(tmp_path / "maps" / "sneaker")) == ["img1.npy", "img1.png"]


# ---- on the tiny Fashion-MNIST model ---------------------------------------------------------------------
@pytest.fixture
def model(tiny_model, tmp_path):
    dest = tmp_path / "model"
    shutil.copytree(tiny_model(1, 4, "fmnist"), dest)
    return dest


@needs_fmnist
@pytest.mark.fmnist
def test_knn_calibrated_with_fit_dir_uses_every_calibration_image(model, fmnist_dir, tmp_path, capsys):
    fit, cal = fmnist_dir / "train" / "trouser", fmnist_dir / "test" / "trouser"
    n_fit, n_cal = len(list(fit.iterdir())), len(list(cal.iterdir()))
    rc, out, err = run(capsys, "calibrate", model, cal, "--class", "trouser", "--score", "knn", "--fit-dir", fit,
                       "--alpha", "0.1")
    assert rc == 0, err
    det = Detector(model)
    cc = det.class_calibration("trouser")
    assert cc.n == n_cal and cc.n_fit == n_fit and cc.image_bank is not None and cc.image_bank.k == 3
    rc, _, err = run(capsys, "screen", model, cal, "--class", "trouser", "--out", tmp_path / "s")
    assert rc in (0, 1), err
    recs = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(sorted(r["score"] for r in recs), cc.scores, rtol=1e-12)  # the same function
    bags = np.stack([load_image(f, 1)[0] for f in sorted((fmnist_dir / "test" / "bag").iterdir())[:30]])
    trousers = np.stack([load_image(f, 1)[0] for f in sorted(cal.iterdir())[:30]])
    assert np.median(det.decision_function(bags, "trouser")) > np.median(det.decision_function(trousers, "trouser"))
    rc, _, err = run(capsys, "calibrate", model, cal, "--class", "trouser", "--score", "knn", "--fit-dir",
                     tmp_path / "nowhere")
    assert rc == 2 and "nowhere" in err


@needs_fmnist
@pytest.mark.fmnist
def test_failed_map_write_fails_the_screen(model, fmnist_dir, tmp_path, capsys, monkeypatch):
    src = fmnist_dir / "test" / "trouser"
    assert run(capsys, "calibrate", model, src, "--class", "trouser", "--score", "mse-top1")[0] == 0

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("aekit.detector.jobs.write_map", full)
    rc, _, err = run(capsys, "screen", model, src, "--out", tmp_path / "s", "--maps", tmp_path / "maps")
    assert rc == 2 and "No space left on device" in err
    assert not (tmp_path / "s.jsonl").exists()  # nothing committed: a rerun screens again
