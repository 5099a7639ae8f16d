"""Image folders and decoding: modes, EXIF, bad files, padding and pixel conventions."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from aekit.images import (
    ImageError, from_model_output, load_image, pad_to_multiple, scan_folder, to_model_input,
)
from aekit.metrics import psnr


def write(path, arr, mode=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path, **kw) if mode else Image.fromarray(arr).save(path, **kw)
    return path


def test_scan_flat_and_class_folders(tmp_path):
    img = np.zeros((8, 8), np.uint8)
    write(tmp_path / "flat" / "a.png", img)
    write(tmp_path / "flat" / "b.JPG", img)
    (tmp_path / "flat" / "notes.txt").write_text("x")
    samples, classes, skipped = scan_folder(tmp_path / "flat")
    assert [s.path.name for s in samples] == ["a.png", "b.JPG"] and classes == []
    assert [p.name for p in skipped] == ["notes.txt"]
    write(tmp_path / "cls" / "cat" / "1.png", img)
    write(tmp_path / "cls" / "dog" / "sub" / "2.png", img)
    samples, classes, _ = scan_folder(tmp_path / "cls")
    assert classes == ["cat", "dog"] and [s.label for s in samples] == ["cat", "dog"]


def test_scan_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        scan_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="empty: no image files"):
        scan_folder(tmp_path / "empty")
    write(tmp_path / "mixed" / "top.png", np.zeros((4, 4), np.uint8))
    write(tmp_path / "mixed" / "c" / "x.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ImageError, match="mixes images at the top level"):
        scan_folder(tmp_path / "mixed")


def test_modes_are_converted_deliberately(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200  # red, fully transparent -> white background
    arr, note = load_image(write(tmp_path / "a.png", rgba), 3)
    assert arr.shape == (4, 5, 3) and (arr == 255).all() and "alpha" in note
    deep = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000)
    arr, note = load_image(write(tmp_path / "d.png", deep), 1)
    assert arr.shape == (4, 5, 1) and arr.max() == round(57000 * 255 / 65535) and "16" in note
    pal = Image.fromarray(np.full((4, 4, 3), 77, np.uint8)).convert("P", palette=Image.ADAPTIVE)
    pal.save(tmp_path / "p.png")
    arr, note = load_image(tmp_path / "p.png", 3)
    assert (arr == 77).all() and "palette" in note
    arr, note = load_image(tmp_path / "p.png", 1)
    assert arr.shape == (4, 4, 1) and "converted to L" in note


def test_large_images_are_copied_out_of_pillow_in_bands(photos_dir, monkeypatch):
    """load_image copies a large image's pixels band by band (_pixels: no im.tobytes() of the whole image):
    the same array as Pillow's own, for RGB, for gray, and for a converted gray-to-RGB photo."""
    import aekit.images as images

    whole = {(p.name, c): load_image(p, c)[0] for p in sorted(photos_dir.iterdir())[:4] for c in (1, 3)}
    monkeypatch.setattr(images, "PIXEL_BAND", 997)  # a band of a row or two (and a ragged last band)
    for (name, c), want in whole.items():
        got = load_image(photos_dir / name, c)[0]
        assert got.shape == want.shape and got.flags.c_contiguous and np.array_equal(got, want), (name, c)


