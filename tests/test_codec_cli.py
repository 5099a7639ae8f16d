"""`aekit compress/decompress/evaluate` in-process: folder jobs, bad inputs, resume, safety."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aekit.cli import main


def tree_hash(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def src_tree(tmp_path, gray_dir) -> Path:
    """A nested folder of 24 real images plus a stray text file."""
    src = tmp_path / "src"
    for cls in ("coins", "text"):
        for i, p in enumerate(sorted((gray_dir / "test" / cls).glob("*.png"))[:12]):
            d = src / cls / ("deep" if i % 3 == 0 else "")
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, d / p.name)
    (src / "notes.txt").write_text("not an image")
    return src


def run(*argv: str) -> int:
    return main([str(a) for a in argv])


def test_compress_decompress_tree(tiny_model, src_tree, tmp_path, capsys):
    model = tiny_model(1, 4)
    before = tree_hash(src_tree)
    assert run("compress", src_tree, "-m", model, "-o", tmp_path / "lat") == 0
    err = capsys.readouterr().err
    assert "compressed 24 files, skipped 0 existing, 0 failed, ignored 1 other file;" in err
    lats = sorted(p.relative_to(tmp_path / "lat") for p in (tmp_path / "lat").rglob("*.ael"))
    imgs = sorted(p.relative_to(src_tree) for p in src_tree.rglob("*.png"))
    assert lats == [Path(str(p) + ".ael") for p in imgs]  # mirrored tree
    assert run("decompress", tmp_path / "lat", "-o", tmp_path / "dec", "-m", model.parent) == 0
    decs = sorted(p.relative_to(tmp_path / "dec") for p in (tmp_path / "dec").rglob("*.png"))
    assert decs == imgs
    with Image.open(tmp_path / "dec" / imgs[0]) as im:
        assert im.mode == "L" and im.size == (28, 28)
    assert tree_hash(src_tree) == before  # sources never touched
    assert not list(tmp_path.rglob("*.part"))


def test_resume_skips_existing_and_overwrite_replaces(tiny_model, src_tree, tmp_path, capsys):
    model, out = tiny_model(1, 4), tmp_path / "lat"
    assert run("compress", src_tree, "-m", model, "-o", out) == 0
    files = sorted(out.rglob("*.ael"))
    stamp = {p: p.stat().st_mtime_ns for p in files}
    files[0].unlink()
    files[5].unlink()
    capsys.readouterr()
    assert run("compress", src_tree, "-m", model, "-o", out) == 0
    assert "compressed 2 files, skipped 22 existing" in capsys.readouterr().err
    assert all(p.stat().st_mtime_ns == stamp[p] for p in files if p not in (files[0], files[5]))
    assert run("compress", src_tree, "-m", model, "-o", out, "--overwrite") == 0
    assert "compressed 24 files, skipped 0 existing" in capsys.readouterr().err


def test_jobs_never_replace_files_they_did_not_write(tiny_model, src_tree, tmp_path, capsys):
    """Decompressing into the folder of the originals, compressing a file onto itself or onto someone
    else's file: each such output fails with one line and is left as it was (exit 2); --overwrite replaces
    files without a ledger record, never a source itself. An output whose record a killed run never wrote
    (only its write-ahead intent line) is still redone on resume."""
    from aekit.codec.jobs import LEDGER

    model, lat = tiny_model(1, 4), tmp_path / "lat"
    coins = src_tree / "coins"
    assert run("compress", coins, "-m", model, "-o", lat) == 0
    orig = tmp_path / "orig"
    shutil.copytree(coins, orig)
    before = tree_hash(orig)
    capsys.readouterr()
    assert run("decompress", lat, "-o", orig, "-m", model.parent) == 2
    err = capsys.readouterr().err
    assert "decompressed 0 files, skipped 0 existing, 12 failed" in err
    assert "exists and was not written by an aekit job here" in err and "--overwrite replaces it" in err
    assert tree_hash(orig) == before  # the originals are untouched
    assert run("decompress", lat, "-o", orig, "-m", model.parent, "--overwrite") == 0  # asked for: replaced
    assert tree_hash(orig) != before

    one = tmp_path / "one.png"
    shutil.copy(next(coins.glob("*.png")), one)
    data = one.read_bytes()
    for extra in ([], ["--overwrite"]):
        assert run("compress", one, "-m", model, "-o", one, *extra) == 2
        assert "is the source itself" in capsys.readouterr().err and one.read_bytes() == data
    other = tmp_path / "other.ael"
    other.write_bytes(b"someone else's file")
    assert run("compress", one, "-m", model, "-o", other) == 2
    assert other.read_bytes() == b"someone else's file"

    # killed between an output landing and its record: the intent line written before it makes it ours
    first = sorted(lat.rglob("*.ael"))[0]
    key = str(first.relative_to(lat))
    lines = [ln for ln in (lat / LEDGER).read_text().splitlines() if json.loads(ln)["out"] != key]
    (lat / LEDGER).write_text("".join(ln + "\n" for ln in lines) + json.dumps({"intent": True, "out": key}) + "\n")
    capsys.readouterr()
    assert run("compress", coins, "-m", model, "-o", lat) == 0
    assert "compressed 1 file (redid 1 stale), skipped 11 existing, 0 failed" in capsys.readouterr().err
    recs = [json.loads(ln) for ln in (lat / LEDGER).read_text().splitlines()]
    assert len(recs) == 12 and not any(r.get("intent") for r in recs)  # compacted: whole records only


def test_bad_output_folder_empty_source_and_option_bounds(tiny_model, src_tree, tmp_path, capsys, monkeypatch):
    """A folder job whose -o is a file or cannot be written fails at once with one line (no file encoded); a source folder
    without a single image warns; budgets and counts below their bounds are usage errors (exit 2)."""
    model = tiny_model(1, 4)
    (tmp_path / "taken.txt").write_text("x")
    assert run("compress", src_tree, "-m", model, "-o", tmp_path / "taken.txt") == 2
    err = capsys.readouterr().err
    assert "taken.txt: exists and is not a folder" in err and "compressed" not in err
    locked = tmp_path / "locked"  # an output folder that cannot be written (chmod does not stop root: simulated)
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    assert run("compress", src_tree, "-m", model, "-o", locked) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{locked}: not writable" in err and ".part" not in err and not any(locked.iterdir())
    assert run("compress", src_tree, "-m", model, "-o", locked / "sub") == 2
    assert f"cannot be made: {locked} is not writable" in capsys.readouterr().err
    assert run("evaluate", src_tree, "-m", model, "-o", locked) == 2  # at once, not after the evaluation
    assert f"-o {locked}: not writable" in capsys.readouterr().err
    monkeypatch.undo()
    empty = tmp_path / "notes"
    empty.mkdir()
    (empty / "a.txt").write_text("no images here")
    assert run("compress", empty, "-m", model, "-o", tmp_path / "lat") == 0
    assert "warning: " in (err := capsys.readouterr().err) and "no images found (1 other file ignored)" in err
    assert not (tmp_path / "lat").exists()  # nothing to write: no output folder made either
    (tmp_path / "lat").mkdir()
    assert run("decompress", tmp_path / "lat", "-o", tmp_path / "dec", "-m", tmp_path / "no-such-models") == 2
    assert "no-such-models: no such model or folder" in capsys.readouterr().err
    for opt, value in (("--memory-mb", "1"), ("--workers", "-1"), ("--batch-size", "0")):
        with pytest.raises(SystemExit) as e:
            run("compress", src_tree, "-m", model, "-o", tmp_path / "x", opt, value)
        assert e.value.code == 2 and opt in capsys.readouterr().err


def test_interrupted_run_leaves_no_partial_files_and_resumes(tiny_model, src_tree, tmp_path, monkeypatch):
    from aekit.codec.core import Codec

    model, out = tiny_model(1, 4), tmp_path / "lat"
    real, calls = Codec.symbols, []

    def flaky(self, images, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, images, **kw)

    monkeypatch.setattr(Codec, "symbols", flaky)
    assert run("compress", src_tree, "-m", model, "-o", out, "--batch-size", "4") == 130
    done = list(out.rglob("*.ael"))
    assert 0 < len(done) < 24 and not list(out.rglob("*.part"))
    monkeypatch.setattr(Codec, "symbols", real)
    assert run("compress", src_tree, "-m", model, "-o", out) == 0
    assert len(list(out.rglob("*.ael"))) == 24


def test_bad_inputs_one_line_each_rest_processed(tiny_model, src_tree, tmp_path, photos_dir, capsys):
    model = tiny_model(1, 4)
    (src_tree / "coins" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (src_tree / "coins" / "text.jpg").write_text("hello, I am not a JPEG")
    shutil.copy(photos_dir / "astronaut.png", src_tree / "text" / "colour.png")  # RGB into a gray model
    Image.new("1", (14000, 13000)).save(src_tree / "text" / "bomb.png")  # 182 Mpx > Pillow's limit
    capsys.readouterr()
    assert run("compress", src_tree, "-m", model, "-o", tmp_path / "lat") == 2
    err = capsys.readouterr().err
    failed = [ln for ln in err.splitlines() if ln.startswith("failed: ")]
    assert len(failed) == 4, err
    for name, why in (("broken.png", "cannot decode image"), ("text.jpg", "cannot decode image"),
                      ("colour.png", "refusing to drop colour"), ("bomb.png", "decompression bomb")):
        assert any(name in ln and why in ln for ln in failed), (name, failed)
    assert "compressed 24 files, skipped 0 existing, 4 failed" in err


def test_decompress_bad_latents_and_model_search(tiny_model, src_tree, tmp_path, capsys, monkeypatch):
    model, lat = tiny_model(1, 4), tmp_path / "lat"
    assert run("compress", src_tree, "-m", model, "-o", lat) == 0
    good = sorted(lat.rglob("*.ael"))
    data = good[0].read_bytes()
    (lat / "truncated.png.ael").write_bytes(data[: len(data) // 2])
    (lat / "flipped.png.ael").write_bytes(data[:-3] + bytes([data[-3] ^ 4]) + data[-2:])
    (lat / "foreign.png.ael").write_bytes(b"PK\x03\x04" + b"\x00" * 60)
    (lat / "future.png.ael").write_bytes(data[:4] + b"\x09" + data[5:])
    other = tiny_model(3, 4)  # a real model file whose model is not on the search path
    from aekit.codec.core import Codec

    (lat / "unknown.png.ael").write_bytes(Codec(other).compress(np.zeros((8, 8, 3), np.uint8)))
    capsys.readouterr()
    monkeypatch.setenv("AEKIT_MODELS", str(model))  # found through $AEKIT_MODELS, no -m
    monkeypatch.chdir(tmp_path)
    assert run("decompress", lat, "-o", tmp_path / "dec") == 2
    err = capsys.readouterr().err
    failed = [ln for ln in err.splitlines() if ln.startswith("failed: ")]
    expect = {"truncated": "truncated file", "flipped": "checksum mismatch", "foreign": "not an aekit latent file",
              "future": "version 9 is not supported", "unknown": "not found in"}
    assert len(failed) == len(expect), err
    for name, why in expect.items():
        assert any(f"{name}.png.ael" in ln and why in ln for ln in failed), (name, failed)
    assert len(list((tmp_path / "dec").rglob("*.png"))) == 24


def test_single_files(tiny_model, gray_dir, tmp_path, capsys):
    model = tiny_model(1, 9)
    src = next((gray_dir / "test").rglob("*.png"))
    assert run("compress", src, "-m", model, "-o", tmp_path / "one.ael") == 0
    assert run("compress", src, "-m", model, "-o", tmp_path / "one.ael") == 0
    assert "skipped 1 existing" in capsys.readouterr().err  # refuses to overwrite unless asked
    assert run("decompress", tmp_path / "one.ael", "-o", tmp_path / "one.png", "-m", model) == 0
    assert Image.open(tmp_path / "one.png").size == (28, 28)
    assert run("compress", tmp_path / "nope.png", "-m", model, "-o", tmp_path / "x.ael") == 2
    capsys.readouterr()
    assert run("compress", src, "-m", model, "-o", tmp_path / "looks.png") == 0  # written, but said
    assert f"warning: {tmp_path / 'looks.png'}: a latent file (.ael) is written under an image's name" in \
        capsys.readouterr().err
    assert (tmp_path / "looks.png").read_bytes() == (tmp_path / "one.ael").read_bytes()


def test_runtime_commands_do_not_import_torch(tiny_model, gray_dir, tmp_path):
    model = tiny_model(1, 4)
    src = next((gray_dir / "test").rglob("*.png"))
    code = (
        "import sys; from aekit.cli import main\n"
        f"assert main(['compress', {str(src)!r}, '-m', {str(model)!r}, '-o', {str(tmp_path / 'a.ael')!r}]) == 0\n"
        f"assert main(['decompress', {str(tmp_path / 'a.ael')!r}, '-o', {str(tmp_path / 'a.png')!r}, "
        f"'-m', {str(model)!r}]) == 0\n"
        "from codec import read_latents\n"
        f"read_latents({str(tmp_path / 'a.ael')!r}, [{str(model)!r}])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert r.returncode == 0, r.stderr


def test_evaluate_skips_colour_images_for_every_curve_with_a_gray_model(tiny_model, gray_dir, photos_dir, tmp_path,
                                                                      capsys):
    """A gray model refuses colour images; evaluate then leaves them out of every curve (JPEG's too) and says
    so, instead of comparing the model on some images with JPEG on all; a folder with nothing left is one line."""
    src = tmp_path / "mixed"
    src.mkdir()
    for p in sorted((gray_dir / "test").rglob("*.png"))[:3]:
        shutil.copy(p, src / p.name)
    shutil.copy(photos_dir / "astronaut.png", src / "astronaut.png")
    assert run("evaluate", src, "-m", tiny_model(1, 4), "-o", tmp_path / "ev", "--levels", "256") == 0
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert res["images"] == 3 and res["skipped_rgb"] == 1
    assert "1 colour image(s) skipped for every model and baseline" in capsys.readouterr().err
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(photos_dir / "astronaut.png", only / "astronaut.png")
    assert run("evaluate", only, "-m", tiny_model(1, 4), "-o", tmp_path / "ev2") == 2
    assert "no images to evaluate (1 colour images skipped)" in capsys.readouterr().err
    assert run("evaluate", src, "-m", tiny_model(1, 4), "-o", src / "astronaut.png") == 2  # -o is a file: at once
    assert "-o " in (err := capsys.readouterr().err) and "exists and is not a folder" in err


def test_evaluate_writes_json_markdown_and_plot(tiny_model, gray_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert run("evaluate", gray_dir / "test", "-m", tiny_model(1, 4), "-m", tiny_model(1, 9),
               "-o", out, "--limit", "40", "--tile", "12") == 0
    r = json.loads((out / "results.json").read_text())
    assert r["images"] == 40 and r["msssim_scales"] == [2] and len(r["models"]) == 2
    for m in r["models"]:
        assert 30 < m["mean_bytes"] < 250 and 5 < m["psnr"] < 60 and 0 < m["msssim"] <= 1
        assert "webp_at_equal_bytes" in m and "seam_cost_psnr_db" in m["tiled"]
    assert len(r["sweeps"]["JPEG"]) == len(r["sweeps"]["WEBP"]) >= 10
    assert (out / "results.md").read_text().count("|") > 50
    assert (out / "rd.png").read_bytes()[:4] == b"\x89PNG"
