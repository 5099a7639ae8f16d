"""RDOQ: the encoder's rate-distortion optimised rounding (aekit.export.entropy.rdoq_choose), on the shipped
photo and Fashion-MNIST models. The format and the decoder are unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from aekit.cli import main
from aekit.codec.core import Codec, CodecConfig, CodecError, Decoder
from aekit.export.entropy import RDOQ_T, RESIDUAL_SCALE, rdoq_choose
from aekit.export.manifest import resolve_model
from aekit.export.runtime import Quantiser


@pytest.fixture(scope="module")
def photo():
    import skimage.data

    return np.ascontiguousarray(skimage.data.astronaut()[:256, 128:384])


def test_rdoq_choice_follows_its_definition():
    """The candidate k − s is kept exactly where it saves bits and adds dD = 1 + 2·s·δ < t·saved (Δ² units)."""
    k = np.array([3, 3, 3, -2, -2, 5, 0], np.int16)
    toward = np.array([2, 2, 2, -1, -1, 5, 0], np.int16)  # s = +1, +1, +1, −1, −1, none, none
    saved = np.array([20.0, 20.0, 5.0, 20.0, -1.0, 50.0, 50.0])
    delta = np.array([-0.45, 0.2, -0.45, 0.45, 0.45, 0.0, 0.0])  # y/Δ − k
    res = np.rint(delta * RESIDUAL_SCALE).astype(np.int8)
    out = rdoq_choose(k, toward, saved, res, 0.03)
    # dD: 0.1 < 0.6 keep candidate; 1.4 > 0.6 no; 0.1 < 0.15 yes; 0.1 < 0.6 yes; saves nothing: no; none; none
    np.testing.assert_array_equal(out, [2, 3, 2, -1, -2, 5, 0])
    np.testing.assert_array_equal(rdoq_choose(k, toward, saved, res, 0.0), k)  # t = 0: plain rounding


def test_residual_is_where_y_lay_in_its_bin():
    qz = Quantiser("integer", 255, 1.5)
    y = np.array([0.0, 0.7, -0.8, 2.9, 1000.0, -1000.0], np.float32)  # /1.5: 0, .467, −.533, 1.933, clipped
    np.testing.assert_array_equal(qz.residual(y), np.rint(np.array([0, 0.4667, 0.4667, -0.0667, 0, 0]) * 254))
    with pytest.raises(ValueError, match="integer quantiser"):
        Quantiser("tanh", 256).residual(y)


def test_rdoq_moves_symbols_toward_the_hyperprior_mean_for_fewer_bytes_and_little_psnr(photo):
    """photos-r9 at its default quality on a 256² crop of a photo it never saw: only ±1 moves, each toward the
    element's mean, fewer ideal bits and a smaller file, and the PSNR falls by less than the bytes say it
    should on the model's own curve (here: under 0.1 dB for 1-5 % fewer bytes)."""
    model = resolve_model("photos-r9")
    plain, rdoq = Codec(model, CodecConfig(workers=1, rdoq=0)), Codec(model, CodecConfig(workers=1))
    assert rdoq.rdoq == RDOQ_T
    q0, q1 = plain.symbols(photo[None])[0], rdoq.symbols(photo[None])[0]
    moved = q1 != q0
    assert 0.001 < moved.mean() < 0.05 and np.abs(q1.astype(int) - q0).max() == 1
    _, table, base = plain.em._side(q0)
    k0 = q0.astype(np.int16) - 127
    toward_mean = -np.sign(4 * k0 - (4 * base.astype(np.int16) + (table & 3)))
    np.testing.assert_array_equal((q1.astype(np.int16) - q0)[moved], toward_mean[moved])
    assert plain.em.bits(q1) < plain.em.bits(q0)
    dec = Decoder([model])
    d0, d1 = plain.compress(photo), rdoq.compress(photo)
    assert 0.95 * len(d0) < len(d1) < len(d0)
    psnr = [10 * np.log10(255 ** 2 / np.mean((dec.decompress(d)[0].astype(float) - photo) ** 2)) for d in (d0, d1)]
    assert psnr[0] - 0.1 < psnr[1] < psnr[0]


