"""Issue 14 §3 and §6: inputs that used to crash fail with one line naming the file, and the
training defaults follow the folder (own size, channels from every image).

Every input is made here: malformed EXIF, link loops, non-UTF-8 names, 32-bit and
multi-frame files; no binary fixtures.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from aekit.data import DataConfig, ImageSet, summarize
from aekit.images import (
    ImageError, ImageLimitError, load_for_channels, load_image, probe_image, scan_folder,
)

ORIENT_6 = (0x0112, 3, 1, struct.pack("<HH", 6, 0))  # rotate 90° clockwise to show upright


def exif_block(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A little-endian TIFF IFD as an APP1 EXIF payload; entries (tag, type, count, 4 value bytes)."""
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", *e[:3]) + e[3] for e in sorted(entries))
    return b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)


# Each broke ImageOps.exif_transpose (AttributeError, struct.error, ValueError) in Pillow 13.
MALFORMED_EXIF = {
    "rational_make": exif_block([ORIENT_6, (0x010F, 5, 1, struct.pack("<I", 8))]),
    "byte_interop_ifd": exif_block([ORIENT_6, (0xA005, 1, 1, struct.pack("<I", 8))]),
    "exif_ifd_offset_out_of_file": exif_block([ORIENT_6, (0x8769, 9, 1, struct.pack("<I", 0xFFFFFFF0))]),
    "garbage": b"Exif\x00\x00" + b"\xff" * 30,
}


def jpeg(path: Path, exif: bytes, size=(8, 4)) -> Path:
    Image.fromarray(np.full((size[1], size[0], 3), 90, np.uint8)).save(path, "JPEG", exif=exif)
    return path


@pytest.mark.parametrize("case", sorted(MALFORMED_EXIF))
def test_malformed_exif_decodes(tmp_path, case):
    path = jpeg(tmp_path / f"{case}.jpg", MALFORMED_EXIF[case])
    arr, _ = load_image(path, 3, strict=True)  # compress's path: the photo decodes, EXIF or not
    if case != "garbage":
        assert arr.shape == (8, 4, 3)  # the readable orientation tag is still applied
    assert load_for_channels(path, 3)[1] == "RGB"
    assert probe_image(path).width == 8


def test_malformed_exif_in_a_training_folder(tmp_path):
    for case, exif in MALFORMED_EXIF.items():
        jpeg(tmp_path / f"{case}.jpg", exif, size=(16, 16))
    samples, _, _ = scan_folder(tmp_path)
    data = ImageSet(samples, 3, DataConfig(resize="none", workers=1), 4, train=True)
    assert len(data) == len(MALFORMED_EXIF)


def test_link_loops_fifos_and_non_utf8_names_are_skipped_with_one_line(tmp_path, caplog):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "good.png")
    os.symlink("loop.png", tmp_path / "loop.png")
    os.symlink("missing.png", tmp_path / "dangling.png")
    os.mkfifo(tmp_path / "fifo.png")  # opening it would block forever
    with open(os.fsencode(tmp_path) + b"/caf\xe9.png", "wb") as f:
        f.write((tmp_path / "good.png").read_bytes())
    lines = []
    samples, _, _ = scan_folder(tmp_path, report=lines.append)
    assert [s.rel.name for s in samples] == ["good.png"]
    assert sorted(lines) == [
        f"skipped {tmp_path}/caf\\xe9.png: file name is not valid UTF-8; rename the file",
        f"skipped {tmp_path}/dangling.png: symbolic link that cannot be followed (No such file or directory)",
        f"skipped {tmp_path}/fifo.png: not a regular file",
        f"skipped {tmp_path}/loop.png: symbolic link that cannot be followed (Too many levels of symbolic links)",
    ]
    for line in lines:
        line.encode("utf-8")  # printable as it is
    with pytest.raises(ImageError, match=r"loop.png: symbolic link"):
        load_image(tmp_path / "loop.png", 1)
    with pytest.raises(ImageError, match=r"loop.png: symbolic link"):
        scan_folder(tmp_path / "loop.png")


