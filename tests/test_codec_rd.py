"""Rate-distortion models (gdn, klt): layers, entropy model, integer tables, format v2, bit-exactness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aekit.config import ModelConfig
from aekit.entropy_models import FactorizedPrior
from aekit.layers import GDN
from aekit.models import build_model


@pytest.mark.parametrize("arch", ["gdn", "klt"])
@pytest.mark.parametrize("channels,ratio", [(3, 4), (3, 9), (1, 4), (1, 9)])
def test_latent_holds_exactly_one_ratio_of_the_elements(arch, channels, ratio):
    cfg = ModelConfig(arch=arch, channels=channels, ratio=ratio, width=8)
    f = cfg.factor
    x = torch.rand(2, channels, 3 * f, 2 * f) * 2 - 1
    out = build_model(cfg).eval()(x)
    assert out.x_hat.shape == x.shape
    assert out.y.numel() * ratio == x.numel()
    assert (cfg.factor, cfg.latent_channels) == {("gdn", 4): (16, 16 * 16 * channels // 4),
                                                 ("gdn", 9): (12, 12 * 12 * channels // 9),
                                                 ("klt", 4): (4, 4 * channels),
                                                 ("klt", 9): (6, 4 * channels)}[(arch, ratio)]


def test_gdn_is_balles_divisive_normalisation():
    torch.manual_seed(0)
    gdn, igdn = GDN(4), GDN(4, inverse=True)
    with torch.no_grad():
        gdn.b.uniform_(0.5, 2)
        gdn.g.uniform_(0, 0.5)
        igdn.load_state_dict(gdn.state_dict())
    x = torch.randn(2, 4, 5, 6)
    beta, gamma = gdn.b**2 + gdn.beta_min, gdn.g**2  # (C,), (C_out, C_in)
    norm = torch.sqrt(beta[None, :, None, None] + torch.einsum("ij,bjhw->bihw", gamma, x * x))
    torch.testing.assert_close(gdn(x), x / norm)
    torch.testing.assert_close(igdn(x), x * norm)


def test_factorized_prior_is_a_density_and_its_tables_match_it():
    torch.manual_seed(0)
    prior = FactorizedPrior(3)
    grid = torch.arange(-200, 201, dtype=torch.float32).view(1, 1, -1, 1).expand(1, 3, -1, 1)
    p = prior.likelihood(grid.contiguous())  # (1, 3, 401, 1): the integer bins
    assert torch.all(p > 0)
    torch.testing.assert_close(p.sum(2).squeeze(), torch.ones(3), atol=2e-3, rtol=0)
    counts = prior.integer_pmf(step=1.0, half=200)  # (3, 401)
    assert counts.shape == (3, 401) and counts.dtype == np.int64
    pmf = counts / counts.sum(1, keepdims=True)
    ref = p[0, :, :, 0].detach().double().numpy()
    np.testing.assert_allclose(pmf, ref / ref.sum(1, keepdims=True), atol=1e-5)


@pytest.fixture(scope="module")
def rd_model(tmp_path_factory, photos_dir):
    """A klt model at 1/4, RD-trained for a few seconds on bundled photos, exported."""
    from aekit.data import DataConfig
    from aekit.export.onnx import export_model
    from aekit.train import TrainConfig, train

    run = tmp_path_factory.mktemp("rd-run")
    tcfg = TrainConfig(data=str(photos_dir), out=str(run), epochs=4, batch_size=8, lr=2e-3, seed=0,
                       rate_weight=0.01, data_cfg=DataConfig(resize="random-crop", size=64, repeat=4, workers=2))
    train(tcfg, ModelConfig(arch="klt", channels=3, ratio=4))
    return export_model(run / "best.pt", tmp_path_factory.mktemp("rd-model") / "klt-r4")


def test_export_writes_integer_tables_per_quality(rd_model):
    from aekit.export.entropy import EntropyModel, rd_counts
    from aekit.export.manifest import entropy_bytes, load_manifest, model_id_of

    m = load_manifest(rd_model)
    assert m["latent"]["quantiser"] == "integer" and m["latent"]["levels"] == 255
    qs = [q["quality"] for q in m["entropy"]["qualities"]]
    assert qs == list(range(1, len(qs) + 1)) and m["entropy"]["default_quality"] in qs
    for q in qs:
        counts = rd_counts(m, q)
        assert counts.shape == (m["latent_channels"], 255) and (counts >= 0).all()
        assert (EntropyModel.from_manifest(m, quality=q).tables.sum(1) == 1 << 24).all()
    # the id pins the tables: another table gives another id
    ids = model_id_of(rd_model / "encoder.onnx", rd_model / "decoder.onnx", entropy_bytes(m))
    assert ids == m["model_id"]
    m["entropy"]["qualities"][0]["step"] = 9.0
    assert model_id_of(rd_model / "encoder.onnx", rd_model / "decoder.onnx", entropy_bytes(m)) != ids


def test_quality_trades_bytes_for_psnr_and_rate_matches_the_trained_estimate(rd_model, rgb_photos):
    import aekit.codec.core as core
    from aekit.metrics import psnr

    from aekit.export.manifest import load_manifest

    image = rgb_photos[0][:256, :256]
    sizes, psnrs = [], []
    m = load_manifest(rd_model)
    offered = [e["quality"] for e in m["entropy"]["qualities"]]
    assert all(e["clipped"] <= 1e-4 for e in m["entropy"]["qualities"])
    assert len(offered) >= 2
    for q in sorted({offered[0], m["entropy"]["default_quality"], offered[-1]}):
        codec = core.Codec(rd_model, core.CodecConfig(quality=q))
        data = codec.compress(image)
        out, header = core.Decoder([rd_model]).decompress(data, "x.ael")
        assert header.quality == q and out.shape == image.shape
        sizes.append(len(data))
        psnrs.append(psnr(out, image))
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert psnrs[0] < psnrs[-1]
    assert min(psnrs) > 18 and psnrs[-1] > 30  # quality 1 is step 32: coarse, still a recognisable photo


def test_ans_bits_equal_the_tables_ideal_code_length(rd_model, rgb_photos):
    import aekit.codec.core as core

    codec = core.Codec(rd_model)
    q = codec.symbols(rgb_photos[1][None])[0]
    payload = codec.em._encode_ans(q)  # the ANS candidate (encode() keeps the smallest coder)
    assert abs(8 * len(payload) - codec.em.bits(q)) <= codec.em.bits(q) * 0.01 + 64
    coder, best = codec.em.encode(q)
    assert len(best) <= len(payload)


def test_rd_flags_are_checked(rd_model):
    import aekit.codec.core as core

    with pytest.raises(core.CodecError, match="choose --quality, not --levels"):
        core.Codec(rd_model, core.CodecConfig(levels=32))
    with pytest.raises(core.CodecError, match=rf"\({rd_model.name}\) has no quality 99"):
        core.Codec(rd_model, core.CodecConfig(quality=99))


def test_symbols_decode_bit_exactly_in_another_process_with_other_threads(rd_model, rgb_photos, tmp_path):
    """The file's symbols come back identical under other thread settings; pixels within 1 level."""
    import aekit.codec.core as core

    image = rgb_photos[2][:200, :232]
    data = core.Codec(rd_model, core.CodecConfig(threads=1)).compress(image)
    (tmp_path / "x.ael").write_bytes(data)
    ref_q = core.Decoder([rd_model]).symbols(data)[1]
    ref_x = core.Decoder([rd_model], core.CodecConfig(threads=1)).decompress(data)[0]
    code = (
        "import sys, numpy as np; import aekit.codec.core as c\n"
        f"d = c.Decoder([{str(rd_model)!r}], c.CodecConfig(threads=2))\n"
        f"data = open({str(tmp_path / 'x.ael')!r}, 'rb').read()\n"
        f"np.save({str(tmp_path / 'q.npy')!r}, d.symbols(data)[1]); np.save({str(tmp_path / 'x.npy')!r}, d.decompress(data)[0])\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    assert np.array_equal(np.load(tmp_path / "q.npy"), ref_q)
    assert np.abs(np.load(tmp_path / "x.npy").astype(int) - ref_x.astype(int)).max() <= 1


def test_tables_out_of_range_are_refused(rd_model):
    from aekit.export.entropy import EntropyError, rd_counts
    from aekit.export.manifest import load_manifest

    m = load_manifest(rd_model)
    m["entropy"]["qualities"][0]["tables"][0] = [250, [1] * 10]  # symbols 250..259 > 254
    with pytest.raises(EntropyError, match="channel 0"):
        rd_counts(m, 1)
    m["entropy"]["qualities"][0]["tables"][0] = "nonsense"
    with pytest.raises(EntropyError, match="malformed entropy table of channel 0"):
        rd_counts(m, 1)


def test_evaluate_refuses_the_other_kind_of_rate_knob(rd_model, tiny_model, photos_dir, tmp_path, capsys):
    """As compress does: --levels on rate-distortion models only, or --quality on tanh models only, is one
    line; an unknown quality lists the model's."""
    from aekit.cli import main

    assert main(["evaluate", str(photos_dir), "-m", str(rd_model), "--levels", "32", "-o", str(tmp_path / "a")]) == 2
    assert "--levels is for tanh-latent models" in capsys.readouterr().err
    assert main(["evaluate", str(photos_dir), "-m", str(tiny_model(3, 4)), "--quality", "3", "-o", str(tmp_path / "b")]) == 2
    assert "--quality is for rate-distortion models" in capsys.readouterr().err
    assert main(["evaluate", str(photos_dir), "-m", str(rd_model), "--quality", "99", "-o", str(tmp_path / "c")]) == 2
    assert "no quality 99 (have: " in capsys.readouterr().err


def test_evaluate_sweeps_qualities_and_reports_bd_rate_colour_and_borders(rd_model, photos_dir, tmp_path):
    from aekit.cli import main

    src = tmp_path / "src"
    src.mkdir()
    for name in ("coffee.png", "chelsea.png"):
        (src / name).write_bytes((photos_dir / name).read_bytes())
    assert main(["evaluate", str(src), "-m", str(rd_model), "-o", str(tmp_path / "ev")]) == 0
    r = json.loads((tmp_path / "ev" / "results.json").read_text())
    offered = json.loads((rd_model / "manifest.json").read_text())["entropy"]["qualities"]
    assert [m["quality"] for m in r["models"]] == [q["quality"] for q in offered]
    for m in r["models"]:
        assert 0.5 < m["chroma_ratio"] < 1.5 and m["border_psnr"] > 10 and m["interior_psnr"] > 10
    assert {"JPEG", "WEBP"} <= set(r["sweeps"])
    bd = r["bd"][0]
    assert bd["JPEG"]["bd_rate"] is not None or bd["JPEG"]["why"]
    md = (tmp_path / "ev" / "results.md").read_text()
    assert "BD-rate" in md and "vs JPEG" in md and (tmp_path / "ev" / "rd.png").stat().st_size > 1000
