"""Conformal threshold rule, p-values and the calibration record (pure numpy, no model)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aekit.detector.calibration import (
    CALIBRATION_VERSION, Calibration, CalibrationError, ClassCalibration, conformal_rank, conformal_threshold,
    min_calibration_size, p_values,
)


@pytest.mark.parametrize("n, alpha, k", [
    (99, 0.01, 99), (100, 0.01, 100), (98, 0.01, math.inf), (19, 0.05, 19), (18, 0.05, math.inf),
    (1000, 0.05, 951), (999, 0.1, 900), (9, 0.1, 9), (600, 0.01, 595), (600, 0.05, 571),
])
def test_rank_is_the_exact_order_statistic(n, alpha, k):
    scores = np.arange(1, n + 1, dtype=np.float64)  # the k-th smallest score is k
    assert conformal_threshold(scores, alpha) == k
    assert conformal_rank(n, alpha) == math.ceil((n + 1) * (1 - alpha) - 1e-12)


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=300),
       st.sampled_from([0.5, 0.2, 0.1, 0.05, 0.01, 0.001]))
@settings(max_examples=200, deadline=None)
def test_threshold_on_random_lists(values, alpha):
    s = np.sort(np.array(values))
    n, t = len(s), conformal_threshold(s, alpha)
    k = math.ceil((n + 1) * (1 - alpha) - 1e-12)
    if k > n:
        assert math.isinf(t) and n < 1 / alpha - 1 + 1e-9
    else:
        assert t == s[k - 1]
        assert np.mean(s > t) <= alpha + 1e-12  # at most alpha of the calibration set lies above


def test_min_calibration_size():
    assert [min_calibration_size(a) for a in (0.1, 0.05, 0.01, 0.001)] == [9, 19, 99, 999]
    for a in (0.1, 0.05, 0.01):
        n = min_calibration_size(a)
        assert math.isfinite(conformal_threshold(np.zeros(n), a))
        assert math.isinf(conformal_threshold(np.zeros(n - 1), a))


def test_p_values_brute_force():
    rng = np.random.default_rng(0)
    cal = np.sort(rng.integers(0, 20, 50).astype(float))  # with ties
    new = np.array([-1.0, 0.0, 5.0, 7.5, 19.0, 25.0])
    expect = [(1 + np.sum(cal >= s)) / (len(cal) + 1) for s in new]
    np.testing.assert_allclose(p_values(cal, new), expect)
    assert p_values(cal, np.array([-1.0]))[0] == 1.0
    assert p_values(cal, np.array([99.0]))[0] == 1 / 51


@given(st.integers(1, 400), st.sampled_from([0.2, 0.1, 0.05, 0.01]), st.integers(0, 2**31))
@settings(max_examples=100, deadline=None)
def test_flagged_iff_p_value_at_most_alpha(n, alpha, seed):
    rng = np.random.default_rng(seed)
    cal, new = np.sort(rng.normal(size=n)), rng.normal(size=200) * 1.5  # continuous: no ties
    flagged = new > conformal_threshold(cal, alpha)
    np.testing.assert_array_equal(flagged, p_values(cal, new) <= alpha + 1e-12)


def test_false_positive_rate_is_at_most_alpha_on_exchangeable_data():
    """Marginal guarantee: averaged over calibration draws, FPR lies in [alpha - 1/(n+1), alpha]."""
    rng = np.random.default_rng(1)
    for n, alpha in ((99, 0.01), (200, 0.05), (999, 0.01)):
        fprs = []
        for _ in range(400):
            cal = np.sort(rng.gamma(2.0, size=n))
            fprs.append(np.mean(rng.gamma(2.0, size=2000) > conformal_threshold(cal, alpha)))
        assert alpha - 1 / (n + 1) - 0.003 <= np.mean(fprs) <= alpha + 0.003, (n, alpha, np.mean(fprs))


def test_calibration_record_round_trip_through_json():
    cal = Calibration("ssim", 0.05, "abcd", {"latent": "quantised"}, {
        "a": ClassCalibration(np.sort(np.random.default_rng(0).random(40)), 0.2, [28, 28], "/data/a"),
        "tiny": ClassCalibration(np.array([0.1, 0.3]), 0.1, None, ""),
    })
    d = json.loads(json.dumps(cal.to_dict()))  # what the manifest stores
    assert d["version"] == CALIBRATION_VERSION and d["classes"]["tiny"]["threshold"] is None  # infinite -> null
    assert d["classes"]["a"]["threshold"] == conformal_threshold(cal.classes["a"].scores, 0.05)
    back = Calibration.from_dict(d)
    assert back.score == "ssim" and back.alpha == 0.05 and back.preprocess == {"latent": "quantised"}
    np.testing.assert_array_equal(back.classes["a"].scores, cal.classes["a"].scores)  # exact floats
    assert back.thresholds(0.2)["a"] == cal.thresholds(0.2)["a"]
    assert math.isinf(back.thresholds()["tiny"])


def test_unknown_calibration_version_is_refused():
    with pytest.raises(CalibrationError, match="version 7"):
        Calibration.from_dict({"version": 7, "classes": {}}, "m/manifest.json")
    with pytest.raises(CalibrationError, match="malformed"):
        Calibration.from_dict({"version": 1, "score": "mse", "classes": {"a": {}}}, "m/manifest.json")


@pytest.mark.parametrize("alpha", [0, 1, -0.1, 1.5])
def test_alpha_out_of_range(alpha):
    with pytest.raises(ValueError, match="alpha"):
        conformal_threshold(np.zeros(10), alpha)


def test_realised_fpr_range_is_what_exchangeable_normals_give():
    """Simulated split-conformal calibration on exchangeable scores: the realised FPR falls inside the 90 %
    range in about 90 % of trials (at least, the law is discrete), its mean is (n+1-k)/(n+1), and the
    p-value is below 0.05 in at most about 5 % of trials; a drifted test set is caught."""
    from aekit.detector.calibration import conformal_rank, realised_fpr_pvalue, realised_fpr_range

    n, m, alpha, trials = 99, 200, 0.1, 4000
    rng = np.random.default_rng(0)
    cal = np.sort(rng.random((trials, n)), axis=1)
    k = conformal_rank(n, alpha)
    thr = cal[:, k - 1]
    flagged = (rng.random((trials, m)) > thr[:, None]).sum(axis=1)
    lo, hi = realised_fpr_range(n, alpha, m, level=0.9)
    inside = np.mean((flagged / m >= lo) & (flagged / m <= hi))
    assert 0.9 <= inside <= 0.95, inside
    assert abs(flagged.mean() / m - (n + 1 - k) / (n + 1)) < 0.003
    p = np.array([realised_fpr_pvalue(n, alpha, m, int(f)) for f in flagged[:1000]])
    assert np.mean(p < 0.05) <= 0.06
    drifted = int((rng.random(m) ** 0.3 > thr[0]).sum())  # test scores shifted upwards (about 3x the flags)
    assert realised_fpr_pvalue(n, alpha, m, drifted) < 0.01
    assert realised_fpr_range(5, 0.05, 100) == (0.0, 0.0)  # k > n: the threshold is infinite