def test_a_non_utf8_name_is_named_once_in_a_compress_failure(tmp_path):
    from aekit.codec.core import CodecError, wrap_errors

    bad = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.png"))
    for exc in (ImageError(f"{tmp_path}/caf\\xe9.png: file name is not valid UTF-8; rename the file"),
                OSError("disk full"), CodecError("model refused it")):
        line = str(wrap_errors(bad, exc))
        line.encode("utf-8")  # printable as it is
        assert line.count("caf") == 1 and line.startswith(f"{tmp_path}/caf\\xe9.png: "), line


def test_a_folder_of_only_unusable_entries_says_so(tmp_path):
    os.symlink("a.png", tmp_path / "a.png")
    with pytest.raises(ImageError, match="no image files found \\(1 unusable image entries"):
        scan_folder(tmp_path, report=lambda line: None)


def test_32_bit_integer_tiff_is_refused_not_saturated(tmp_path):
    Image.fromarray(np.array([[0, 70_000], [1 << 30, 5]], np.int32)).save(tmp_path / "deep.tif")
    with pytest.raises(ImageError, match=r"deep.tif: 32-bit integer image \(values 0\.\.1073741824\)"):
        load_image(tmp_path / "deep.tif", 1)


def test_16_bit_tiff_is_scaled_by_its_depth(tmp_path):
    Image.fromarray(np.array([[0, 65535], [32768, 257]], np.uint16)).save(tmp_path / "d16.tif")
    arr, note = load_image(tmp_path / "d16.tif", 1)
    assert arr[..., 0].tolist() == [[0, 255], [128, 1]] and "16-bit" in note


@pytest.mark.parametrize("fmt,ext", [("PNG", ".png"), ("WEBP", ".webp"), ("TIFF", ".tif")])
def test_multi_frame_files_are_refused(tmp_path, fmt, ext):
    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (0, 200)]
    path = tmp_path / f"anim{ext}"
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:])
    with Image.open(path) as im:
        if getattr(im, "n_frames", 1) < 2:
            pytest.skip(f"this Pillow writes no multi-frame {fmt}")
    with pytest.raises(ImageError, match=rf"anim{ext}: {fmt} file with 2 frames"):
        load_image(path, 3)


def test_size_limit_is_its_own_error_type(tmp_path):
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(ImageLimitError, match="a.png: 20x20 = 400 pixels exceeds the limit of 100"):
        load_image(tmp_path / "a.png", 1, max_pixels=100)


def test_one_channel_rule(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(np.stack([gray] * 3, axis=2)).save(tmp_path / "graylike.png")  # RGB file, equal channels
    colour = np.stack([gray, gray, 255 - gray], axis=2)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    arr, mode = load_for_channels(tmp_path / "gray.png", 3)  # replicated, nothing lost
    assert arr.shape == (8, 8, 3) and mode == "L" and (arr[..., 2] == gray).all()
    arr, mode = load_for_channels(tmp_path / "graylike.png", 1)  # taken as gray, nothing lost
    assert arr.shape == (8, 8, 1) and mode == "L" and (arr[..., 0] == gray).all()
    assert load_for_channels(tmp_path / "graylike.png", 3)[1] == "RGB"
    with pytest.raises(ImageError, match="colour.png: RGB image but the model takes 1-channel.*drop colour"):
        load_for_channels(tmp_path / "colour.png", 1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=400), cut=st.integers(0, 2000))
def test_fuzz_any_bytes_give_an_image_or_one_image_error(tmp_path, data, cut):
    """Random EXIF payloads and truncated/corrupted image files: an array or ImageError, nothing else."""
    good = tmp_path / "base.jpg"
    if not good.exists():
        jpeg(good, MALFORMED_EXIF["rational_make"], size=(16, 16))
    base = good.read_bytes()
    for blob in (base[:cut] + data + base[cut + len(data):], None):
        path = tmp_path / "x.jpg"
        if blob is None:  # the payload as an EXIF block of a valid JPEG
            try:
                jpeg(path, b"Exif\x00\x00" + data)
            except Exception:
                continue  # Pillow refuses to write it: not an input
        else:
            path.write_bytes(blob)
        try:
            arr, _ = load_image(path, 3)
            assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
        except ImageError as e:
            assert "x.jpg" in str(e) and "\n" not in str(e)


