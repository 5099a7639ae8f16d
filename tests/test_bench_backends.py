"""Runners: the IOBinding path (used on CUDA/TensorRT) exercised with CPU OrtValues, equal to plain runs."""

from __future__ import annotations

import numpy as np
import pytest

from aekit.bench.backends import BackendError, BackendOptions, make_runner
from aekit.bench.failures import is_oom
from aekit.bench.inputs import fit
from aekit.export.manifest import load_manifest
from aekit.export.runtime import Runtime


@pytest.fixture(scope="module")
def staged(tiny_model, rgb_photos):
    d = tiny_model(3, 4)
    images = np.stack([fit(im, 32, 48) for im in rgb_photos])  # (N, 32, 48, 3)
    rt = Runtime(d, device="cpu")
    y_hat = rt.dequantise(rt.quantise(rt.encode(images)))
    return load_manifest(d), images, y_hat, rt


def run_all(r, images, y_hat):
    r.load(images, y_hat)
    r.encode()
    r.decode()
    r.sync()
    return r.fetch_latents(), r.fetch_pixels(), r.compress(images[::-1].copy()), r.decompress(y_hat[::-1].copy())


def test_iobinding_path_matches_plain_runs(staged):
    m, images, y_hat, rt = staged
    plain = run_all(make_runner("ort-cpu", "fp32", m, BackendOptions()), images, y_hat)
    bound_runner = make_runner("ort-cpu", "fp32", m, BackendOptions(iobinding=True))
    bound = run_all(bound_runner, images, y_hat)
    assert bound_runner.bound
    for a, b in zip(plain, bound):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(plain[0], rt.encode(images))  # the pixel graph is the runtime's encode
    np.testing.assert_array_equal(plain[1], rt.decode(y_hat))
    np.testing.assert_array_equal(bound[2], rt.encode(images[::-1].copy()))  # update_inplace took new inputs


def test_torch_eager_agrees_with_onnx(staged):
    pytest.importorskip("torch")
    m, images, y_hat, rt = staged
    lat, px, _, _ = run_all(make_runner("torch-eager", "fp32", m, BackendOptions(), "cpu"), images, y_hat)
    assert np.abs(lat - rt.encode(images)).max() < 1e-4
    assert np.abs(px.astype(int) - rt.decode(y_hat)).max() <= 1  # rounding at .5 may differ by one level


def test_fp16_graphs_run_and_stay_close(staged, train_tiny, tmp_path):
    pytest.importorskip("torch")
    from aekit.export.onnx import export_model

    _, images, y_hat, rt = staged
    m = load_manifest(export_model(train_tiny(3, 4) / "best.pt", tmp_path / "m16", fp16=True))
    lat, px, _, _ = run_all(make_runner("ort-cpu", "fp16", m, BackendOptions()), images, y_hat)
    assert lat.dtype == np.float32 and np.abs(lat - rt.encode(images)).max() < 2e-2


def test_clear_refusals(staged):
    m = staged[0]
    no16 = {**m, "files": {k: v for k, v in m["files"].items() if "fp16" not in k}}
    with pytest.raises(BackendError, match="no fp16 ONNX files; re-export with `aekit export --fp16`"):
        make_runner("ort-cpu", "fp16", no16, BackendOptions())
    with pytest.raises(BackendError, match="unknown precision"):
        make_runner("ort-cpu", "int4", m, BackendOptions())
    with pytest.raises(BackendError, match="no PyTorch weights"):
        pytest.importorskip("torch")
        make_runner("torch-eager", "fp32", {**m, "training": {}}, BackendOptions(), "cpu")


def test_oom_recognised_from_every_library():
    assert is_oom(MemoryError())
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer"))
    assert is_oom(RuntimeError("CUDNN_STATUS_ALLOC_FAILED"))
    assert not is_oom(RuntimeError("shape mismatch"))
