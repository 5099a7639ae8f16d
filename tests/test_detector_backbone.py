"""Pretrained-backbone scores (PaDiM, PatchCore) from a local weights file, screened without torch.

ImageNet weights cannot be downloaded here, so these tests save a *randomly initialised*
torchvision ResNet-18 to a file and load it as a user's weights file would be: they test the
loading, ONNX export, fitting, storage and torch-free screening, not detection quality.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from aekit.cli import main
from conftest import needs_fmnist
from aekit.detector.backbone import (BackboneConfig, BackboneError, BackboneRuntime, coreset, export_backbone,
                                     padim_fit, padim_maps)
from aekit.detector.model import Detector

pytestmark = [pytest.mark.fmnist, needs_fmnist]
SIDE = 64  # small input side keeps the test quick (features at 8 x 8)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import torchvision

    torch.manual_seed(0)
    f = tmp_path_factory.mktemp("bb") / "resnet18-random.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), f)  # stands in for ImageNet weights
    return f


@pytest.fixture
def model(tiny_model, tmp_path):
    dest = tmp_path / "model"
    shutil.copytree(tiny_model(1, 4, "fmnist"), dest)
    return dest


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_padim_and_patchcore_statistics():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(40, 16, 4, 4)).astype(np.float32)
    a = padim_fit(f, dims=8)
    assert a["mean"].shape == (16, 8) and a["icov"].shape == (16, 8, 8) and len(a["idx"]) == 8
    odd = f[:2].copy()
    odd[:, :, 1, 2] += 10.0  # one position far from normal
    m = padim_maps(odd, a)
    assert m.shape == (2, 4, 4) and np.all(m.reshape(2, -1).argmax(1) == 1 * 4 + 2)
    x = rng.normal(size=(500, 6)).astype(np.float32)
    idx = coreset(x, 20)
    assert len(set(idx.tolist())) == 20  # k-center: distinct, spread-out points
    assert np.linalg.norm(x[idx], axis=1).mean() > np.linalg.norm(x, axis=1).mean()


def test_backbone_from_a_local_weights_file_calibrates_and_screens_without_torch(model, weights, fmnist_dir,
                                                                                   tmp_path, capsys):
    normal = fmnist_dir / "train" / "trouser"
    rc, out, err = run(capsys, "calibrate", model, normal, "--class", "trouser", "--score", "padim+mse-top1",
                       "--backbone-weights", weights, "--backbone-side", SIDE, "--alpha", "0.1")
    assert rc == 0, err
    assert (model / "backbone.onnx").is_file() and "exported" in out
    meta = json.loads((model / "backbone.json").read_text())
    assert meta["arch"] == "resnet18" and meta["side"] == SIDE and len(meta["weights_sha256"]) == 64
    feats = BackboneRuntime(model).features(np.zeros((2, 28, 28, 1), np.uint8))
    assert feats.shape == (2, 384, SIDE // 8, SIDE // 8)  # layer2 (128) ++ layer3 (256)
    det = Detector(model)
    assert det.class_calibration("trouser").backbone["padim_icov"].shape[0] == (SIDE // 8) ** 2
    code = (
        "import sys\n"
        "from aekit.detector.jobs import screen_folder\n"
        f"rep = screen_folder({str(model)!r}, {str(fmnist_dir / 'test' / 'trouser')!r}, {str(tmp_path / 's')!r}, 'trouser')\n"
        "assert rep.per_class['trouser'].n > 0 and rep.score == 'padim+mse-top1'\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
    # patchcore on the same exported trunk; maps have the image's size
    assert run(capsys, "calibrate", model, normal, "--class", "trouser", "--score", "patchcore", "--alpha", "0.1")[0] == 0
    x = np.stack([np.zeros((28, 28, 1), np.uint8)] * 2)
    s, maps = Detector(model).score_maps(x, "trouser")
    assert s.shape == (2,) and maps[0].shape == (28, 28)
    # a replaced trunk is refused until recalibration
    (model / "backbone.onnx").write_bytes((model / "backbone.onnx").read_bytes() + b"\0")
    with pytest.raises(BackboneError, match="sha256"):
        Detector(model).decision_function(x, "trouser")


def test_wrong_weights_file_is_one_line(weights, tmp_path):
    with pytest.raises(BackboneError, match="not a resnet50 state_dict"):
        export_backbone(weights, tmp_path, BackboneConfig("resnet50", SIDE))
    with pytest.raises(BackboneError, match="backbone 'vgg' unknown"):
        export_backbone(weights, tmp_path, BackboneConfig("vgg", SIDE))
    assert not list(tmp_path.iterdir())
    with pytest.raises(BackboneError, match="no backbone.onnx"):
        BackboneRuntime(tmp_path)
