"""aekit.metrics: the one PSNR (per image, uint8) and the numpy MS-SSIM port, checked against
pytorch-msssim; training's PSNR (psnr_torch) equals the codec's on the same images."""

from __future__ import annotations

import numpy as np
import pytest

from aekit.images import from_model_output
from aekit.metrics import PSNR_CAP, mean_psnr, msssim_batch, msssim_scales, psnr, psnr_batch, psnr_torch


def noisy_pairs(shape, sigma=12.0, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape).astype(np.uint8)
    # smooth originals (as photos are), then noise: MS-SSIM well inside (0, 1)
    a = np.clip(np.cumsum(a.astype(np.float64) - 127.5, axis=1) / 8 + 128, 0, 255).astype(np.uint8)
    b = np.clip(a + rng.normal(0, sigma, shape), 0, 255).astype(np.uint8)
    return a, b


def test_psnr_is_per_image_and_capped():
    a, b = noisy_pairs((3, 16, 16, 1))
    b[0] = a[0]
    per = psnr_batch(a, b)
    assert per[0] == PSNR_CAP and psnr(a[0], b[0]) == PSNR_CAP
    mse = ((a[1].astype(float) - b[1]) ** 2).mean()
    assert per[1] == pytest.approx(10 * np.log10(255**2 / mse))
    assert mean_psnr(zip(a, b)) == pytest.approx(per.mean())  # the mean of per-image PSNRs, not of MSE


def reference_msssim(torch, a, b, k):
    """pytorch-msssim's own pieces (gaussian window, _ssim, avg_pool2d with padding s % 2) over k
    scales with the leading weights renormalised; k = 5 is exactly pytorch_msssim.ms_ssim."""
    import torch.nn.functional as F
    from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

    x, y = (torch.from_numpy(v).permute(0, 3, 1, 2).double() for v in (a, b))
    win = _fspecial_gauss_1d(11, 1.5).repeat([x.shape[1], 1, 1, 1]).double()
    w = torch.tensor([0.0448, 0.2856, 0.3001, 0.2363, 0.1333][:k], dtype=torch.float64)
    w = w / w.sum()
    terms = []
    for i in range(k):
        ssim, cs = _ssim(x, y, data_range=255, win=win, size_average=False, K=(0.01, 0.03))
        terms.append(torch.relu(ssim if i == k - 1 else cs))
        if i < k - 1:
            pad = [s % 2 for s in x.shape[2:]]
            x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    return torch.prod(torch.stack(terms, 0) ** w.view(-1, 1, 1), 0).mean(1).numpy()


@pytest.mark.parametrize("shape", [(2, 192, 200, 3), (2, 28, 28, 1), (1, 64, 48, 1), (1, 12, 12, 1)])
def test_msssim_port_matches_pytorch_msssim(shape):
    torch = pytest.importorskip("torch")
    pm = pytest.importorskip("pytorch_msssim")
    a, b = noisy_pairs(shape)
    k = msssim_scales(*shape[1:3])
    ours = msssim_batch(a, b)
    np.testing.assert_allclose(ours, reference_msssim(torch, a, b, k), atol=1e-6)
    if k == 5:  # and the library's public function itself
        ref = pm.ms_ssim(*(torch.from_numpy(v).permute(0, 3, 1, 2).double() for v in (a, b)), data_range=255,
                         size_average=False)
        np.testing.assert_allclose(ours, ref.numpy(), atol=1e-6)
    assert np.all((0 < ours) & (ours < 1))


def test_training_psnr_equals_the_codec_psnr():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x8 = rng.integers(0, 256, (4, 1, 20, 20)).astype(np.uint8)
    x = torch.from_numpy(x8).float() / 127.5 - 1  # as training feeds images
    x_hat = (x + torch.from_numpy(rng.normal(0, 0.05, x.shape)).float()).clamp(-1.2, 1.2)  # decoder output
    codec = psnr_batch(x8.transpose(0, 2, 3, 1), from_model_output(x_hat.numpy()))  # what the codec would report
    np.testing.assert_allclose(psnr_torch(x_hat, x).numpy(), codec, rtol=1e-9)


def test_validation_psnr_is_what_the_codec_delivers(gray_dir, tmp_path):
    """One epoch, validation on a separate folder; the exported codec on those files gives the same mean."""
    pytest.importorskip("torch")
    from aekit.codec.core import Codec, CodecConfig, Decoder
    from aekit.config import ModelConfig
    from aekit.data import DataConfig
    from aekit.export.onnx import export_model
    from aekit.images import load_image
    from aekit.train import TrainConfig, train

    val = sorted((gray_dir / "test").rglob("*.png"))[::8]
    vdir = tmp_path / "val" / "all"
    vdir.mkdir(parents=True)
    for p in val:
        (vdir / f"{p.parent.name}-{p.name}").write_bytes(p.read_bytes())
    tcfg = TrainConfig(data=str(gray_dir / "train"), val_data=str(tmp_path / "val"), out=str(tmp_path / "run"),
                       epochs=1, batch_size=32, lr=3e-3, seed=0, threads=1, hist_images=64,
                       data_cfg=DataConfig(resize="none", workers=1))
    summary = train(tcfg, ModelConfig(channels=1, ratio=4, width=8))
    model = export_model(tmp_path / "run" / "best.pt", tmp_path / "model")
    codec, decoder = Codec(model, CodecConfig(post_filter=False)), Decoder([model])  # the networks' own output
    images = [load_image(p, 1)[0] for p in sorted(vdir.iterdir())]
    delivered = mean_psnr((im, decoder.decompress(codec.compress(im))[0]) for im in images)
    assert summary["best_val_psnr"] == pytest.approx(delivered, abs=0.05)  # ONNX vs torch float noise only