def test_lazy_pixels_read_regions_of_pillows_image(photos_dir, tmp_path):
    """load_image(..., lazy_above=N) keeps a larger image in Pillow's memory (LazyPixels): every region, and
    the whole array, equal the eager load's, also after EXIF rotation, a palette's conversion and the
    channel rule (gray through an RGB model repeated, gray-looking RGB through a gray model); other indexes are refused; a small image still comes back as an array."""
    from aekit.images import LazyPixels, load_for_channels

    photo = sorted(photos_dir.iterdir())[0]
    rgb = np.asarray(Image.open(photo).convert("RGB"))[:97, :131]
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6
    cases = {"rgb.png": (write(tmp_path / "rgb.png", rgb), 3), "gray.png": (write(tmp_path / "gray.png", rgb[..., 1]), 3),
             "pal.png": (write(tmp_path / "pal.png", np.asarray(im.quantize(64).convert("RGB"))), 3),
             "graylike.png": (write(tmp_path / "graylike.png", np.repeat(rgb[..., :1], 3, axis=2)), 1)}
    im.save(tmp_path / "rot.jpg", exif=exif)
    cases["rot.jpg"] = (tmp_path / "rot.jpg", 3)
    Image.fromarray(rgb).quantize(64).save(tmp_path / "p.png")  # a palette file (converted to RGB on load)
    cases["p.png"] = (tmp_path / "p.png", 3)
    for name, (path, c) in cases.items():
        want, mode = load_for_channels(path, c)
        lazy, lazy_mode = load_for_channels(path, c, lazy_above=100)
        assert isinstance(lazy, LazyPixels) and lazy_mode == mode and lazy.shape == want.shape, name
        for key in ((slice(None), slice(None)), (slice(3, 40), slice(50, 131)), (slice(90, 200), slice(-7, None)),
                    (slice(5, 5), slice(0, 3)), (slice(0, 9), slice(2, 4), slice(None))):
            assert np.array_equal(lazy[key], want[key[:2]]), (name, key)
        assert np.array_equal(np.asarray(lazy), want) and lazy.dtype == np.uint8 and lazy.ndim == 3
    assert load_image(tmp_path / "rot.jpg", 3)[0].shape[:2] == (131, 97)  # rotated
    assert isinstance(load_image(tmp_path / "rgb.png", 3, lazy_above=97 * 131)[0], np.ndarray)
    lazy = load_image(tmp_path / "rgb.png", 3, lazy_above=1)[0]
    assert lazy.nbytes == 97 * 131 * 4  # what Pillow holds for RGB
    for bad in (0, (slice(0, 4),), (slice(0, 4, 2), slice(None)), (slice(None), slice(None), 0), None):
        with pytest.raises(TypeError, match="LazyPixels takes"):
            lazy[bad]
    with pytest.raises(ImageError, match="graylike_no.png: RGB image but the model takes 1-channel"):
        load_for_channels(write(tmp_path / "graylike_no.png", rgb), 1, lazy_above=1)


def test_strict_refuses_colour_for_gray_model(tmp_path):
    p = write(tmp_path / "rgb.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ImageError, match=r"rgb.png: RGB image but the model takes 1-channel"):
        load_image(p, 1, strict=True)


def test_exif_orientation_applied(tmp_path):
    im = Image.fromarray(np.zeros((2, 6, 3), np.uint8))  # 6 wide, 2 high
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    im.save(tmp_path / "r.jpg", exif=exif)
    arr, _ = load_image(tmp_path / "r.jpg", 3)
    assert arr.shape[:2] == (6, 2)


def test_bad_files_get_clear_errors(tmp_path):
    (tmp_path / "fake.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="fake.png: cannot decode image"):
        load_image(tmp_path / "fake.png", 3)
    good = write(tmp_path / "t.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageError, match="trunc.png"):
        load_image(tmp_path / "trunc.png", 3)
    with pytest.raises(ImageError, match="exceeds the limit of 100"):
        load_image(good, 3, max_pixels=100)


def test_padding_and_normalisation_round_trip():
    x = np.arange(2 * 5 * 7 * 3, dtype=np.uint8).reshape(2, 5, 7, 3)
    t = to_model_input(x)
    assert t.shape == (2, 3, 5, 7) and t.min() >= -1 and t.max() <= 1
    assert (from_model_output(t) == x).all()
    p = pad_to_multiple(t, 4)
    assert p.shape == (2, 3, 8, 8) and (p[..., :5, :7] == t).all() and (p[..., 7, :7] == t[..., 4, :]).all()
    assert psnr(x, x) == 100.0 and 40 < psnr(x, np.clip(x.astype(int) + 2, 0, 255).astype(np.uint8)) < 43
