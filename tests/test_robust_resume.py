"""Issue 14 §4: resume redoes stale outputs, name clashes are reported on every run, temp files
of a killed run are cleaned, writes are fsynced, and export --force keeps a calibration.

Sources are small synthetic images made here; the model is the session's tiny exported one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from aekit.cli import main
from aekit.codec.jobs import LEDGER
from aekit.images import atomic_write_bytes, remove_stale_parts


def run(*argv) -> int:
    return main([str(a) for a in argv])


def make_sources(root: Path, n: int = 6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root / ("sub" if i % 2 else "")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(d / f"im{i}.png")
    return root


def summary(capsys) -> str:
    return [ln for ln in capsys.readouterr().err.splitlines() if " files" in ln and "skipped" in ln][-1]


def mtimes(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*.ael")}


def test_resume_redoes_what_is_stale(tiny_model, tmp_path, capsys):
    model, src, out = tiny_model(1, 4), make_sources(tmp_path / "src"), tmp_path / "lat"
    assert run("compress", src, "-m", model, "-o", out) == 0
    assert (out / LEDGER).is_file()
    capsys.readouterr()
    assert run("compress", src, "-m", model, "-o", out) == 0
    assert "compressed 0 files, skipped 6 existing" in summary(capsys)

    # a changed source: its output alone is redone
    before = mtimes(out)
    changed = src / "sub" / "im1.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(changed)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime even on coarse clocks
    assert run("compress", src, "-m", model, "-o", out) == 0
    assert "compressed 1 file (redid 1 stale), skipped 5 existing" in summary(capsys)
    after = mtimes(out)
    assert [p.name for p in after if after[p] != before[p]] == ["im1.png.ael"]

    # other settings (levels) or another model: everything is redone
    assert run("compress", src, "-m", model, "-o", out, "--levels", "16") == 0
    assert "compressed 6 files (redid 6 stale), skipped 0 existing" in summary(capsys)
    assert run("compress", src, "-m", model, "-o", out, "--levels", "16") == 0
    assert "skipped 6 existing" in summary(capsys)
    assert run("compress", src, "-m", tiny_model(1, 9), "-o", out, "--levels", "16") == 0
    assert "redid 6 stale" in summary(capsys)

    # a killed run's last records torn or missing: their intent lines (written before the outputs) make
    # the outputs ours, so they are redone, never trusted
    lines = (out / LEDGER).read_text().splitlines()
    assert len(lines) == 6  # compacted: one line per output
    intents = "".join(json.dumps({"intent": True, "out": json.loads(ln)["out"]}) + "\n" for ln in lines[4:])
    (out / LEDGER).write_text("\n".join(lines[:4]) + "\n" + intents + lines[4][:20])
    assert run("compress", src, "-m", tiny_model(1, 9), "-o", out, "--levels", "16") == 0
    assert "compressed 2 files (redid 2 stale), skipped 4 existing" in summary(capsys)

    # the ledger lost: the outputs are nobody's as far as a job can tell, so they are left alone (one line
    # each, exit 2) until --overwrite
    (out / LEDGER).unlink()
    before = mtimes(out)
    assert run("compress", src, "-m", tiny_model(1, 9), "-o", out, "--levels", "16") == 2
    assert "compressed 0 files, skipped 0 existing, 6 failed" in summary(capsys) and mtimes(out) == before
    assert run("compress", src, "-m", tiny_model(1, 9), "-o", out, "--levels", "16", "--overwrite") == 0


def test_two_sources_one_output_reported_on_every_run(tiny_model, tmp_path, capsys):
    model, src = tiny_model(1, 4), make_sources(tmp_path / "src", 2)
    png = (src / "im0.png").read_bytes()
    Image.open(src / "im0.png").save(src / "scan.jpg", quality=95)
    (src / "scan.png").write_bytes(png)
    lat, dec = tmp_path / "lat", tmp_path / "dec"
    assert run("compress", src, "-m", model, "-o", lat) == 0
    for attempt in range(2):  # scan.jpg.ael and scan.png.ael both decode to scan.png
        capsys.readouterr()
        assert run("decompress", lat, "-o", dec, "-m", model) == 2, attempt
        err = capsys.readouterr().err
        assert "scan.png.ael: its output scan.png is already the output of scan.jpg.ael" in err, (attempt, err)
    assert run("decompress", lat, "-o", tmp_path / "same", "-m", model, "--format", "same") == 0


def test_temp_files_of_a_killed_run_are_removed(tiny_model, tmp_path, capsys):
    model, src, out = tiny_model(1, 4), make_sources(tmp_path / "src"), tmp_path / "lat"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a PID that no longer runs (reuse within the test is vanishingly unlikely)
    (out / "sub").mkdir(parents=True)
    killed = out / "sub" / f".im1.png.ael.{dead.pid}-abc123.part"
    killed.write_bytes(b"half a file")
    old = out / ".im0.png.ael.k2j4_x9.part"  # the pre-PID naming: removed once old enough
    old.write_bytes(b"half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    live = out / f".im2.png.ael.{os.getpid()}-live00.part"  # a running writer's file: kept
    live.write_bytes(b"in progress")
    linux = sys.platform.startswith("linux")
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exited, not reaped yet: a killed writer
    deadline = time.time() + 10                                 # whose parent has not waited for it
    while linux and time.time() < deadline and \
            open(f"/proc/{zombie.pid}/stat", "rb").read().rsplit(b")", 1)[1].split()[0] != b"Z":
        time.sleep(0.01)
    undead = out / f".im3.png.ael.{zombie.pid}-zzz000.part"
    undead.write_bytes(b"half a file")
    assert run("compress", src, "-m", model, "-o", out) == 0
    zombie.wait()
    assert not killed.exists() and not old.exists() and live.exists()
    assert not undead.exists() or not linux  # elsewhere a zombie is not told from a live writer
    assert f"removed {3 if linux else 2} temp file(s) left by an interrupted run" in capsys.readouterr().err
    assert len(list(out.rglob("*.ael"))) == 6


def _slow_compress_after_3(src: Path, model: Path, out: Path, module: str, attr: str,
                           stderr: int = subprocess.PIPE) -> subprocess.Popen:
    """A compress of src in another process with module's attr ("name" or "Class.method") slowed by 0.4 s a call
    (one worker, batches of 1), returned once 3 outputs have landed (or it ended), for the caller to stop it
    mid-way; stderr a text pipe unless told otherwise."""
    *path, last = attr.split(".")
    code = (f"import importlib, sys, time\nowner = importlib.import_module({module!r})\n"
            f"for part in {path!r}:\n    owner = getattr(owner, part)\n"
            f"real = getattr(owner, {last!r})\n"
            "def slow(*a, **kw):\n    time.sleep(0.4)\n    return real(*a, **kw)\n"
            f"setattr(owner, {last!r}, slow)\n"
            "from aekit.cli import main\n"
            f"sys.exit(main(['compress', {str(src)!r}, '-m', {str(model)!r}, '-o', {str(out)!r},"
            " '--workers', '1', '--batch-size', '1']))")
    p = subprocess.Popen([sys.executable, "-c", code], stderr=stderr, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while len(list(out.rglob("*.ael"))) < 3 and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return p


def test_kill_and_resume_leaves_nothing_behind(tiny_model, tmp_path):
    """SIGKILL a compress run mid-way (writes slowed down), rerun: complete, no leftovers, no stale."""
    model, src, out = tiny_model(1, 4), make_sources(tmp_path / "src", 12), tmp_path / "lat"
    p = _slow_compress_after_3(src, model, out, "aekit.codec.jobs", "atomic_write_bytes", subprocess.DEVNULL)
    p.kill()
    p.wait()
    done = len(list(out.rglob("*.ael")))
    assert 0 < done < 12
    assert run("compress", src, "-m", model, "-o", out) == 0
    assert len(list(out.rglob("*.ael"))) == 12
    assert not [q for q in out.rglob(".*") if q.name != LEDGER]  # no .part left
    recs = [json.loads(line) for line in (out / LEDGER).read_text().splitlines()]
    assert len(recs) == 12 and len({r["out"] for r in recs}) == 12


def test_sigterm_stops_a_compress_cleanly_with_exit_143(tiny_model, tmp_path):
    """SIGTERM (kill, a scheduler's stop) mid-way: one line, exit 143, no .part files left, the rerun completes."""
    model, src, out = tiny_model(1, 4), make_sources(tmp_path / "src", 12), tmp_path / "lat"
    p = _slow_compress_after_3(src, model, out, "aekit.codec.core", "Codec.symbols")
    p.terminate()
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143 and err.strip().splitlines()[-1] == "aekit: terminated", err
    assert 0 < len(list(out.rglob("*.ael"))) < 12
    assert not list(out.rglob("*.part"))
    assert run("compress", src, "-m", model, "-o", out) == 0
    assert len(list(out.rglob("*.ael"))) == 12


def test_denoise_resumes_by_the_same_rules(tiny_model, tmp_path, capsys):
    model, src, out = tiny_model(1, 4), make_sources(tmp_path / "src", 4), tmp_path / "rec"
    assert run("denoise", src, "-m", model, "-o", out) == 0
    capsys.readouterr()
    assert run("denoise", src, "-m", model, "-o", out) == 0
    assert "skipped 4 existing" in summary(capsys)
    assert run("denoise", src, "-m", tiny_model(1, 9), "-o", out) == 0
    assert "redid 4 stale" in summary(capsys)


def test_atomic_writes_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append("replace") or real_replace(a, b))
    atomic_write_bytes(tmp_path / "x.bin", b"data")
    assert events[:2] == ["fsync", "replace"] and (tmp_path / "x.bin").read_bytes() == b"data"
    assert events.count("fsync") == 2  # the file, then its folder (the rename itself)
    assert not list(tmp_path.glob(".*.part"))


