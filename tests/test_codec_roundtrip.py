"""Codec round trips with tiny trained models on real images: sizes, modes, symbols, tiles, API."""

from __future__ import annotations

import numpy as np
import pytest

from aekit.images import load_image
from aekit.metrics import psnr
from aekit.codec import compress_file, decompress_file, read_latents
from aekit.codec.core import Codec, CodecConfig, CodecError, Decoder
from aekit.codec.format import parse
from aekit.codec.postfilter import PostFilter
from aekit.codec.postfilter import apply as apply_filter
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
    """Decoded pixels equal the runtime's own 8-bit round trip (through the file's post-filter, if it has one),
    symbols equal the encoder's."""
    model = tiny_model(channels, ratio)
    codec, dec = Codec(model), Decoder([model])
    image = real_image(channels, gray_dir, rgb_photos, h, w)
    data = codec.compress(image)
    header, q = dec.symbols(data, "x.ael")
    assert np.array_equal(q, codec.symbols(image[None])[0])  # cross-check: decoded symbols == encoder's
    out, _ = dec.decompress(data)
    assert out.shape == image.shape and out.dtype == np.uint8
    own = Runtime(model).reconstruct(image[None])[0]
    if header.post_filter:
        own = apply_filter(own, PostFilter.from_bytes(header.post_filter)[0])
    assert np.array_equal(out, own)
    c, lh, lw = header.latent_shape
    assert len(data) <= c * lh * lw + 40 + len(header.post_filter)  # never above the 8-bit symbols plus header
    assert len(header.post_filter) <= 99


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
        assert len(data) - len(payload) - len(header.post_filter) <= 40 and len(header.post_filter) <= 99


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
    full_codec, full_dec = Codec(model, CodecConfig(post_filter=False)), Decoder([model])  # the networks' seams
    cfg = CodecConfig(full_res_max_pixels=0, tile_px=96, post_filter=False)
    tiled_codec, tiled_dec = Codec(model, cfg), Decoder([model], cfg)
    full, _ = full_dec.decompress(full_codec.compress(image))
    data = tiled_codec.compress(image)
    assert parse(data)[0].flags & 1
    tiled, _ = tiled_dec.decompress(data)
    assert tiled.shape == image.shape
    q_full, q_tiled = full_codec.symbols(image[None]), tiled_codec.symbols(image[None])
    assert np.array_equal(q_full, q_tiled) and np.abs(full.astype(int) - tiled.astype(int)).max() <= 1


@pytest.mark.parametrize("channels", [1, 3])
def test_large_images_compress_from_pillows_memory(tiny_model, rgb_photos, tmp_path, monkeypatch, channels):
    """compress_tree and compress_file read a tiled image region by region from Pillow's decoded image
    (Codec.load(lazy=True) -> LazyPixels: no whole copy of the pixels) and write the same bytes as
    compressing the array; a gray file through an RGB model too (repeated per tile, mode L kept)."""
    import aekit.codec.jobs as jobs
    from PIL import Image

    from aekit.images import LazyPixels

    model = tiny_model(channels, 9)
    cfg = CodecConfig(full_res_max_pixels=0, tile_px=96)
    codec = Codec(model, cfg)
    src = tmp_path / "src"
    src.mkdir()
    image = rgb_photos[0][:300, :260]
    Image.fromarray(image if channels == 3 else image[..., 1]).save(src / "a.png")
    Image.fromarray(image[:200, ::-1, 2]).save(src / "g.png")  # gray file: through an RGB model it is repeated
    loads, real = [], Codec.load
    monkeypatch.setattr(Codec, "load", lambda self, path, lazy=False: (lambda r: loads.append(type(r[0])) or r)(
        real(self, path, lazy)))
    report = jobs.compress_tree(src, tmp_path / "out", codec, jobs.JobConfig(progress=False))
    assert report.ok == 2 and not report.failed and loads == [LazyPixels, LazyPixels]
    compress_file(src / "a.png", tmp_path / "one.ael", codec)
    assert loads[-1] is LazyPixels
    for name in ("a", "g"):
        arr, mode = real(codec, src / f"{name}.png")
        assert isinstance(arr, np.ndarray)
        assert (tmp_path / "out" / f"{name}.png.ael").read_bytes() == codec.compress_batch(arr[None], [mode])[0], name
    assert (tmp_path / "one.ael").read_bytes() == (tmp_path / "out" / "a.png.ael").read_bytes()
    dec = Decoder([model], cfg)
    assert dec.decompress((tmp_path / "out" / "g.png.ael").read_bytes())[0].shape == (200, 260, 1)


