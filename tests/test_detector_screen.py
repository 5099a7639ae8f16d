"""`aekit calibrate` / `aekit screen` / `aekit detector evaluate` in-process on a tiny real model.

The shared tiny model is copied per test (calibration writes into its manifest). Covers exit
codes 0/1/2, record files, exact score reuse, alpha override, the manifest round trip, every
bad-input message of the issue, detector-directory routing and torch-free screening.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aekit.cli import main
from conftest import killed_screen, needs_fmnist
from aekit.images import load_image, save_image
from aekit.detector.calibration import CALIBRATION_VERSION, conformal_threshold
from aekit.detector.model import Detector
from aekit.export.manifest import load_manifest

CLASSES = ("trouser", "bag", "sneaker")
pytestmark = [pytest.mark.fmnist, needs_fmnist]  # real Fashion-MNIST images and a model trained on them


@pytest.fixture
def model(tiny_model, tmp_path) -> Path:
    """The tiny model trained on Fashion-MNIST: the tests screen Fashion-MNIST images."""
    dest = tmp_path / "model"
    shutil.copytree(tiny_model(1, 4, "fmnist"), dest)
    return dest


@pytest.fixture
def normal(fmnist_dir, tmp_path) -> Path:
    """Three classes of real Fashion-MNIST training images (about 60 each)."""
    out = tmp_path / "normal"
    for c in CLASSES:
        shutil.copytree(fmnist_dir / "train" / c, out / c)
    return out


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def records(prefix: Path) -> list[dict]:
    return [json.loads(line) for line in Path(f"{prefix}.jsonl").read_text().splitlines()]


def test_calibrating_one_class_never_moves_the_others_silently(model, normal, tmp_path, capsys):
    """alpha is one per model: a folder's default alpha keeps the model's (a class too small for it is refused,
    saying why), and an explicit other --alpha re-thresholds the rest only with a warning naming them, or is
    refused when one of them has too few images for it."""
    from aekit.detector.model import Detector

    assert run(capsys, "calibrate", model, normal / "trouser", "--class", "trouser", "--alpha", "0.05")[0] == 0
    before = Detector(model).thresholds_["trouser"]
    five = tmp_path / "five"
    five.mkdir()
    for p in sorted((normal / "bag").iterdir())[:5]:
        shutil.copy(p, five / p.name)
    rc, _, err = run(capsys, "calibrate", model, five, "--class", "bag")  # the default alpha for 5 would be 0.2
    assert rc == 2 and "too few for alpha=0.05" in err and "the alpha of the model's other classes" in err
    assert Detector(model).thresholds_ == {"trouser": before}
    assert run(capsys, "calibrate", model, normal / "bag", "--class", "bag")[0] == 0  # ~60 images: alpha 0.05 kept
    assert Detector(model).thresholds_["trouser"] == before
    rc, _, err = run(capsys, "calibrate", model, five, "--class", "sneaker", "--alpha", "0.2")
    assert rc == 0 and "alpha 0.2 now applies to every class of the model, also to bag, trouser" in err
    rc, _, err = run(capsys, "calibrate", model, normal / "trouser", "--class", "trouser", "--alpha", "0.05")
    assert rc == 2 and "--alpha 0.05 applies to every class of the model, and class 'sneaker': 5 calibration" in err
    rc, _, err = run(capsys, "calibrate", model, five)  # a flat folder, several classes: which one is it?
    assert rc == 2 and "has classes bag, sneaker, trouser; say which one" in err


def test_calibrate_stores_versioned_thresholds_in_the_manifest(model, normal, capsys):
    rc, out, err = run(capsys, "calibrate", model, normal, "--alpha", "0.05", "--score", "mse")
    assert rc == 0, err
    cal = load_manifest(model)["calibration"]
    assert cal["version"] == CALIBRATION_VERSION and cal["score"] == "mse" and cal["alpha"] == 0.05
    assert cal["model_id"] == load_manifest(model)["model_id"]
    for c in CLASSES:
        entry = cal["classes"][c]
        assert entry["n"] == len(list((normal / c).iterdir())) == len(entry["scores"])
        assert entry["scores"] == sorted(entry["scores"])
        assert entry["threshold"] == conformal_threshold(np.array(entry["scores"]), 0.05)
    rc, info, _ = run(capsys, "info", model)
    assert rc == 0 and "calibration  score mse, alpha 0.05" in info and "trouser: n=" in info
    # the calibration travels with the folder: a copy screens with the same thresholds
    moved = model.parent / "moved"
    shutil.copytree(model, moved)
    assert Detector(moved).thresholds_ == Detector(model).thresholds_


def test_screen_reuses_calibration_scores_exactly_and_writes_records(model, normal, tmp_path, capsys):
    assert run(capsys, "calibrate", model, normal, "--alpha", "0.05", "--score", "ssim")[0] == 0
    rc, out, err = run(capsys, "screen", model, normal, "--out", tmp_path / "r")
    assert rc in (0, 1), err
    recs = records(tmp_path / "r")
    cal = load_manifest(model)["calibration"]
    for c in CLASSES:
        mine = sorted(r["score"] for r in recs if r["class"] == c)
        assert mine == cal["classes"][c]["scores"]  # same function, same pixels: identical floats
    for r in recs:
        assert r["is_anomaly"] == (r["score"] > r["threshold"]) and 0 < r["p_value"] <= 1
        n = cal["classes"][r["class"]]["n"]
        assert r["p_value"] == (1 + sum(s >= r["score"] for s in cal["classes"][r["class"]]["scores"])) / (n + 1)
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert len(rows) == len(recs) and set(rows[0]) >= {"path", "class", "score", "threshold", "p_value", "is_anomaly"}
    summary = json.loads((tmp_path / "r.summary.json").read_text())
    assert summary["score"] == "ssim" and set(summary["classes"]) == set(CLASSES)
    assert summary["exit_code"] == rc and summary["flagged"] == sum(r["is_anomaly"] for r in recs)
    # flagged fraction of the calibration images themselves is at most alpha (by construction)
    assert summary["flagged"] <= 0.05 * len(recs)


def test_exit_codes_and_heatmaps(model, normal, tmp_path, capsys):
    # mse: an inverted image is a global anomaly, which the mean error sees even with this tiny model
    assert run(capsys, "calibrate", model, normal / "trouser", "--class", "trouser", "--alpha", "0.05",
               "--score", "mse")[0] == 0
    det = Detector(model)
    t = det.thresholds_["trouser"]
    files = sorted((normal / "trouser").iterdir())
    scores = det.decision_function([load_image(f, 1)[0] for f in files], "trouser")
    calm = tmp_path / "calm"
    calm.mkdir()
    for f in [f for f, s in zip(files, scores) if s <= t][:10]:
        shutil.copy(f, calm / f.name)
    rc, out, _ = run(capsys, "screen", model, calm, "--out", tmp_path / "calm", "--heatmaps", tmp_path / "hm0")
    assert rc == 0 and "0 image(s) flagged" in out and not (tmp_path / "hm0").exists()
    # an inverted trouser is far from every normal trouser: flagged, exit 1, heatmap written
    odd = tmp_path / "odd"
    save_image(255 - load_image(files[0], 1)[0], odd / "inverted.png")
    shutil.copy(files[1], odd / files[1].name)
    rc, out, _ = run(capsys, "screen", model, odd, "--out", tmp_path / "odd", "--heatmaps", tmp_path / "hm")
    assert rc == 1 and "1 image(s) flagged" in out
    assert [p.name for p in (tmp_path / "hm").iterdir()] == ["inverted.png"]
    heat = load_image(tmp_path / "hm" / "inverted.png", 3)[0]
    assert heat.shape[1] == 3 * heat.shape[0]  # image | reconstruction | overlay
    # an unreadable file: the job goes on, records it, exit 2
    (odd / "broken.png").write_bytes(b"not a png")
    rc, out, err = run(capsys, "screen", model, odd, "--out", tmp_path / "odd2")
    assert rc == 2 and "broken.png: cannot decode image" in err
    recs = records(tmp_path / "odd2")
    assert len(recs) == 3 and sum(r["error"] is not None for r in recs) == 1
    assert sum(bool(r["is_anomaly"]) for r in recs) == 1
    # a non-UTF-8 name is an error of the job (exit 2, named once in \xNN form, in the summary), as in compress
    (odd / "broken.png").unlink()
    with open(os.fsencode(odd) + b"/caf\xe9.png", "wb") as f:
        f.write(files[2].read_bytes())
    rc, out, err = run(capsys, "screen", model, odd, "--out", tmp_path / "odd3")
    assert rc == 2 and err.count("caf") == 1 and f"{odd}/caf\\xe9.png: file name is not valid UTF-8" in err, err
    assert "1 image(s) flagged" in out and len(records(tmp_path / "odd3")) == 2
    assert json.loads(Path(f"{tmp_path / 'odd3'}.summary.json").read_text())["exit_code"] == 2
    # a source folder without images: a warning, nothing written, exit 0 (the codec's folder jobs' rule)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images")
    rc, out, err = run(capsys, "screen", model, empty, "--class", "trouser", "--out", tmp_path / "e" / "s")
    assert rc == 0 and out == "" and "no image files found (1 other file ignored); nothing was screened" in err
    assert not (tmp_path / "e").exists()


def test_alpha_override_recomputes_thresholds_from_stored_scores(model, normal, tmp_path, capsys):
    assert run(capsys, "calibrate", model, normal, "--alpha", "0.05")[0] == 0
    stored = load_manifest(model)["calibration"]["classes"]
    run(capsys, "screen", model, normal, "--alpha", "0.2", "--out", tmp_path / "a")
    for r in records(tmp_path / "a"):
        assert r["threshold"] == conformal_threshold(np.array(stored[r["class"]]["scores"]), 0.2)
    flagged = sum(r["is_anomaly"] for r in records(tmp_path / "a"))
    # screening the calibration images: exactly those above the k-th smallest score are flagged
    expect = sum(int(np.sum(np.array(v["scores"]) > conformal_threshold(np.array(v["scores"]), 0.2)))
                 for v in stored.values())
    assert flagged == expect and 0 < flagged <= 0.2 * sum(v["n"] for v in stored.values())
    assert load_manifest(model)["calibration"]["alpha"] == 0.05  # screening never rewrites the calibration


def test_bad_input_messages(model, normal, tmp_path, capsys, photos_dir):
    # uncalibrated model
    rc, _, err = run(capsys, "screen", model, normal, "--out", tmp_path / "x")
    assert rc == 2 and "not calibrated" in err and "aekit calibrate" in err
    # too few calibration images for alpha: refused in one line naming the class and the minimum, nothing stored
    few = tmp_path / "few" / "bag"
    few.mkdir(parents=True)
    for f in sorted((normal / "bag").iterdir())[:10]:
        shutil.copy(f, few / f.name)
    rc, _, err = run(capsys, "calibrate", model, few.parent, "--alpha", "0.01")
    assert rc == 2 and "class 'bag': 10 calibration images are too few for alpha=0.01 (need at least 99)" in err
    assert "calibration" not in load_manifest(model)
    assert run(capsys, "calibrate", model, few.parent, "--alpha", "0.1")[0] == 0
    rc, _, err = run(capsys, "screen", model, few.parent, "--alpha", "0.01", "--out", tmp_path / "few")
    assert rc == 2 and "nothing could be flagged" in err  # a smaller alpha at screening time: refused, not passed
    # calibrate trouser only; then: unknown class, class without calibration, wrong channels, too small
    assert run(capsys, "calibrate", model, normal / "trouser", "--class", "trouser", "--alpha", "0.1")[0] == 0
    rc, _, err = run(capsys, "screen", model, normal / "bag", "--class", "nope", "--out", tmp_path / "x")
    assert rc == 2 and "class 'nope' is unknown" in err
    rc, _, err = run(capsys, "screen", model, normal, "--out", tmp_path / "mixed")
    assert rc == 2 and "class 'sneaker' has no calibration" in err  # the tiny model was trained on it
    recs = records(tmp_path / "mixed")
    assert all({"path", "class", "score", "threshold", "p_value", "is_anomaly", "error"} <= r.keys() for r in recs)
    assert {r["class"] for r in recs if r["error"] is None} == {"trouser", "bag"}  # the others were screened
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(photos_dir / "astronaut.png", bad / "astronaut.png")
    save_image(np.zeros((5, 5, 1), np.uint8), bad / "tiny.png")
    save_image(np.repeat(load_image(sorted((normal / "trouser").iterdir())[0], 1)[0], 3, axis=2), bad / "gray_as_rgb.png")
    rc, _, err = run(capsys, "screen", model, bad, "--class", "trouser", "--out", tmp_path / "bad")
    assert rc == 2
    assert "astronaut.png: RGB image but the model takes 1-channel (grayscale) images" in err
    assert "tiny.png: 5x5 is too small" in err
    assert [r["error"] for r in records(tmp_path / "bad") if "gray_as_rgb" in r["path"]] == [None]
    # a flat folder when several classes are calibrated needs --class
    assert run(capsys, "calibrate", model, normal / "bag", "--class", "bag", "--alpha", "0.05")[0] == 0
    rc, _, err = run(capsys, "screen", model, normal / "bag", "--out", tmp_path / "x")
    assert rc == 2 and "--class NAME" in err
    # a missing model folder or source
    rc, _, err = run(capsys, "screen", tmp_path / "nomodel", normal, "--out", tmp_path / "x")
    assert rc == 2 and "no such model or folder" in err
    rc, _, err = run(capsys, "screen", model, tmp_path / "nothing", "--class", "bag", "--out", tmp_path / "x")
    assert rc == 2 and "no such file or folder" in err


def test_estimator_api(model, normal):
    files = sorted((normal / "trouser").iterdir())
    X = np.stack([load_image(f, 1)[0] for f in files])  # (N, 28, 28, 1)
    det = Detector(model, alpha=0.05, score="ssim").fit(X[:40], "trouser")
    assert set(det.thresholds_) == {"trouser"} and det.decision_scores_.shape == (40,)
    scores = det.decision_function(X[40:])  # the only calibrated class is the default
    np.testing.assert_array_equal(det.predict(X[40:]), (scores > det.thresholds_["trouser"]).astype(int))
    noise = np.random.default_rng(0).integers(0, 256, X[:5].shape, dtype=np.uint8)
    assert det.decision_function(noise).min() > np.median(scores)  # noise: more anomalous
    det.save()
    again = Detector(model)
    assert again.thresholds_ == det.thresholds_ and again.settings(again.routes[None])[0] == "ssim"
    np.testing.assert_array_equal(again.decision_function(X[40:]), scores)
    with pytest.raises(Exception, match="calibrated with score ssim"):
        Detector(model, score="mse").predict(X[:2])


def test_detector_directory_routes_each_class_to_its_model(model, normal, tmp_path, capsys):
    det_dir = tmp_path / "det"
    rc, out, err = run(capsys, "detector", "assemble", det_dir, f"trouser={model}", f"bag={model}")
    assert rc == 0 and json.loads((det_dir / "detector.json").read_text())["classes"]["bag"]["model"] == "bag"
    rc, out, err = run(capsys, "detector", "assemble", det_dir, f"trouser={model}")
    assert rc == 2 and "already exists" in err
    rc, out, err = run(capsys, "detector", "assemble", tmp_path / "d2", f"bag={tmp_path / 'missing'}")
    assert rc == 2 and "no such model or folder" in err and not (tmp_path / "d2").exists()
    rc, out, err = run(capsys, "calibrate", det_dir, normal, "--alpha", "0.05")
    assert rc == 2 and "unknown class 'sneaker'" in err  # no model for it: reported, the rest calibrated
    assert set(load_manifest(det_dir / "bag")["calibration"]["classes"]) == {"bag"}
    assert set(load_manifest(det_dir / "trouser")["calibration"]["classes"]) == {"trouser"}
    rc, out, err = run(capsys, "screen", det_dir, normal, "--out", tmp_path / "s")
    assert rc == 2 and "unknown class 'sneaker': detector" in err
    assert {r["class"] for r in records(tmp_path / "s") if r["error"] is None} == {"trouser", "bag"}
    rc, out, err = run(capsys, "detector", "evaluate", det_dir, normal, "--out", tmp_path / "ev")
    assert rc == 0, err
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert set(ev["metrics"]) == {"trouser", "bag", "mean"}
    m = ev["metrics"]["trouser"]
    assert m["n_normal"] == len(list((normal / "trouser").iterdir())) and m["n_anomalous"] > m["n_normal"]
    assert 0 <= m["auroc"] <= 1 and 0 <= m["fpr"] <= 0.05 + 1e-9  # calibration images: FPR <= alpha
    lo, hi = m["fpr_range_95"]  # what exchangeable normals give; the p-value says whether this set drifted
    assert 0 <= lo <= 0.05 <= hi <= 1 and 0 <= m["fpr_p_value"] <= 1
    assert (tmp_path / "ev.md").read_text().startswith("| class |") and (tmp_path / "ev_roc.png").stat().st_size > 0


def test_evaluate_good_vs_defect_layout(model, normal, tmp_path, capsys):
    lab = tmp_path / "lab"
    shutil.copytree(normal / "trouser", lab / "good")
    shutil.copytree(normal / "bag", lab / "bag_defect")
    assert run(capsys, "calibrate", model, normal / "trouser", "--class", "trouser", "--alpha", "0.05",
               "--score", "mse")[0] == 0  # another class is a global anomaly: the mean error
    rc, out, err = run(capsys, "detector", "evaluate", model, lab, "--class", "trouser", "--out", tmp_path / "e")
    assert rc == 0, err
    m = json.loads((tmp_path / "e.json").read_text())["metrics"]["trouser"]
    assert m["n_normal"] == len(list((lab / "good").iterdir())) and m["auroc"] > 0.5


def test_screening_never_imports_torch(model, normal, tmp_path, capsys):
    assert run(capsys, "calibrate", model, normal / "bag", "--class", "bag", "--alpha", "0.05")[0] == 0
    code = (
        "import sys\n"
        "from aekit.detector.jobs import calibrate_folder, screen_folder\n"
        f"calibrate_folder({str(model)!r}, {str(normal / 'bag')!r}, 'bag', 0.05)\n"
        f"rep = screen_folder({str(model)!r}, {str(normal / 'bag')!r}, {str(tmp_path / 'nt')!r}, 'bag')\n"
        "assert rep.per_class['bag'].n > 0\n"
        "import aekit.detector.cli, aekit.detector.evaluate, aekit.detector.heatmap\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_train_per_class_builds_a_routed_calibrated_detector(fmnist_dir, tmp_path, capsys):
    data = tmp_path / "data"
    for c in ("trouser", "sneaker"):
        shutil.copytree(fmnist_dir / "train" / c, data / c)
    out = tmp_path / "det"
    rc, _, err = run(capsys, "detector", "train-per-class", data, "--out", out, "--runs", tmp_path / "runs",
                     "--epochs", "1", "--width", "8", "--blocks", "0", "--cal-fraction", "0.3", "--alpha", "0.1")
    assert rc == 0, err
    manifest = json.loads((out / "detector.json").read_text())
    assert manifest["format"] == "aekit-detector" and set(manifest["classes"]) == {"trouser", "sneaker"}
    ids = {c: load_manifest(out / c)["model_id"] for c in ("trouser", "sneaker")}
    assert ids["trouser"] != ids["sneaker"]
    for c in ids:
        cal = load_manifest(out / c)["calibration"]
        assert set(cal["classes"]) == {c} and cal["classes"][c]["n"] == manifest["classes"][c]["n_calibration"]
        n_total = len(list((data / c).iterdir()))
        assert manifest["classes"][c]["n_train"] + manifest["classes"][c]["n_val"] + cal["classes"][c]["n"] == n_total
    test = tmp_path / "test"
    for c in ("trouser", "sneaker"):
        shutil.copytree(fmnist_dir / "test" / c, test / c)
    rc, _, err = run(capsys, "screen", out, test, "--out", tmp_path / "s")
    assert rc in (0, 1), err
    for r in records(tmp_path / "s"):
        assert r["model_id"] == ids[r["class"]]  # each class went through its own model
    rc, _, err = run(capsys, "detector", "train-per-class", data, "--out", out)
    assert rc == 2 and "already exists" in err


def test_output_paths_that_are_files_fail_at_once(model, normal, tmp_path, capsys):
    """--maps, --heatmaps or --out's folder being a file: one line naming the option and the path, exit 2,
    before any image is scored (not one line per image about a temp file inside it)."""
    assert run(capsys, "calibrate", model, normal, "--alpha", "0.05")[0] == 0
    taken = tmp_path / "taken.txt"
    taken.write_text("x")
    for args, what in ((["--maps", taken], "--maps"), (["--heatmaps", taken], "--heatmaps"), ([], "--out")):
        out = tmp_path / "s" if args else taken / "s"
        rc, _, err = run(capsys, "screen", model, normal, "--out", out, *args)
        assert rc == 2 and f"{what} {taken}: exists and is not a folder" in err and err.count("\n") == 1, err


def test_ctrl_c_keeps_the_screens_records_for_the_rerun(model, normal, tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) in the middle of a screen leaves its records so far in the temp file, as a
    kill does; the rerun (another process) reuses them and screens only the rest."""
    import aekit.detector.jobs as jobs
    from aekit.detector.jobs import ScreenConfig, screen_folder
    from aekit.detector.model import Detector

    assert main(["calibrate", str(model), str(normal), "--alpha", "0.05"]) == 0
    real, calls = Detector.score_maps, []

    def interrupted(self, X, classes=None, maps=True):
        calls.append(len(X))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, X, classes, maps)

    monkeypatch.setattr(Detector, "score_maps", interrupted)
    with pytest.raises(KeyboardInterrupt):
        screen_folder(model, normal, tmp_path / "s", cfg=ScreenConfig(chunk=40), maps=tmp_path / "maps")
    (part,) = tmp_path.glob(".s.jsonl.*.part")
    assert len(part.read_text().splitlines()) == 80 and not Path(f"{tmp_path / 's'}.jsonl").exists()
    monkeypatch.setattr(Detector, "score_maps", real)
    scored = []
    monkeypatch.setattr(Detector, "score_maps", lambda self, X, classes=None, maps=True:
                        scored.append(len(X)) or real(self, X, classes, maps))
    monkeypatch.setattr(jobs, "_pid_alive", lambda pid: False)  # the rerun is another process
    rep = screen_folder(model, normal, tmp_path / "s", cfg=ScreenConfig(chunk=40), maps=tmp_path / "maps")
    n = len(records(tmp_path / "s"))
    assert sum(scored) == n - 80 and not list(tmp_path.glob(".s.*.part")) and rep.exit_code in (0, 1)