def test_rdoq_gives_tiled_images_the_whole_images_symbols(photo):
    """A tiled image gathers its residuals tile by tile: the same symbols as the whole image, returned as an
    array even when packed symbols were asked for (the latent is small)."""
    model = resolve_model("photos-r9")
    whole = Codec(model, CodecConfig(workers=1, memory_mb=4096))
    tiled = Codec(model, CodecConfig(workers=2, full_res_max_pixels=0, tile_px=128))
    assert not whole.tiled(256, 256) and tiled.tiled(256, 256)
    q = tiled.symbols([photo], packed=True)[0]
    assert isinstance(q, np.ndarray)
    np.testing.assert_array_equal(q, whole.symbols(photo[None])[0])
    assert not np.array_equal(q, Codec(model, CodecConfig(workers=1, rdoq=0)).symbols(photo[None])[0])


def test_rdoq_on_a_factorized_prior_moves_toward_each_channels_mode():
    """fmnist-r4 (learned factorized prior): moves only toward the channel's most probable symbol, never more bits."""

    codec = Codec(resolve_model("fmnist-r4"), CodecConfig(workers=1, quality=6))
    rng = np.random.default_rng(0)
    q = rng.integers(100, 155, size=(4, 7, 7)).astype(np.uint8)
    res = rng.integers(-127, 128, size=q.shape).astype(np.int8)
    out = codec.em.rdoq(q, res, 0.5)
    mode = codec.em.tables.argmax(axis=1)[:, None, None]
    step = out.astype(int) - q
    assert (np.abs(step) <= 1).all() and step.any()
    assert (np.sign(step) == np.sign(mode - q.astype(int)))[step != 0].all()
    assert codec.em.bits(out) < codec.em.bits(q)


def test_rdoq_out_of_range_is_one_clear_error(tmp_path, photo, capsys):
    with pytest.raises(CodecError, match="rdoq 2.0 outside 0..1"):
        Codec(resolve_model("photos-r9"), CodecConfig(rdoq=2.0))
    from PIL import Image

    Image.fromarray(photo).save(tmp_path / "a.png")
    rc = main(["compress", str(tmp_path / "a.png"), "-m", "photos-r9", "-o", str(tmp_path / "out"), "--rdoq", "-1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and any("rdoq -1.0 outside 0..1" in line for line in err)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.ael"))


def test_a_job_recipe_names_rdoq_only_when_it_is_not_the_default():
    from aekit.codec.jobs import recipe

    model = resolve_model("photos-r9")
    assert "rdoq" not in recipe("compress", Codec(model, CodecConfig()))
    assert recipe("compress", Codec(model, CodecConfig(rdoq=0)))["rdoq"] == 0


def test_the_coder_reuses_the_tables_rdoq_chose_by(photo, monkeypatch):
    """h_a and h_s run once per image with RDOQ on, as without it: the coder takes RDOQ's ẑ and tables for the
    very symbols it returned (other symbols get their own); the file decodes to those symbols."""
    model = resolve_model("photos-r9")
    codec = Codec(model, CodecConfig(workers=1))
    calls = []
    side = type(codec.em)._side
    monkeypatch.setattr(type(codec.em), "_side", lambda self, q, split=False: calls.append(q.shape) or side(self, q, split))
    q = codec.symbols(photo[None])[0]
    data = codec.pack(q, *photo.shape[:2], "RGB")
    assert len(calls) == 1
    codec.pack(q, *photo.shape[:2], "RGB")  # used once: a second pack of the same symbols runs h_a, h_s itself
    assert len(calls) == 2
    np.testing.assert_array_equal(Decoder([model]).symbols(data)[1], q)
