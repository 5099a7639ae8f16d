"""One-class detection on real Fashion-MNIST: a model of trousers scores the other classes higher.

Trains its own tiny model (width 8, 3 epochs, 300 trouser images: seconds on a CPU) through
aekit.train, exports it, calibrates on 100 held-out trousers and scores 2000 test images.
"""

from __future__ import annotations

import pytest

from conftest import needs_fmnist

pytestmark = [pytest.mark.fmnist, pytest.mark.slow, needs_fmnist]  # AEKIT_REQUIRE_DATA=1: missing data fails
TROUSER = 1  # label index in the original dataset


@pytest.fixture(scope="module")
def fmnist_arrays():
    from pathlib import Path

    from aekit.datasets import FASHION_MNIST_DIRS, find_idx, read_idx

    src = next(Path(d) for d in FASHION_MNIST_DIRS if Path(d).is_dir())
    train_x = read_idx(find_idx(src, "train-images-idx3-ubyte"))[:, :, :, None]  # (60000, 28, 28, 1)
    train_y = read_idx(find_idx(src, "train-labels-idx1-ubyte"))
    test_x = read_idx(find_idx(src, "t10k-images-idx3-ubyte"))[:2000, :, :, None]
    test_y = read_idx(find_idx(src, "t10k-labels-idx1-ubyte"))[:2000]
    trousers = train_x[train_y == TROUSER]
    return trousers[:300], trousers[300:400], test_x, test_y


@pytest.fixture(scope="module")
def trouser_model(fmnist_arrays, tmp_path_factory):
    from aekit.config import ModelConfig
    from aekit.data import DataConfig
    from aekit.images import save_image
    from aekit.train import TrainConfig, train
    from aekit.export.onnx import export_model

    root = tmp_path_factory.mktemp("oneclass")
    for i, im in enumerate(fmnist_arrays[0]):
        save_image(im, root / "trouser" / f"{i:04d}.png")
    tcfg = TrainConfig(data=str(root / "trouser"), out=str(root / "run"), epochs=3, batch_size=32, lr=3e-3, seed=0,
                       device="cpu", hist_images=256, data_cfg=DataConfig(resize="none", workers=2))
    train(tcfg, ModelConfig(channels=1, ratio=9, width=8, blocks=0))
    return export_model(root / "run" / "best.pt", root / "model")


@pytest.mark.parametrize("score, floor", [("mse", 0.93), ("ssim", 0.90)])
def test_other_classes_score_higher(trouser_model, fmnist_arrays, score, floor):
    from sklearn.metrics import roc_auc_score

    from aekit.detector.model import Detector

    _, cal, test_x, test_y = fmnist_arrays
    det = Detector(trouser_model, score=score, alpha=0.05).fit(cal, "trouser")
    scores = det.decision_function(test_x)  # the only calibrated class is the default
    auroc = roc_auc_score(test_y != TROUSER, scores)
    assert auroc >= floor, f"{score} AUROC {auroc:.4f} below {floor}"
    flagged = det.predict(test_x).astype(bool)
    normal = test_y == TROUSER
    assert flagged[normal].mean() <= 0.05 + 0.07  # ~200 test trousers: alpha plus sampling slack
    assert flagged[~normal].mean() > 0.5  # most other garments are caught at alpha = 0.05