# ---- §6: defaults follow the folder ------------------------------------------------------------

def small_folder(root: Path, n_gray: int, n_colour: int, side: int = 28) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n_gray):  # "a..." sorts first: the old rule looked at the first file only
        Image.fromarray(rng.integers(0, 255, (side, side), dtype=np.uint8)).save(root / f"a{i}.png")
    for i in range(n_colour):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(root / f"b{i}.png")
    return root


def test_channels_are_decided_from_the_whole_folder(tmp_path):
    from aekit.cli import folder_defaults

    (tmp_path / "g").mkdir(), (tmp_path / "m").mkdir()
    assert folder_defaults(str(small_folder(tmp_path / "g", 3, 0)), None, 0) == (1, 28)
    samples, _, _ = scan_folder(small_folder(tmp_path / "m", 1, 2))
    info = summarize(samples)
    assert (info.gray, info.colour, info.channels()) == (1, 2, 3)
    assert "2 colour and 1 grayscale" in info.describe()
    assert folder_defaults(str(tmp_path / "m"), None, 0) == (3, 28)
    assert folder_defaults(str(tmp_path / "m"), 1, 64) == (1, 64)  # asked for: kept


def test_small_images_train_at_their_own_size(tmp_path):
    samples, _, _ = scan_folder(small_folder(tmp_path, 4, 0, side=28))
    cfg = DataConfig(workers=1)
    assert cfg.size == 0 and cfg.resize == "scale-crop"
    data = ImageSet(samples, 1, cfg, 4, train=True)
    assert cfg.size == 28 and {data.image(i).shape for i in range(len(data))} == {(28, 28, 1)}
    big = tmp_path / "big"
    big.mkdir()
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(big / "x.png")
    samples, _, _ = scan_folder(big)
    assert summarize(samples).auto_size() == 256  # large images are still scaled down to 256


def test_train_cli_prints_and_records_its_choices(tmp_path, capsys):
    pytest.importorskip("torch")
    from aekit.cli import main

    (tmp_path / "d").mkdir()
    small_folder(tmp_path / "d", 2, 6, side=28)
    rc = main(["train", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--epochs", "1", "--width", "4",
               "--batch-size", "4", "--threads", "1", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0
    assert "channels 3 (RGB): 6 colour and 2 grayscale images" in err
    assert "training side 28 (the smallest image side is 28" in err
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"]["channels"] == 3 and cfg["train"]["data_cfg"]["size"] == 28


@pytest.mark.parametrize("where", ["building the command line", "inside a library's own error"])
def test_a_sigterm_at_any_moment_is_one_line_and_exit_143(where, monkeypatch, capsys):
    """A SIGTERM while the parser is built (before _main's handlers) or that a library wraps in an error of its own
    (onnxruntime's start-up: `ImportError: initialization failed`) is still `aekit: terminated`, exit 143."""
    import signal

    import aekit.cli as c

    def sigterm_now(*a, **kw):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler main() installed raises Terminated here
        raise AssertionError("SIGTERM was not handled")

    def wrapped(args):
        try:
            sigterm_now()
        except BaseException as e:
            raise ImportError("initialization failed") from e

    if where == "building the command line":
        monkeypatch.setattr(c, "build_parser", sigterm_now)
    else:
        monkeypatch.setattr(c, "cmd_data", wrapped)
    before = signal.getsignal(signal.SIGTERM)
    assert c.main(["data", "samples", "unused"]) == 143
    assert capsys.readouterr().err.splitlines()[-1] == "aekit: terminated"
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back


def test_closed_stdout_ends_quietly():
    """`aekit ... | head`: exit 141 as after SIGPIPE, no BrokenPipeError traceback."""
    code = ("import sys, aekit.cli as c\n"
            "c.cmd_data = lambda args: print('x' * 1_000_000) or 0\n"
            "sys.exit(c.main(['data', 'samples', 'unused']))")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before anything is written
    err = p.stderr.read().decode()
    assert p.wait() == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err
