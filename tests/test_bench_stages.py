"""The bench's timed stages code exactly what the codec writes: same symbols, same whole files."""

from __future__ import annotations

import numpy as np
import pytest

from aekit.bench.inputs import fit, load_images
from aekit.bench.quality import open_codec, quality_row
from aekit.bench.schema import BenchConfig
from aekit.bench.stages import Stages
from aekit.bench.sysinfo import HostPeakMemory
from aekit.export.manifest import model_arg


@pytest.mark.parametrize("model", ["photos-r4", "fmnist-r4", "fmnist-r9"])  # gdn-hp, gdn (factorized prior), tanh
def test_stage_files_are_the_codec_files(model, photos_dir, gray_dir):
    codec, decoder = open_codec(model_arg(model), threads=1)
    side = 2 * codec.factor
    folder, ch = (photos_dir, 3) if codec.channels == 3 else (gray_dir / "test", 1)
    images = np.stack([fit(im, side, side) for im in load_images(folder, ch, 3)])
    cfg = BenchConfig(model=model, seconds=0.01, warmup=1)
    st = Stages(cfg, HostPeakMemory(), codec, decoder, {"fp32": None})
    st.set_images(images, np.concatenate([codec.rt.encode(im[None]) for im in images]))
    assert st.files == [codec.compress(im) for im in images]  # what `aekit compress` writes
    assert st.coded_bytes() == quality_row(codec, decoder, images, f"{side}x{side}")["ours_bytes"]
    q = st.symbols(np.arange(len(images)))
    assert np.array_equal(q, codec.symbols(images))
    rows = st.entropy(f"{side}x{side}", 2, side, side)
    assert [r.stage for r in rows] == ["entropy-encode", "entropy-decode"]
    assert all(r.status == "ok" and r.bytes_per_image == st.coded_bytes() for r in rows)


def test_quality_main_records_whole_file_rows(gray_dir, tmp_path, capsys):
    from aekit.bench.quality import main

    out = tmp_path / "q.json"
    assert main(["fmnist-r4", "--images", str(gray_dir / "test"), "--max-images", "4", "--json", str(out)]) == 0
    rec = __import__("json").loads(out.read_text())
    row = rec["rows"][0]
    assert rec["model"] == "fmnist-r4" and rec["command"][3] == "fmnist-r4" and row["size"] == "28x28"
    assert row["ours_bytes_are"].startswith("whole .ael files") and row["ours_bytes"] > 30 and row["ours_psnr_db"] > 10
    assert "28x28: ours" in capsys.readouterr().out
