"""Score functions: SSIM equals scikit-image's, mse on the [0, 1] scale, maps and bad shapes."""

from __future__ import annotations

import numpy as np
import pytest

from aekit.detector.heatmap import panel
from aekit.detector.scores import error_maps, reduce_maps, ssim_index_map


@pytest.fixture
def pair(rgb_photos):
    x = rgb_photos[0][:96, :80]  # (96, 80, 3) real photo
    noise = np.random.default_rng(0).normal(0, 12, x.shape)
    return x[None], np.clip(x + noise, 0, 255).astype(np.uint8)[None]


def test_ssim_map_equals_scikit_image(pair):
    from skimage.metrics import structural_similarity

    x, y = pair
    ours = ssim_index_map(x, y)[0]  # (H, W, C)
    for c in range(3):
        _, full = structural_similarity(x[0, :, :, c], y[0, :, :, c], gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, data_range=255, full=True)
        np.testing.assert_allclose(ours[:, :, c], full, atol=1e-10)


def test_ssim_map_is_the_metrics_one_with_or_without_scipy(pair, monkeypatch):
    """One SSIM implementation (aekit.metrics): the numpy-only fallback gives the same map."""
    import sys

    from aekit import metrics

    x, y = pair
    with_scipy = metrics.ssim_map(x, y)
    np.testing.assert_array_equal(ssim_index_map(x, y), with_scipy)
    monkeypatch.setitem(sys.modules, "scipy.ndimage", None)  # import fails: the shifted-sum path
    np.testing.assert_allclose(metrics.ssim_map(x, y), with_scipy, atol=1e-12)
    # away from the edges it is the map whose mean MS-SSIM's single-scale term is ('valid' filtering)
    r = metrics.WIN // 2
    valid = metrics._ssim(x.astype(float).transpose(0, 3, 1, 2), y.astype(float).transpose(0, 3, 1, 2))[0]
    np.testing.assert_allclose(with_scipy[:, r:-r, r:-r].mean(axis=(1, 2)), valid, rtol=1e-9)


def test_maps_and_scores(pair):
    x, y = pair
    m = error_maps(x, y, "mse")
    assert m.shape == (1, 96, 80)
    assert reduce_maps(m)[0] == pytest.approx(np.mean(((x.astype(float) - y) / 255) ** 2))
    assert reduce_maps(error_maps(x, x, "mse"))[0] == 0 and abs(reduce_maps(error_maps(x, x, "ssim"))[0]) < 1e-12
    worse = np.clip(x.astype(int) + np.random.default_rng(1).normal(0, 40, x.shape), 0, 255).astype(np.uint8)
    for score in ("mse", "ssim"):  # more noise, higher score
        assert reduce_maps(error_maps(x, worse, score))[0] > reduce_maps(error_maps(x, y, score))[0]
    strip = panel(x[0], y[0], error_maps(x, y, "ssim")[0], 0.5)
    assert strip.shape == (3 * 96, 3 * 3 * 80, 3)  # enlarged x3 to reach 224 pixels


def test_bad_score_and_shapes(pair):
    x, y = pair
    with pytest.raises(ValueError, match="unknown score 'perceptual'"):
        error_maps(x, y, "perceptual")
    with pytest.raises(ValueError, match="shapes differ"):
        error_maps(x, y[:, :90], "mse")
