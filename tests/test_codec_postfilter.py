"""The post-filter of format version 8 (codec/postfilter.py, codec/FORMAT.md "Post-filter"): the integer rule against a
tap-by-tap reference, row bands against the whole image, the block's refusals, and a real photo through compress."""

from __future__ import annotations

import numpy as np
import pytest

from aekit.codec import postfilter as pf
from aekit.codec.format import FLAG_FILTER, FLAG_TILED, LatentFormatError, parse


def _reference(x: np.ndarray, f: pf.PostFilter) -> np.ndarray:
    """FORMAT.md's rule, one pixel and one tap at a time in Python integers."""
    h, w, ch = x.shape
    out = np.empty_like(x)

    def px(r: int, c: int, k: int) -> int:
        return int(x[min(max(r, 0), h - 1), min(max(c, 0), w - 1), k])

    for k in range(ch):
        for r in range(h):
            for c in range(w):
                feats = [px(r, c, k) - 128]
                feats += [px(r + dy, c + dx, k) + px(r - dy, c - dx, k) - 2 * px(r, c, k) for dy, dx in pf.pairs(f.radius)]
                feats += [px(r, c, o) - px(r, c, k) for o in range(ch) if o != k] + [1]
                acc = sum(int(a) * int(b) for a, b in zip(feats, f.taps[k]))
                out[r, c, k] = min(255, max(0, px(r, c, k) + ((acc + (1 << (f.frac - 1))) >> f.frac)))
    return out


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("radius", [0, 1, 2, 3])
def test_rule_matches_the_reference_and_row_bands_match_the_whole(channels, radius):
    rng = np.random.default_rng(radius + 10 * channels)
    x = rng.integers(0, 256, (17, 13, channels), dtype=np.uint8)
    taps = rng.integers(-32768, 32768, (channels, pf.n_taps(radius, channels))).astype(np.int16)  # extreme taps
    f = pf.PostFilter(radius, 10, taps)
    whole = pf.apply(x, f)
    assert np.array_equal(whole, _reference(x, f))
    for cuts in ([1] * 17, [2, 1, 14], [17], [5, 5, 7]):
        bands = np.split(x, np.cumsum(cuts)[:-1])
        assert np.array_equal(np.concatenate(list(pf.apply_rows(iter(bands), f))), whole), cuts


def test_pairs_are_the_documented_diamond():
    assert pf.pairs(1) == [(0, 1), (1, 0)]
    assert pf.pairs(2) == [(0, 1), (1, 0), (0, 2), (1, -1), (1, 1), (2, 0)]
    assert len(pf.pairs(3)) == 12 and pf.pairs(3)[:6] == pf.pairs(2)
    assert [pf.n_taps(r, 3) for r in range(4)] == [4, 6, 10, 16]


def test_block_round_trip_and_refusals():
    f = pf.PostFilter(2, 10, np.arange(30, dtype=np.int16).reshape(3, 10) - 15)
    block = f.to_bytes()
    assert len(block) == 3 + 2 * 30
    g, used = pf.PostFilter.from_bytes(block + b"coder bytes")
    assert used == len(block) and np.array_equal(g.taps, f.taps) and (g.radius, g.frac) == (2, 10)
    for bad, why in ((bytes([2]) + block[1:], "2 channels"), (block[:1] + bytes([4]) + block[2:], "radius 4"),
                     (block[:2] + bytes([0]) + block[3:], "0 fraction bits"), (block[:-1], "cut off"), (b"\x03", "cut off")):
        with pytest.raises(ValueError, match=why):
            pf.PostFilter.from_bytes(bad)


def test_choose_keeps_nothing_where_nothing_is_gained():
    x = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    assert pf.choose(x, x.copy(), 500) == (None, 0.0)  # a perfect decode
    noisy = np.clip(x.astype(int) + np.random.default_rng(1).integers(-1, 2, x.shape), 0, 255).astype(np.uint8)
    assert pf.choose(x, noisy, 40)[0] is None  # white noise: no linear filter of x̂ pays 39+ bytes on a 40-byte file
    assert not pf.worth(0.1, 63, 1000) and pf.worth(0.5, 63, 1000)