@pytest.mark.parametrize("workers", [1, 2])
def test_tiled_symbols_can_be_gathered_packed(tiny_model, rgb_photos, workers):
    """Codec.symbols(packed=True): a tiled image's symbols come back as PackedSymbols (rows of tiles
    zstd-compressed as they finish, issue 17) that unpack to exactly the array path's symbols; an untiled
    batch is the plain array; a band that never arrived is an error, not zeros."""
    from aekit.codec.core import PackedSymbols

    codec = Codec(tiny_model(3, 9), CodecConfig(full_res_max_pixels=50 * 50, tile_px=48, workers=workers))
    image = rgb_photos[0][:300, :260]
    want = codec.symbols(image[None])[0]
    (got,) = codec.symbols([image], packed=True)
    assert isinstance(got, PackedSymbols) and got.shape == want.shape and got.nbytes == want.nbytes
    assert len(got._bands) > 2 and np.array_equal(np.asarray(got), want)
    small = rgb_photos[1][:40, :40]
    assert np.array_equal(codec.symbols(small[None], packed=True), codec.symbols(small[None]))
    del got._bands[min(got._bands)]
    with pytest.raises(CodecError, match="cover"):
        np.asarray(got)


@pytest.mark.parametrize("workers", [1, 2])
def test_folder_compress_lets_go_of_the_pixels_before_coding(tiny_model, rgb_photos, tmp_path, monkeypatch, workers):
    """No reference to a large image's pixels outlives its encoder pass: when the entropy coder runs (Codec.pack),
    the LazyPixels of a tiled image above the post-filter's limit (FIT_MAX_PIXELS, here lowered to 50²) are already
    freed, with one worker (flush runs inside the router's call, where a local name or the load's future once kept a
    178 Mpx image alive) and two. An image within the limit keeps its array until pack, which fits the post-filter
    to it, and not after."""
    import gc
    import weakref

    import aekit.codec.jobs as jobs
    from PIL import Image

    model = tiny_model(3, 9)
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(rgb_photos[0][:300, :260]).save(src / "big.png")
    Image.fromarray(rgb_photos[1][:40, :40]).save(src / "small.png")
    codec = Codec(model, CodecConfig(full_res_max_pixels=50 * 50, tile_px=96))
    monkeypatch.setattr("aekit.codec.core.FIT_MAX_PIXELS", 50 * 50)
    loaded, live_at_pack = [], []
    real_load, real_pack = Codec.load, Codec.pack

    def load(self, path, lazy=False):
        arr, mode = real_load(self, path, lazy)
        loaded.append((arr.shape[:2], weakref.ref(arr)))
        return arr, mode

    def pack(self, q, h, w, mode, image=None):
        gc.collect()
        live_at_pack.append(((h, w), [r() is not None for shape, r in loaded if shape == (h, w)]))  # its pixels
        return real_pack(self, q, h, w, mode, image)

    monkeypatch.setattr(Codec, "load", load)
    monkeypatch.setattr(Codec, "pack", pack)
    report = jobs.compress_tree(src, tmp_path / "out", codec, jobs.JobConfig(workers=workers, window=1, progress=False))
    assert report.ok == 2 and len(loaded) == 2 and dict(live_at_pack) == {(300, 260): [False], (40, 40): [True]}
    gc.collect()
    assert all(r() is None for _, r in loaded)  # and the small image's pixels go once it is packed
    compress_file(src / "big.png", tmp_path / "one.ael", codec)  # the API too: the pixels go before the coder
    assert live_at_pack[-1] == ((300, 260), [False, False])


