"""bench/classifier.py: the small CNN trained on real Fashion-MNIST, its cache, reconstructions and metrics."""

from __future__ import annotations

import numpy as np
import pytest

from aekit.bench.classifier import (ClassifierConfig, ClassifierError, classifier_accuracy, load_classifier,
                              reconstruct_folder, reconstruction_metrics, train_classifier)
from aekit.export.features import LoadConfig, load_images
from aekit.export.runtime import Runtime


@pytest.fixture(scope="module")
def clf_path(fmnist_dir, tmp_path_factory):
    cfg = ClassifierConfig(epochs=3, width=8, batch_size=32, max_images=300)
    return train_classifier(fmnist_dir / "train", tmp_path_factory.mktemp("clf"), threads=1, cfg=cfg)


def test_classifier_trains_beats_chance_and_is_cached(clf_path, fmnist_dir):
    clf = load_classifier(clf_path)
    assert clf.channels == 1 and len(clf.classes) == 10 and clf.info["n_train"] == 300
    images, labels, _, _, _ = load_images(fmnist_dir / "train", 1, 1, LoadConfig(max_images=300))
    assert classifier_accuracy(clf, images, labels) > 0.4  # chance is 0.1
    names = [clf.classes[k] for k in labels]
    assert classifier_accuracy(clf, images, names) == classifier_accuracy(clf, images, labels)
    mtime = clf_path.stat().st_mtime_ns
    again = train_classifier(fmnist_dir / "train", clf_path.parent,
                             cfg=ClassifierConfig(epochs=3, width=8, batch_size=32, max_images=300))
    assert again == clf_path and clf_path.stat().st_mtime_ns == mtime  # trained once
    other = ClassifierConfig(epochs=1, width=8, batch_size=32, max_images=300)
    from aekit.bench.classifier import cache_key

    other.channels = 1
    assert cache_key(fmnist_dir / "train", other) != clf_path.stem  # settings are part of the key


def test_accuracy_on_reconstructions(clf_path, tiny_model, fmnist_dir):
    model = tiny_model(1, 4)
    orig, recon, labels = reconstruct_folder(model, fmnist_dir / "test", max_images=64)
    assert orig.shape == recon.shape == (64, 28, 28, 1) and recon.dtype == np.uint8 and labels.shape == (64,)
    np.testing.assert_array_equal(recon[:8], Runtime(model, device="cpu").reconstruct(orig[:8]))
    clf = load_classifier(clf_path)
    acc = classifier_accuracy(clf, recon, labels)
    assert 0.0 <= acc <= 1.0
    m = reconstruction_metrics(orig, recon)
    assert 0 < m["mse"] < 0.1 and 0 < m["mae"] < 0.3 and 10 < m["psnr_db"] < 60
    assert m["structure_metric"] == "ms-ssim (2 scales fit)" and 0 < m["structure"] < 1  # 28 px: 2 scales
    with pytest.raises(ValueError, match="got shape"):
        classifier_accuracy(clf, np.zeros((2, 28, 28, 3), np.uint8), [0, 1])


def test_metrics_on_identical_images():
    x = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    m = reconstruction_metrics(x, x)
    assert m["mse"] == 0 and m["mae"] == 0 and m["psnr_db"] == 100.0 and m["structure"] == pytest.approx(1)
    y = x.copy()
    y[:, 0, 0, 0] ^= 1
    assert np.isfinite(reconstruction_metrics(x, y)["psnr_db"])
    with pytest.raises(ValueError, match="differ in shape"):
        reconstruction_metrics(x, x[:2])


def test_load_classifier_names_a_bad_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ClassifierError, match="bad.pt: unreadable classifier"):
        load_classifier(bad)
    with pytest.raises(ClassifierError, match="missing.pt: no such classifier file"):
        load_classifier(tmp_path / "missing.pt")