def test_rerun_after_a_killed_screen_cleans_its_temp_files_and_resumes(model, normal, tmp_path, capsys, monkeypatch):
    """Issue 14 §4: a killed screen leaves truncated '.OUT.jsonl.PID-….part' files; the rerun deletes
    them, reuses the complete records that are still valid and scores only the rest."""
    import os
    import time

    assert run(capsys, "calibrate", model, normal, "--alpha", "0.05", "--score", "mse-top1")[0] == 0
    maps = tmp_path / "maps"
    rc, _, err = run(capsys, "screen", model, normal, "--out", tmp_path / "fresh", "--maps", maps)
    assert rc in (0, 1), err
    killed, lines, pid, start = killed_screen(tmp_path, Path(f"{tmp_path / 'fresh'}.jsonl"))
    half = len(lines) // 2
    (tmp_path / f".k.csv.{pid}-{start}abc124.part").write_text("path,class\n/x,")
    old = tmp_path / ".k.jsonl.zz9_old.part"  # an older version's name (no PID): removed once an hour old
    old.write_text("{}\n")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    live = tmp_path / f".k.jsonl.{os.getpid()}-t0_live00.part"  # a running writer's file: kept
    live.write_text("")
    touched = Path(json.loads(lines[0])["path"])  # changed after the killed run started: scored again
    os.utime(touched, (time.time() + 5, time.time() + 5))
    scored = []
    real = Detector.score_maps

    def counting(self, X, classes=None, maps=True):
        scored.extend(classes if isinstance(classes, list) else [classes] * len(X))
        return real(self, X, classes, maps)

    monkeypatch.setattr(Detector, "score_maps", counting)
    rc2, _, err = run(capsys, "screen", model, normal, "--out", tmp_path / "k", "--maps", maps)
    assert rc2 == rc, err
    assert not killed.exists() and not old.exists() and live.exists()
    assert not [p for p in tmp_path.glob(".k.*") if p != live]
    assert len(scored) == len(lines) - half + 1  # the valid half reused, the torn record and the touched file redone
    fresh, resumed = records(tmp_path / "fresh"), records(tmp_path / "k")
    assert sorted(fresh, key=lambda r: r["path"]) == sorted(resumed, key=lambda r: r["path"])
    assert json.loads(Path(f"{tmp_path / 'fresh'}.summary.json").read_text()) == \
        json.loads(Path(f"{tmp_path / 'k'}.summary.json").read_text())
    with open(f"{tmp_path / 'k'}.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(lines)
    # another calibration (other thresholds): nothing of a killed run is reused
    killed.write_text("".join(lines[:half]))
    assert run(capsys, "calibrate", model, normal, "--alpha", "0.1", "--score", "mse-top1")[0] == 0
    scored.clear()
    run(capsys, "screen", model, normal, "--out", tmp_path / "k", "--maps", maps)
    assert len(scored) == len(lines) and not killed.exists()


def test_an_uncalibrated_shipped_model_is_screened_after_calibrating_a_copy(tmp_path, capsys):
    """The hint names what works: calibration writes into the folder, so a shipped model is calibrated as a copy."""
    from PIL import Image

    from aekit.cli import main

    (tmp_path / "in").mkdir()
    Image.new("RGB", (48, 48)).save(tmp_path / "in" / "a.png")
    assert main(["screen", "photos-r9", str(tmp_path / "in"), "--out", str(tmp_path / "s.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cp -r " in err[0] and "aekit calibrate models/photos-r9 NORMAL_DIR" in err[0], err


def test_the_summarys_mean_score_is_the_same_in_any_scoring_order():
    """A resumed screen adds the reused records first: its mean_score must still equal a fresh run's to the bit."""
    import math

    from aekit.detector.jobs import ClassSummary

    rng = np.random.default_rng(0)
    scores = (rng.random(500) * 10.0 ** rng.integers(-8, 3, 500)).tolist()
    means = []
    for order in (scores, scores[::-1], sorted(scores), rng.permutation(scores).tolist()):
        s = ClassSummary()
        for x in order:
            s.add(x, x > 1.0, 0.5)
        means.append(s.to_dict()["mean_score"])
    assert len(set(means)) == 1 and means[0] == math.fsum(scores) / len(scores)
    assert s.to_dict()["flagged"] == sum(x > 1.0 for x in scores) and s.to_dict()["n"] == 500
