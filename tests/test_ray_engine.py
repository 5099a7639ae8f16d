"""`--engine ray` on a local Ray cluster (2 CPUs, one per test module): compress, decompress and
screen give byte-identical files and identical scores to the local engine; failures are reported
per file; reruns resume with the local engine's ledger (stale outputs redone, the same decisions as
the local engine). Skipped when Ray is not installed (extra aekit[ray])."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aekit.cli import main
from aekit.codec.jobs import LEDGER
from conftest import killed_screen

ray = pytest.importorskip("ray", reason="Ray not installed: pip install -e '.[ray]' (extra aekit[ray])")
pytestmark = pytest.mark.slow  # a local Ray cluster: seconds to start, actors per test


@pytest.fixture(scope="module")
def src_tree(gray_dir, photos_dir, tmp_path_factory) -> Path:
    """40 gray 28x28 images in two class folders, a gray photo (512x512), an RGB photo (refused
    by a gray model) and a corrupt file."""
    src = tmp_path_factory.mktemp("ray-src")
    for cls in ("coins", "moon"):
        (src / cls).mkdir()
        for p in sorted((gray_dir / "test" / cls).glob("*.png"))[:20]:
            shutil.copy(p, src / cls / p.name)
    shutil.copy(photos_dir / "camera.png", src / "coins" / "camera.png")
    shutil.copy(photos_dir / "astronaut.png", src / "moon" / "astronaut.png")
    (src / "moon" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return src


def tree(root: Path) -> dict[str, bytes]:
    """The outputs under root (the local engine's resume ledger, .aekit-outputs.jsonl, is not an output)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".aekit-outputs.jsonl"}


def failures(err: str) -> list[str]:
    return sorted(line for line in err.splitlines() if line.startswith("failed: "))


def test_compress_and_decompress_match_local_engine(ray_cluster, tiny_model, src_tree, tmp_path, capsys):
    model = tiny_model(1, 4)
    assert main(["compress", str(src_tree), "-m", str(model), "-o", str(tmp_path / "local")]) == 2
    local_err = capsys.readouterr().err
    assert main(["compress", str(src_tree), "-m", str(model), "-o", str(tmp_path / "ray"), "--engine", "ray"]) == 2
    ray_err = capsys.readouterr().err
    local, remote = tree(tmp_path / "local"), tree(tmp_path / "ray")
    assert len(local) == 41 and local == remote  # same names, byte-identical latent files
    assert failures(ray_err) == failures(local_err) and len(failures(ray_err)) == 2
    assert "broken.png: cannot decode image" in ray_err and "astronaut.png: RGB image" in ray_err
    assert "compressed 41 files, skipped 0 existing, 2 failed" in ray_err

    assert main(["decompress", str(tmp_path / "local"), "-o", str(tmp_path / "dl"), "-m", str(model)]) == 0
    assert main(["decompress", str(tmp_path / "local"), "-o", str(tmp_path / "dr"), "-m", str(model),
                 "--engine", "ray"]) == 0
    assert "decompressed 41 files" in capsys.readouterr().err
    assert tree(tmp_path / "dl") == tree(tmp_path / "dr") and len(tree(tmp_path / "dr")) == 41


def test_rerun_resumes_and_leaves_existing_outputs(ray_cluster, tiny_model, src_tree, tmp_path, capsys):
    model, out = tiny_model(1, 4), tmp_path / "ray"
    args = ["compress", str(src_tree), "-m", str(model), "-o", str(out), "--engine", "ray"]
    assert main(args) == 2
    first = tree(out)
    gone = sorted(out.rglob("*.ael"))[:5]
    kept = {p: p.stat().st_mtime_ns for p in sorted(out.rglob("*.ael"))[5:]}
    for p in gone:
        p.unlink()
    capsys.readouterr()
    assert main(args) == 2  # the two bad files still fail
    err = capsys.readouterr().err
    assert "compressed 5 files, skipped 36 existing, 2 failed" in err
    assert tree(out) == first
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # existing outputs not rewritten
    assert not [p for p in out.rglob("*") if p.name.startswith(".") and p.name != LEDGER]  # no temp files left
    assert main(args + ["--overwrite"]) == 2
    assert "compressed 41 files, skipped 0 existing" in capsys.readouterr().err


def test_ray_never_replaces_files_it_did_not_write(ray_cluster, tiny_model, src_tree, tmp_path, capsys):
    """As the local engine: decompressing into the originals' folder fails each file with one line and
    leaves the originals as they were, unless --overwrite."""
    model, lat, orig = tiny_model(1, 4), tmp_path / "lat", tmp_path / "orig"
    shutil.copytree(src_tree / "coins", orig, ignore=shutil.ignore_patterns("camera.png"))  # 20 small images
    assert main(["compress", str(orig), "-m", str(model), "-o", str(lat), "--engine", "ray"]) == 0
    before = tree(orig)
    capsys.readouterr()
    assert main(["decompress", str(lat), "-o", str(orig), "-m", str(model.parent), "--engine", "ray"]) == 2
    err = capsys.readouterr().err
    assert "decompressed 0 files, skipped 0 existing, 20 failed" in err and "was not written by an aekit job" in err
    assert tree(orig) == before


def summary(err: str) -> str:
    return [ln for ln in err.splitlines() if " files" in ln and "skipped" in ln][-1]


def mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*.ael")}


def test_kill_and_resume_redoes_stale_outputs_as_the_local_engine(ray_cluster, tiny_model, src_tree, tmp_path,
                                                                  capsys):
    """What a killed run leaves (a temp file, an output whose record never landed, a torn ledger
    line), a changed source and a deleted output: Ray redoes the stale and missing outputs, skips
    (never rewrites) the rest, and the local engine on a copy of the folder decides the same."""
    src, out, model = tmp_path / "src", tmp_path / "out", tiny_model(1, 4)
    shutil.copytree(src_tree / "coins", src, ignore=shutil.ignore_patterns("camera.png"))  # 20 small images
    args = ["compress", str(src), "-m", str(model), "-o", str(out)]
    assert main(args + ["--engine", "ray"]) == 0
    recs = (out / LEDGER).read_text().splitlines()
    assert len(recs) == 20 and summary(capsys.readouterr().err).startswith("compressed 20 files, skipped 0")

    names = sorted(mtimes(out))
    changed = src / names[0].removesuffix(".ael")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(changed)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime even on coarse clocks
    unrecorded = json.loads(recs[1])["out"]  # killed between writing it and recording it: only its intent line
    (out / LEDGER).write_text("".join(r + "\n" for r in recs if json.loads(r)["out"] != unrecorded)
                              + json.dumps({"intent": True, "out": unrecorded}) + "\n" + recs[1][:25])
    (out / names[2]).unlink()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a PID that no longer runs
    part = out / f".{names[3]}.{dead.pid}-abc123.part"
    part.write_bytes(b"half a file")
    local = tmp_path / "local"
    shutil.copytree(out, local)
    before = mtimes(out)

    assert main(args + ["--engine", "ray"]) == 0
    ray_summary = summary(capsys.readouterr().err)
    assert main(["compress", str(src), "-m", str(model), "-o", str(local)]) == 0
    local_summary = summary(capsys.readouterr().err)
    assert ray_summary.startswith("compressed 3 files (redid 2 stale), skipped 17 existing, 0 failed")
    assert local_summary.startswith("compressed 3 files (redid 2 stale), skipped 17 existing, 0 failed")
    assert tree(out) == tree(local)
    after = mtimes(out)
    assert sorted(n for n in after if after[n] != before.get(n)) == sorted([names[0], unrecorded, names[2]])
    assert not part.exists() and not [p for p in out.rglob(".*") if p.name != LEDGER]
    assert len((out / LEDGER).read_text().splitlines()) == 20  # compacted, one line per output

    # other settings: every output is stale under either engine, and the ledger is shared both ways
    assert main(args + ["--engine", "ray", "--levels", "16"]) == 0
    assert summary(capsys.readouterr().err).startswith("compressed 20 files (redid 20 stale), skipped 0")
    assert main(args + ["--levels", "16"]) == 0
    assert summary(capsys.readouterr().err).startswith("compressed 0 files, skipped 20 existing")

    # decompress: resumes by the same ledger, and a local run after a Ray run skips everything
    dec = ["decompress", str(out), "-o", str(tmp_path / "dec"), "-m", str(model)]
    assert main(dec + ["--engine", "ray"]) == 0
    capsys.readouterr()
    assert main(dec + ["--engine", "ray"]) == 0
    assert summary(capsys.readouterr().err).startswith("decompressed 0 files, skipped 20 existing")
    assert main(dec) == 0
    assert summary(capsys.readouterr().err).startswith("decompressed 0 files, skipped 20 existing")


def test_ledger_on_object_storage_urls():
    """The Ray ledger on fsspec's memory filesystem (object-store semantics, in this process):
    written at the end, read back, a changed object or another recipe makes its output stale."""
    fsspec = pytest.importorskip("fsspec")
    from aekit.codec.ray_jobs import RayLedger
    from aekit.export.engine_ray import list_tree

    fs = fsspec.filesystem("memory")
    if fs.exists("/led"):
        fs.rm("/led", recursive=True)
    for name in ("a/x.png", "b/y.png"):
        fs.pipe_file(f"/led/src/{name}", b"data")

    def plan(recipe: dict):
        ledger = RayLedger("memory://led/src", "memory://led/out", recipe)
        listing = list_tree("memory://led/src", "memory://led/out", lambda r: r.endswith(".png"),
                            lambda r: r + ".ael", fresh=ledger.is_fresh)
        return ledger, listing

    ledger, listing = plan({"job": "compress"})
    assert (len(listing.todo), listing.skipped, listing.stale) == (2, 0, 0)
    for _, _, out in listing.todo:
        fs.pipe_file(out, b"latent")
        ledger.done(out)
    ledger.compact()
    recs = [json.loads(r) for r in fs.cat_file(f"/led/out/{LEDGER}").decode().splitlines()]
    assert [r["out"] for r in recs] == ["a/x.png.ael", "b/y.png.ael"]
    assert recs[0]["src"] == "memory:///led/src/a/x.png" and recs[0]["size"] == 4
    _, listing = plan({"job": "compress"})
    assert (len(listing.todo), listing.skipped, listing.stale) == (0, 2, 0)
    time.sleep(0.01)
    fs.pipe_file("/led/src/a/x.png", b"other data")
    _, listing = plan({"job": "compress"})
    assert [t[0] for t in listing.todo] == ["memory://led/src/a/x.png"] and (listing.skipped, listing.stale) == (1, 1)
    _, listing = plan({"job": "compress", "levels": 16})
    assert (len(listing.todo), listing.skipped, listing.stale) == (2, 0, 2)


def test_screen_matches_local_engine(ray_cluster, tiny_model, gray_dir, src_tree, tmp_path, capsys):
    det = tmp_path / "det"
    shutil.copytree(tiny_model(1, 4), det)
    cal = tmp_path / "cal"
    for cls in ("coins", "moon"):
        shutil.copytree(gray_dir / "train" / cls, cal / cls)
    assert main(["calibrate", str(det), str(cal), "--alpha", "0.1", "--device", "cpu"]) == 0
    base = ["screen", str(det), str(src_tree), "--device", "cpu"]
    rc_local = main(base + ["--out", str(tmp_path / "local")])
    rc_ray = main(base + ["--out", str(tmp_path / "ray"), "--engine", "ray"])
    assert rc_local == rc_ray == 2  # two unusable files
    recs = [{r["path"]: r for r in map(json.loads, (tmp_path / f"{k}.jsonl").read_text().splitlines())}
            for k in ("local", "ray")]
    assert len(recs[0]) == 43 and recs[0] == recs[1]  # identical scores, p-values, flags, errors
    assert sum(r["error"] is not None for r in recs[1].values()) == 2
    summaries = [json.loads((tmp_path / f"{k}.summary.json").read_text()) for k in ("local", "ray")]
    assert summaries[0] == summaries[1]
    assert "broken.png" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    for engine in ([], ["--engine", "ray"]):  # no image: a warning, nothing written, exit 0 on both engines
        out = tmp_path / "none" / ("ray" if engine else "local")
        assert main(["screen", str(det), str(empty), "--class", "coins", "--out", str(out)] + engine) == 0
        assert "no image files found (0 other files ignored); nothing was screened" in capsys.readouterr().err
        assert not (tmp_path / "none").exists()


def test_screen_resumes_a_killed_screen_as_the_local_engine(ray_cluster, tiny_model, gray_dir, src_tree, tmp_path,
                                                            capsys, monkeypatch):
    """A killed screen's temp file (complete records, a torn last one) and a source touched since:
    the Ray rerun reuses the valid records, scores only the rest and ends with the local records."""
    import aekit.detector.ray_jobs as rj

    det, src = tmp_path / "det", tmp_path / "src"
    shutil.copytree(tiny_model(1, 4), det)
    shutil.copytree(src_tree, src)
    cal = tmp_path / "cal"
    for cls in ("coins", "moon"):
        shutil.copytree(gray_dir / "train" / cls, cal / cls)
    assert main(["calibrate", str(det), str(cal), "--alpha", "0.1", "--device", "cpu"]) == 0
    base = ["screen", str(det), str(src), "--device", "cpu"]
    assert main(base + ["--out", str(tmp_path / "fresh")]) == 2
    killed, lines, _, _ = killed_screen(tmp_path, Path(f"{tmp_path / 'fresh'}.jsonl"))
    half = len(lines) // 2
    touched = Path(json.loads(lines[0])["path"])
    os.utime(touched, (time.time() + 5, time.time() + 5))  # changed after the killed run started
    reusable = sum(json.loads(x)["error"] is None for x in lines[1:half])
    todo = []
    real = rj.run_files

    def counting(job, listing, rcfg):
        todo.append(len(listing.todo))
        return real(job, listing, rcfg)

    monkeypatch.setattr(rj, "run_files", counting)
    assert main(base + ["--out", str(tmp_path / "k"), "--engine", "ray"]) == 2
    assert not killed.exists() and todo == [len(lines) - reusable]  # errors are retried, never reused
    recs = [{r["path"]: r for r in map(json.loads, Path(f"{tmp_path / k}.jsonl").read_text().splitlines())}
            for k in ("fresh", "k")]
    assert recs[0] == recs[1]
    assert json.loads(Path(f"{tmp_path / 'fresh'}.summary.json").read_text()) == \
        json.loads(Path(f"{tmp_path / 'k'}.summary.json").read_text())
    capsys.readouterr()


def test_listing_and_writing_through_fsspec_urls():
    """Object-store semantics without a cloud: fsspec's memory filesystem (in this process)."""
    fsspec = pytest.importorskip("fsspec")
    from aekit.export.engine_ray import list_tree, write_bytes

    fs = fsspec.filesystem("memory")
    for name in ("a/x.png", "a/.hidden.png", "b/y.jpg", "notes.txt"):
        fs.pipe_file(f"/src/{name}", b"data")
    fs.pipe_file("/out/a/x.png.ael", b"old")
    listing = list_tree("memory://src", "memory://out", lambda r: r.endswith((".png", ".jpg")),
                        lambda r: r + ".ael")
    assert [t[0] for t in listing.todo] == ["memory://src/b/y.jpg"]
    assert listing.todo[0][2] == "/out/b/y.jpg.ael"
    assert (listing.skipped, listing.ignored) == (1, 1)
    assert write_bytes(fs, "/out/b/y.jpg.ael", b"latent") == 6
    assert fs.cat_file("/out/b/y.jpg.ael") == b"latent"


def test_local_engine_never_imports_ray(tiny_model, src_tree, tmp_path):
    code = ("import sys; from aekit.cli import main\n"
            f"rc = main(['compress', {str(src_tree / 'coins')!r}, '-m', {str(tiny_model(1, 4))!r}, "
            f"'-o', {str(tmp_path / 'out')!r}])\n"
            "print(rc, 'ray' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "False", "False"]


def test_missing_ray_is_one_clear_line(tiny_model, src_tree, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    import aekit.export.engine_ray as er

    with pytest.raises(er.EngineError, match=r"aekit\[ray\]"):
        er.connect(er.RayConfig())
