"""Codec round trips with tiny trained models on real images: sizes, modes, symbols, tiles, API."""

from __future__ import annotations

import numpy as np
import pytest

from aekit.images import load_image
from aekit.metrics import psnr
from aekit.codec import compress_file, decompress_file, read_latents
from aekit.codec.core import Codec, CodecConfig, CodecError, Decoder
from aekit.codec.format import parse
from aekit.export.runtime import Runtime

MODELS = [(1, 4), (1, 9), (3, 4), (3, 9)]


def real_image(channels: int, gray_dir, rgb_photos, h: int, w: int) -> np.ndarray:
    """A real image cropped to h x w: a 28x28 gray patch tiled up (gray) or a photo (RGB)."""
    if channels == 1:
        digit = load_image(next((gray_dir / "test").rglob("*.png")), 1)[0]
        return np.tile(digit, (h // 28 + 1, w // 28 + 1, 1))[:h, :w]
    return rgb_photos[0][:h, :w]


@pytest.mark.parametrize("channels,ratio", MODELS)
@pytest.mark.parametrize("h,w", [(28, 28), (31, 45), (1, 7), (61, 13)])
def test_round_trip_matches_the_onnx_model_exactly(tiny_model, gray_dir, rgb_photos, channels, ratio, h, w):
    """Decoded pixels equal the runtime's own 8-bit round trip, symbols equal the encoder's."""
    model = tiny_model(channels, ratio)
    codec, dec = Codec(model), Decoder([model])
    image = real_image(channels, gray_dir, rgb_photos, h, w)
    data = codec.compress(image)
    header, q = dec.symbols(data, "x.ael")
    assert np.array_equal(q, codec.symbols(image[None])[0])  # cross-check: decoded symbols == encoder's
    out, _ = dec.decompress(data)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out, Runtime(model).reconstruct(image[None])[0])
    c, lh, lw = header.latent_shape
    assert len(data) <= c * lh * lw + 40  # never above the plain 8-bit symbols plus header


@pytest.mark.parametrize("channels,ratio", MODELS)
def test_size_bound_on_real_images(tiny_model, gray_dir, photos_dir, channels, ratio):
    """File size <= raw pixel bytes / ratio + header, on real images of multiple-of-f sizes."""
    codec = Codec(tiny_model(channels, ratio))
    f = codec.factor
    if channels == 1:
        paths = sorted((gray_dir / "test").rglob("*.png"))[:64]
        images = [load_image(p, 1)[0] for p in paths]
        images = [im[: im.shape[0] // f * f, : im.shape[1] // f * f] for im in images]  # 28 -> 24 at f=6
    else:
        images = [load_image(photos_dir / n, 3)[0][:192, :192] for n in ("astronaut.png", "coffee.png", "chelsea.png")]
    for im in images:
        data = codec.compress(im)
        header, payload = parse(data)
        raw = im.size
        assert len(payload) <= raw // ratio, (im.shape, len(payload), raw // ratio)
        assert len(data) - len(payload) <= 40


def test_gray_image_through_rgb_model_keeps_its_mode(tiny_model, tmp_path, gray_dir):
    model = tiny_model(3, 4)
    src = next((gray_dir / "test").rglob("*.png"))
    compress_file(src, tmp_path / "g.ael", model)
    header, _ = parse((tmp_path / "g.ael").read_bytes())
    assert header.mode == "L"
    decompress_file(tmp_path / "g.ael", tmp_path / "g.png", [model])
    from PIL import Image

    with Image.open(tmp_path / "g.png") as im:
        assert im.mode == "L" and im.size == (28, 28)


def test_rgb_image_through_gray_model_is_refused(tiny_model, tmp_path, photos_dir):
    with pytest.raises(Exception, match="RGB image but the model takes 1-channel.*refusing to drop colour"):
        compress_file(photos_dir / "astronaut.png", tmp_path / "a.ael", tiny_model(1, 4))
    assert not (tmp_path / "a.ael").exists()


def test_api_refuses_to_overwrite(tiny_model, tmp_path, gray_dir):
    src = next((gray_dir / "test").rglob("*.png"))
    compress_file(src, tmp_path / "x.ael", tiny_model(1, 4))
    with pytest.raises(CodecError, match="exists"):
        compress_file(src, tmp_path / "x.ael", tiny_model(1, 4))
    compress_file(src, tmp_path / "x.ael", tiny_model(1, 4), overwrite=True)


def test_read_latents_gives_features(tiny_model, tmp_path, gray_dir):
    model = tiny_model(1, 9)
    src = next((gray_dir / "test").rglob("*.png"))
    compress_file(src, tmp_path / "x.ael", model)
    y = read_latents(tmp_path / "x.ael", [model])
    assert y.shape == (4, 5, 5) and y.dtype == np.float32 and -1 <= y.min() <= y.max() <= 1
    q = read_latents(tmp_path / "x.ael", [model], dequantised=False)
    rt = Runtime(model)
    assert np.array_equal(q, rt.quantise(rt.encode(load_image(src, 1)[0][None]))[0])
    assert np.allclose(y, rt.dequantise(q))


@pytest.mark.parametrize("channels,ratio", [(3, 4), (3, 9)])
def test_tiled_coding_is_close_to_full_resolution(tiny_model, rgb_photos, channels, ratio):
    """Large-image path (tiles with the model's receptive field as context): the same symbols and pixels as
    one full-resolution call, so tiling leaves no seam."""
    model = tiny_model(channels, ratio)
    image = rgb_photos[0][:300, :260]
    full_codec, full_dec = Codec(model), Decoder([model])
    cfg = CodecConfig(full_res_max_pixels=0, tile_px=96)
    tiled_codec, tiled_dec = Codec(model, cfg), Decoder([model], cfg)
    full, _ = full_dec.decompress(full_codec.compress(image))
    data = tiled_codec.compress(image)
    assert parse(data)[0].flags & 1
    tiled, _ = tiled_dec.decompress(data)
    assert tiled.shape == image.shape
    q_full, q_tiled = full_codec.symbols(image[None]), tiled_codec.symbols(image[None])
    assert np.array_equal(q_full, q_tiled) and np.abs(full.astype(int) - tiled.astype(int)).max() <= 1


def test_fewer_levels_make_smaller_exact_files(tiny_model, gray_dir):
    """--levels: requantised latents round-trip exactly and code smaller on real images."""
    model = tiny_model(1, 4)
    images = [load_image(p, 1)[0] for p in sorted((gray_dir / "test").rglob("*.png"))[:32]]
    full, coarse, dec = Codec(model), Codec(model, CodecConfig(levels=16)), Decoder([model])
    rt = Runtime(model)
    sizes = {16: 0, 256: 0}
    for im in images:
        data = coarse.compress(im)
        header, q = dec.symbols(data)
        assert header.levels == 16 and q.max() < 16
        assert np.array_equal(q, coarse.symbols(im[None])[0])
        out, _ = dec.decompress(data)
        y_hat = q.astype(np.float32) * np.float32(2 / 15) - np.float32(1)
        assert np.array_equal(out, rt.decode(y_hat[None], 28, 28)[0])
        sizes[16] += len(data)
        sizes[256] += len(full.compress(im))
    assert sizes[16] < 0.8 * sizes[256]
