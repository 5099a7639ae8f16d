"""`aekit screen --engine ray --maps DIR`: the actors render every image's map, the driver writes the same
files the local engine writes (PNG panel and float32 .npy, byte-identical)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray not installed: pip install -e '.[ray]' (extra aekit[ray])")
pytestmark = pytest.mark.slow  # a local Ray cluster

from aekit.cli import main  # noqa: E402



def test_ray_maps_equal_the_local_engine(ray_cluster, tiny_model, gray_dir, tmp_path):
    det = tmp_path / "det"
    shutil.copytree(tiny_model(1, 4), det)
    src, cal = tmp_path / "src", tmp_path / "cal"
    for cls in ("coins", "moon"):
        shutil.copytree(gray_dir / "train" / cls, cal / cls)
        (src / cls).mkdir(parents=True)
        for p in sorted((gray_dir / "test" / cls).glob("*.png"))[:6]:
            shutil.copy(p, src / cls / p.name)
    assert main(["calibrate", str(det), str(cal), "--alpha", "0.1", "--device", "cpu", "--score", "mse-top1"]) == 0
    base = ["screen", str(det), str(src), "--device", "cpu"]
    rc_local = main(base + ["--out", str(tmp_path / "local"), "--maps", str(tmp_path / "m_local")])
    rc_ray = main(base + ["--out", str(tmp_path / "ray"), "--maps", str(tmp_path / "m_ray"), "--engine", "ray"])
    assert rc_local == rc_ray and rc_local in (0, 1)
    files = {p.relative_to(tmp_path / "m_local"): p.read_bytes() for p in (tmp_path / "m_local").rglob("*") if p.is_file()}
    assert len(files) == 2 * 12
    assert files == {p.relative_to(tmp_path / "m_ray"): p.read_bytes() for p in (tmp_path / "m_ray").rglob("*") if p.is_file()}
    assert np.load(tmp_path / "m_ray" / next(iter(k for k in files if k.suffix == ".npy"))).dtype == np.float32