def test_large_taps_take_fewer_fraction_bits_instead_of_clipping():
    assert pf.frac_bits(np.array([[0.5, -31.9]])) == pf.FRAC_BITS  # 31.9 · 2^10 fits an int16
    assert pf.frac_bits(np.array([[0.5, 40.0]])) == 9 and pf.frac_bits(np.array([[-100.0]])) == 8
    assert pf.frac_bits(np.zeros((3, 4))) == pf.FRAC_BITS
    # a colour cast of 70 grey levels (a bias tap of 70 · 2^10, over an int16 at F = 10) is corrected, not clipped
    rng = np.random.default_rng(3)
    x = rng.integers(90, 256, (32, 32, 3), dtype=np.uint8)
    x_hat = x.copy()
    x_hat[..., 0] -= 70
    f, gain = pf.choose(x, x_hat, 200)
    assert f is not None and f.radius == 0 and f.frac == 8, f
    assert np.abs(pf.apply(x_hat, f).astype(int) - x).max() <= 1 and gain > 30


def test_a_coarse_photo_gets_its_colour_back():
    """photos-r9 at quality 1 (0.01 bpp) washes coffee's colour out; the least-squares colour correction needs a bias
    above 32 grey levels, which F = 10 cannot hold (until session 26 the taps were clipped: chroma ratio 0.87)."""
    import skimage.data

    from aekit.codec.core import Codec, CodecConfig, Decoder
    from aekit.export.manifest import resolve_model
    from aekit.metrics import chroma_ratio, psnr

    model = resolve_model("photos-r9")
    image = skimage.data.coffee()
    with_f = Codec(model, CodecConfig(workers=1, quality=1)).compress(image)
    without = Codec(model, CodecConfig(workers=1, quality=1, post_filter=False)).compress(image)
    h, _ = parse(with_f)
    assert h.post_filter and h.post_filter[2] < pf.FRAC_BITS, h.post_filter[:3]
    dec = Decoder([model])
    x_f, x_0 = dec.decompress(with_f)[0], dec.decompress(without)[0]
    assert 0.95 <= chroma_ratio(image, x_f) <= 1.05 and chroma_ratio(image, x_0) < 0.9
    assert psnr(image, x_f) - psnr(image, x_0) > pf.SLOPE_DB_PER_DOUBLING * np.log2(len(with_f) / len(without))


@pytest.fixture(scope="module")
def rocket_files():
    """scikit-image's rocket (256², sky and walls) through the shipped photos-r9 at its default quality, with and
    without the post-filter."""
    import skimage.data

    from aekit.codec.core import Codec, CodecConfig
    from aekit.export.manifest import resolve_model

    model = resolve_model("photos-r9")
    image = skimage.data.rocket()[:256, :256]
    with_f = Codec(model, CodecConfig(workers=1)).compress(image)
    without = Codec(model, CodecConfig(workers=1, post_filter=False)).compress(image)
    return model, image, with_f, without


def test_a_real_photo_gets_a_filter_that_pays_for_its_bytes(rocket_files):
    from aekit.codec.core import Decoder
    from aekit.metrics import psnr

    model, image, with_f, without = rocket_files
    (h, payload), (h0, payload0) = parse(with_f), parse(without)
    assert (with_f[4], h.flags & FLAG_FILTER, without[4], h0.flags & FLAG_FILTER) == (8, FLAG_FILTER, 7, 0)
    assert payload == payload0 and h.coder == h0.coder  # the same symbols and coder: the block is all that is added
    assert len(with_f) == len(without) + len(h.post_filter)
    dec = Decoder([model])
    gain = psnr(image, dec.decompress(with_f)[0]) - psnr(image, dec.decompress(without)[0])
    assert gain > pf.SLOPE_DB_PER_DOUBLING * np.log2(len(with_f) / len(without)) and gain > 0.2, gain


def test_a_tiled_decode_streams_the_same_filtered_rows(rocket_files):
    from aekit.codec.core import CodecConfig, Decoder

    model, _, with_f, _ = rocket_files
    whole = Decoder([model]).decompress(with_f)[0]
    tiled = Decoder([model], CodecConfig(full_res_max_pixels=1 << 12, tile_px=96, workers=1))
    h, q = tiled.symbols(with_f)
    assert tiled.tiled(h)
    rows = list(tiled.reconstruct_rows(h, q))
    assert len(rows) > 1
    assert np.array_equal(np.concatenate(rows), tiled.reconstruct(h, q[None])[0])
    assert np.abs(np.concatenate(rows).astype(int) - whole).max() <= 2  # tiles: the same pixels up to float noise