def test_remove_stale_parts_leaves_other_hidden_files(tmp_path):
    (tmp_path / ".keep").write_text("x")
    (tmp_path / ".notes.txt").write_text("x")
    assert remove_stale_parts(tmp_path) == []
    assert (tmp_path / ".keep").exists() and (tmp_path / ".notes.txt").exists()


def test_export_force_keeps_or_reports_the_calibration(train_tiny, tmp_path, capsys):
    pytest.importorskip("torch")
    run4, run9, out = train_tiny(1, 4) / "best.pt", train_tiny(1, 9) / "best.pt", tmp_path / "model"
    assert run("export", run4, "--out", out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    banks = b"feature banks"
    import hashlib

    cal = {"version": 2, "model_id": manifest["model_id"], "alpha": 0.05,
           "arrays": {"file": "calibration.npz", "sha256": hashlib.sha256(banks).hexdigest()},
           "classes": {"shirt": {"n": 50, "threshold": 0.5, "scores": [0.1, 0.5]}}}
    (out / "calibration.npz").write_bytes(banks)
    (out / "manifest.json").write_text(json.dumps({**manifest, "calibration": cal}))
    capsys.readouterr()
    assert run("export", run4, "--out", out, "--force") == 0
    err = capsys.readouterr().err
    again = json.loads((out / "manifest.json").read_text())
    if again["model_id"] == manifest["model_id"]:  # the same checkpoint exports to the same model
        assert again["calibration"] == cal and (out / "calibration.npz").read_bytes() == banks
        assert "kept the previous calibration (shirt)" in err
    else:
        assert "previous calibration (shirt) was dropped" in err
    assert run("export", run9, "--out", out, "--force") == 0  # another model: dropped, and said so
    err = capsys.readouterr().err
    assert "calibration" not in json.loads((out / "manifest.json").read_text())
    assert "the previous calibration (shirt) was dropped: it was made for model" in err
    assert "aekit calibrate" in err


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(max_size=300))
def test_fuzz_a_damaged_ledger_only_makes_outputs_stale(tmp_path, garbage):
    """Whatever bytes the ledger holds (torn, foreign, binary), reading it never fails and trusts nothing false."""
    from aekit.codec.jobs import Item, Ledger

    src, dst = tmp_path / "a.png", tmp_path / "out" / "a.png.ael"
    src.write_bytes(b"source")
    dst.parent.mkdir(exist_ok=True)
    dst.write_bytes(b"output")
    (dst.parent / LEDGER).write_bytes(garbage)
    ledger = Ledger(dst.parent, {"job": "compress", "model": "m"})
    item = Item(src, dst)
    assert ledger.fresh(item) is False  # no valid record for it in random bytes
    ledger.add(item)
    ledger.compact()
    assert Ledger(dst.parent, {"job": "compress", "model": "m"}).fresh(Item(src, dst))
    assert not Ledger(dst.parent, {"job": "compress", "model": "other"}).fresh(Item(src, dst))