def test_write_png_rows_round_trips_and_refuses_wrong_bands():
    """write_png_rows: a PNG that Pillow reads back exactly from bands of any height, empty ones skipped (gray, RGB);
    a band of the wrong width or dtype, or rows that do not add up, raise ValueError."""
    import io

    from PIL import Image

    from aekit.images import write_png_rows

    rng = np.random.default_rng(0)
    for c in (1, 3):
        im = rng.integers(0, 256, (41, 23, c), dtype=np.uint8)
        buf = io.BytesIO()
        n = write_png_rows(buf, 23, 41, c, [im[:1], im[1:17], im[17:17], im[17:]], level=6)  # an empty band too
        assert n == len(buf.getvalue())
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(buf.getvalue()))).reshape(im.shape), im)
    with pytest.raises(ValueError, match="does not fit"):
        write_png_rows(io.BytesIO(), 23, 41, 3, [im[:, :22]])
    with pytest.raises(ValueError, match="does not fit"):
        write_png_rows(io.BytesIO(), 23, 41, 3, [im.astype(np.int16)])
    with pytest.raises(ValueError, match="gave 17 rows, expected 41"):
        write_png_rows(io.BytesIO(), 23, 41, 3, [im[:17]])


@pytest.mark.parametrize("channels", [1, 3])
def test_large_images_decompress_streamed_in_bands(tiny_model, rgb_photos, tmp_path, monkeypatch, channels):
    """decompress_tree (and decompress_file) write a tiled image's PNG band by band (write_png_rows over
    Decoder.reconstruct_rows), with the pixels of the in-memory decode; a failure half way leaves no
    file (nor a temp file) and one line naming it, and the folder's other file is still written."""
    import aekit.codec.jobs as jobs
    from PIL import Image

    model = tiny_model(channels, 9)
    cfg = CodecConfig(full_res_max_pixels=0, tile_px=96)
    image = rgb_photos[0][:300, :260]
    image = image if channels == 3 else image.mean(axis=2, keepdims=True).astype(np.uint8)
    src = tmp_path / "lat"
    src.mkdir()
    for name, im in (("a", image), ("b", image[:200, ::-1])):
        (src / f"{name}.png.ael").write_bytes(Codec(model, cfg).compress(im))
    dec = Decoder([model], cfg)
    bands, real = [], jobs.write_png_rows
    monkeypatch.setattr(jobs, "write_png_rows", lambda f, w, h, c, rows, level: real(
        f, w, h, c, (bands.append(len(b)) or b for b in rows), level))
    report = jobs.decompress_tree(src, tmp_path / "out", dec, jobs.JobConfig(progress=False))
    assert report.ok == 2 and not report.failed and len(bands) > 2 and sum(bands) == 300 + 200
    for name in ("a", "b"):
        want, _ = dec.decompress((src / f"{name}.png.ael").read_bytes())
        got = np.asarray(Image.open(tmp_path / "out" / f"{name}.png"))
        assert np.array_equal(got.reshape(want.shape), want)
    n = len(bands)
    decompress_file(src / "a.png.ael", tmp_path / "one.png", dec)  # the single-file API streams too
    assert len(bands) > n + 1 and np.array_equal(np.asarray(Image.open(tmp_path / "one.png")),
                                                 np.asarray(Image.open(tmp_path / "out" / "a.png")))

    def broken(header, q):  # a's decode fails after its first band
        rows = Decoder.reconstruct_rows(dec, header, q)
        yield next(rows)
        if header.height == 300:
            raise RuntimeError("decoder fell over")
        yield from rows

    monkeypatch.setattr(dec, "reconstruct_rows", broken)
    report = jobs.decompress_tree(src, tmp_path / "out2", dec, jobs.JobConfig(progress=False))
    assert report.ok == 1 and len(report.failed) == 1 and "a.png.ael" in report.failed[0]
    assert "decoder fell over" in report.failed[0]
    left = [p.name for p in (tmp_path / "out2").rglob("*") if p.name != ".aekit-outputs.jsonl"]
    assert left == ["b.png"]  # no a.png, no temp file


def test_fewer_levels_make_smaller_exact_files(tiny_model, gray_dir):
    """--levels: requantised latents round-trip exactly and code smaller on real images."""
    model = tiny_model(1, 4)
    images = [load_image(p, 1)[0] for p in sorted((gray_dir / "test").rglob("*.png"))[:32]]
    plain = CodecConfig(post_filter=False)  # the networks' output itself, compared below
    full, coarse, dec = Codec(model, plain), Codec(model, CodecConfig(levels=16, post_filter=False)), Decoder([model])
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