def test_malformed_blocks_are_refused_with_one_line(rocket_files, monkeypatch):
    import dataclasses

    import aekit.codec.format as fmt
    from aekit.codec.core import CodecError, Decoder
    from aekit.codec.format import pack

    model, _, with_f, without = rocket_files
    h, payload = parse(with_f)
    gray = pf.PostFilter(1, 10, np.zeros((1, pf.n_taps(1, 1)), np.int16)).to_bytes()
    odd = pack(dataclasses.replace(h, post_filter=gray), payload)
    with pytest.raises(CodecError, match="odd.ael: post-filter for 1 channels, model .* decodes 3"):
        Decoder([model]).symbols(odd, "odd.ael")
    with pytest.raises(LatentFormatError, match="<header>: post-filter block cut off"):
        pack(dataclasses.replace(h, post_filter=h.post_filter[:-1]), payload)
    monkeypatch.setattr(fmt, "version_for", lambda coder, post_filter=False: 7)  # a writer that forgets the version
    old = pack(h, payload)
    with pytest.raises(LatentFormatError, match="^old.ael: post-filter flag in a version-7 file"):
        parse(old, "old.ael")


def test_fit_windows_spread_over_the_image_without_overlap():
    from aekit.codec.core import fit_windows

    assert len(fit_windows(3000, 4000, 8, 1 << 22)) == 64  # a 12 Mpx photo at factor 8: 64 windows of 256²
    boxes = fit_windows(3000, 4000, 8, 1 << 22, side=512)  # or 16 of 512² (64 latent units)
    assert len(boxes) == 16 and all((r1 - r0, c1 - c0) == (64, 64) for r0, r1, c0, c1 in boxes)
    rows, cols = sorted({b[0] for b in boxes}), sorted({b[2] for b in boxes})
    assert rows[0] == 0 and rows[-1] + 64 == 3000 // 8 and cols[0] == 0 and cols[-1] + 64 == 4000 // 8  # edge to edge
    assert all(b - a >= 64 for a, b in zip(rows, rows[1:])) and all(b - a >= 64 for a, b in zip(cols, cols[1:]))
    assert sum((r1 - r0) * (c1 - c0) * 64 for r0, r1, c0, c1 in boxes) <= 1 << 22
    strip = fit_windows(20, 300000, 8, 1 << 22)  # a strip 20 px high: windows as high as its 2 whole latent rows
    assert strip and all((r0, r1) == (0, 2) for r0, r1, _, _ in strip)
    assert fit_windows(5, 10 ** 7, 8, 1 << 22) == []  # no whole latent row


def test_a_large_image_gets_a_filter_fitted_to_windows(monkeypatch, tmp_path):
    """Above FIT_MAX_PIXELS (here lowered so that astronaut, 512², is "large") the encoder keeps windows of the
    original, fits the filter to their decode, and the file decodes (whole, or streamed in tiles) with it: nearly
    the gain of the filter fitted to the whole image. compress_file (lazy pixels, tiles) writes the same file."""
    import skimage.data
    from PIL import Image

    import aekit.codec.core as core
    from aekit.codec.api import compress_file
    from aekit.codec.core import Codec, CodecConfig, Decoder, FitSample
    from aekit.export.manifest import resolve_model
    from aekit.metrics import psnr

    model = resolve_model("photos-r9")
    image = skimage.data.astronaut()
    whole = Codec(model, CodecConfig(workers=1)).compress(image)
    without = Codec(model, CodecConfig(workers=1, post_filter=False)).compress(image)
    monkeypatch.setattr(core, "FIT_MAX_PIXELS", 1 << 16)
    codec = Codec(model, CodecConfig(workers=1))
    sample = codec.fit_input(image)
    assert isinstance(sample, FitSample) and len(sample.windows) == 1
    sampled = codec.compress(image)
    h, _ = parse(sampled)
    assert h.post_filter and len(sampled) == len(whole)
    dec = Decoder([model])
    p0, p_whole, p_sampled = (psnr(image, dec.decompress(d)[0]) for d in (without, whole, sampled))
    assert p_sampled - p0 > 0.6 * (p_whole - p0) > 0, (p0, p_whole, p_sampled)
    Image.fromarray(image).save(tmp_path / "a.png")
    tiled = Codec(model, CodecConfig(workers=2, full_res_max_pixels=1 << 16, tile_px=192))
    out = compress_file(tmp_path / "a.png", tmp_path / "a.ael", tiled)
    ht, _ = parse(out.read_bytes())
    assert ht.post_filter and ht.flags & FLAG_TILED  # tiled and filtered
    streamed = np.concatenate(list(Decoder([model], CodecConfig(full_res_max_pixels=1 << 16, tile_px=192))
                                   .reconstruct_rows(*Decoder([model]).symbols(out.read_bytes()))))
    assert psnr(image, streamed) - p0 > 0.6 * (p_whole - p0)

