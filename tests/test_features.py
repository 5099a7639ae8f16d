"""export/features.py, bench/probe.py and `aekit features` / `aekit probe` on a tiny real model and real Fashion-MNIST images.

Latent vectors are the decoder's y_hat (checked against the runtime), labels follow the class folders,
bad files are skipped and named, .npz files round-trip, and the probe returns sane accuracies.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from aekit.cli import main
from aekit.images import load_image
from aekit.bench.probe import ProbeConfig, probe, probe_table
from aekit.export.features import FeaturesError, extract_features, load_features, pixel_features, save_features
from aekit.export.runtime import Runtime


@pytest.fixture(scope="module")
def model(tiny_model) -> Path:
    return tiny_model(1, 4)


@pytest.fixture(scope="module")
def test_feats(model, fmnist_dir):
    return extract_features(model, fmnist_dir / "test", threads=1, workers=2)


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_features_are_the_dequantised_latents_with_folder_labels(model, fmnist_dir, test_feats):
    f, rt = test_feats, Runtime(model, device="cpu", threads=1)
    n = len(list((fmnist_dir / "test").rglob("*.png")))
    c, h, w = rt.latent_shape(28, 28)
    assert f.x.shape == (n, c * h * w) and f.x.dtype == np.float32 and f.failed == 0
    assert f.model_id == rt.model_id and len(f.classes) == 10
    assert [Path(p).parent.name for p in f.paths] == [f.classes[k] for k in f.labels]
    img = load_image(f.paths[7], 1)[0][None]
    y_hat = rt.dequantise(rt.quantise(rt.encode(img)))
    np.testing.assert_array_equal(f.x[7], y_hat.reshape(-1))
    assert set(np.unique(np.round((f.x + 1) * 127.5, 3))) <= set(range(256))  # on the 256-level grid


def test_avg_pool_and_max_images(model, fmnist_dir, test_feats):
    f = extract_features(model, fmnist_dir / "test", pool="avg", max_images=50, threads=1, workers=2)
    assert f.x.shape == (50, Runtime(model, device="cpu").latent_channels) and f.pool == "avg"
    full = test_feats.x[[test_feats.paths.index(p) for p in f.paths]]
    np.testing.assert_allclose(f.x, full.reshape(50, f.x.shape[1], -1).mean(axis=2), atol=1e-6)
    assert len(set(f.labels.tolist())) > 5  # a seeded random subset, not the first class


def test_bad_files_are_skipped_and_named(model, fmnist_dir, tmp_path, capsys):
    data = tmp_path / "data"
    for c in ("bag", "trouser"):
        shutil.copytree(fmnist_dir / "test" / c, data / c)
    (data / "bag" / "broken.png").write_bytes(b"\x89PNG not really")
    from PIL import Image

    Image.new("L", (3, 3)).save(data / "trouser" / "tiny.png")
    Image.new("L", (32, 32)).save(data / "trouser" / "other_size.png")
    out = tmp_path / "f.npz"
    rc, stdout, err = run(capsys, "features", model, data, "-o", out, "--threads", "1")
    assert rc == 2 and "3 file(s) skipped" in stdout
    for name in ("broken.png", "tiny.png", "other_size.png"):
        assert name in err
    f = load_features(out)
    assert f.failed == 3 and f.classes == ["bag", "trouser"] and len(f) == len(list(data.rglob("*.png"))) - 3


def test_npz_round_trip_and_bad_files(test_feats, tmp_path):
    p = save_features(tmp_path / "feats.npz", test_feats)
    g = load_features(p)
    np.testing.assert_array_equal(g.x, test_feats.x)
    np.testing.assert_array_equal(g.labels, test_feats.labels)
    assert (g.classes, g.paths, g.model_id, g.pool) == (test_feats.classes, test_feats.paths, test_feats.model_id, "none")
    assert not list(tmp_path.glob(".*.part"))
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(FeaturesError, match="other.npz: not an aekit features file"):
        load_features(other)
    with pytest.raises(FeaturesError, match="missing.npz: no such features file"):
        load_features(tmp_path / "missing.npz")


def test_probe_on_real_features(model, fmnist_dir, test_feats):
    train = extract_features(model, fmnist_dir / "train", threads=1, workers=2)
    px = {k: pixel_features(f.paths, f.labels, f.classes, 1) for k, f in (("train_pixels", train), ("test_pixels", test_feats))}
    res = probe(train, test_feats, cfg=ProbeConfig(labels_per_class=(2, 40), repeats=2, max_iter=200), **px)
    assert {(r.features, r.labels_per_class) for r in res} == {(s, n) for s in ("latent", "pixels") for n in (2, 40)}
    for r in res:
        assert 0 <= r.accuracy <= 1 and len(r.accuracies) == 2 and r.n_test == len(test_feats)
    acc = {(r.features, r.labels_per_class): r.accuracy for r in res}
    assert acc[("latent", 40)] > 0.4 and acc[("pixels", 40)] > 0.4  # chance is 0.1
    assert acc[("latent", 40)] >= acc[("latent", 2)] - 0.05  # more labels do not hurt much
    assert next(r for r in res if r.labels_per_class == 2).n_train == 20
    assert "probe on pixels" in probe_table(res)


def test_cli_probe_on_npz_files_writes_json(model, test_feats, tmp_path, capsys):
    p = save_features(tmp_path / "test.npz", test_feats)
    out = tmp_path / "probe.json"
    rc, stdout, err = run(capsys, "probe", model, "--train", p, "--test", p, "--labels", "3,20",
                          "--repeats", "1", "--max-iter", "100", "--threads", "1", "--json", out)
    assert rc == 0, err
    assert "labels/class" in stdout and "probe on pixels" in stdout
    doc = json.loads(out.read_text())
    assert doc["model_id"] == test_feats.model_id and len(doc["results"]) == 4


def test_cli_errors_name_the_path(model, tmp_path, capsys):
    rc, _, err = run(capsys, "features", model, tmp_path / "nowhere", "-o", tmp_path / "f.npz")
    assert rc == 2 and f"{tmp_path / 'nowhere'}: no such file or folder" in err
    (tmp_path / "empty_model").mkdir()
    rc, _, err = run(capsys, "probe", tmp_path / "empty_model", "--train", tmp_path, "--test", tmp_path)
    assert rc == 2 and f"{tmp_path / 'empty_model'}: not an aekit model folder" in err
    rc, _, err = run(capsys, "probe", model, "--train", tmp_path, "--test", tmp_path, "--labels", "ten")
    assert rc == 2 and "--labels 'ten'" in err
    assert not (tmp_path / "f.npz").exists()


def test_extraction_imports_neither_torch_nor_sklearn(model, fmnist_dir):
    import subprocess
    import sys

    code = (f"import sys; from aekit.export.features import extract_features; "
            f"f = extract_features({str(model)!r}, {str(fmnist_dir / 'test' / 'bag')!r}, threads=1); "
            f"print(len(f), 'torch' in sys.modules, 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    n, torch_loaded, sklearn_loaded = out.stdout.split()
    assert int(n) > 0 and torch_loaded == "False" and sklearn_loaded == "False"
