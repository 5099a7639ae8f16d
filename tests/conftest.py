"""Shared fixtures: small real image folders and tiny trained + exported models.

Models are trained for a few seconds on real images (Fashion-MNIST for gray, the
scikit-image/scikit-learn photos for RGB) and cached for the whole test session.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aekit.datasets import FASHION_MNIST_DIRS

HAVE_FMNIST = any(Path(d).is_dir() for d in FASHION_MNIST_DIRS)
needs_fmnist = pytest.mark.skipif(
    not HAVE_FMNIST, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
)


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory) -> Path:
    """Fashion-MNIST as class folders: first 600 train and 300 test images (train/, test/)."""
    if not HAVE_FMNIST:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    from aekit.datasets import fashion_mnist

    out = tmp_path_factory.mktemp("fmnist")
    fashion_mnist(out, limit=600)
    return out


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory) -> Path:
    """The photos bundled with scikit-image and scikit-learn (16 files, gray and RGB)."""
    from aekit.datasets import sample_photos

    out = tmp_path_factory.mktemp("photos")
    sample_photos(out)
    return out


@pytest.fixture(scope="session")
def rgb_photos(photos_dir) -> list[np.ndarray]:
    """RGB photos as uint8 arrays (H, W, 3), at their native sizes."""
    from aekit.images import load_image

    return [load_image(p, 3, strict=True)[0] for p in sorted(photos_dir.iterdir())
            if p.name in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.png", "china.jpg")]


@pytest.fixture(scope="session")
def train_tiny(tmp_path_factory):
    """Factory: train_tiny(channels, ratio, **overrides) -> run folder with best.pt (cached)."""
    cache: dict[tuple, Path] = {}

    def make(channels: int = 1, ratio: int = 4, **over) -> Path:
        key = (channels, ratio, tuple(sorted(over.items())))
        if key in cache:
            return cache[key]
        from aekit.config import ModelConfig
        from aekit.data import DataConfig
        from aekit.train import TrainConfig, train

        out = tmp_path_factory.mktemp(f"run-c{channels}-r{ratio}")
        if channels == 1:
            data = tmp_path_factory.getbasetemp() / "tiny-fmnist"
            if not data.exists():
                if not HAVE_FMNIST:
                    pytest.skip("Fashion-MNIST not installed")
                from aekit.datasets import fashion_mnist

                fashion_mnist(data, limit=256)
            dcfg = DataConfig(resize="none", workers=2)
            folder = str(data / "train")
        else:
            from aekit.datasets import sample_photos

            data = tmp_path_factory.getbasetemp() / "tiny-photos"
            if not data.exists():
                sample_photos(data)
            dcfg = DataConfig(resize="random-crop", size=48, repeat=4, workers=2)
            folder = str(data)
        mcfg = ModelConfig(channels=channels, ratio=ratio, width=over.pop("width", 8), blocks=over.pop("blocks", 0), **over)
        tcfg = TrainConfig(data=folder, out=str(out), epochs=3, batch_size=16, lr=3e-3, seed=0,
                           data_cfg=dcfg, hist_images=256)
        train(tcfg, mcfg)
        cache[key] = out
        return out

    return make


@pytest.fixture(scope="session")
def tiny_model(train_tiny, tmp_path_factory):
    """Factory: tiny_model(channels, ratio) -> exported model folder (cached)."""
    cache: dict[tuple, Path] = {}

    def make(channels: int = 1, ratio: int = 4) -> Path:
        if (channels, ratio) not in cache:
            from aekit.export.onnx import export_model

            run = train_tiny(channels, ratio)
            out = tmp_path_factory.mktemp(f"model-c{channels}-r{ratio}") / "model"
            cache[(channels, ratio)] = export_model(run / "best.pt", out)
        return cache[(channels, ratio)]

    return make
