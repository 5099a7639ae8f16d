"""`aekit add-quality`: finer quality steps for an exported gdn-hp model; the old id's files still decode."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest

from aekit.cli import main


@pytest.fixture(scope="module")
def extended(hp_model, photos_dir, tmp_path_factory):
    """(old model folder, its copy with a quality of step 0.5 added by the CLI, the command's stdout)."""
    root = tmp_path_factory.mktemp("add-quality")
    old, new = root / "old" / "hp", root / "new" / "hp"
    shutil.copytree(hp_model, old)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["add-quality", str(old), "--step", "0.5", "--images", str(photos_dir), "--out", str(new)]) == 0
    return old, new, out.getvalue()


def test_added_quality_follows_the_export_rule_and_gets_a_new_id_that_supersedes_the_old(extended):
    from aekit.entropy_models import scale_table
    from aekit.export.manifest import load_manifest

    old, new, stdout = (load_manifest(extended[0]), load_manifest(extended[1]), extended[2])
    n = len(old["entropy"]["qualities"])
    assert new["model_id"] != old["model_id"]
    assert new["supersedes"] == [{"model_id": old["model_id"], "qualities": n}]
    assert new["entropy"]["qualities"][:n] == old["entropy"]["qualities"]
    assert new["entropy"]["default_quality"] == old["entropy"]["default_quality"]
    q = new["entropy"]["qualities"][n]
    assert (q["quality"], q["step"], q["step4"]) == (n + 1, 0.5, 2) and q["clipped"] <= 1e-4
    # codec/FORMAT.md: T_k = floor((ln s_k + ln step) * 2^(shift + frac_bits)), written out here in floats
    hyper = new["entropy"]["hyper"]
    frac = hyper["layers"][-1]["shift"] + hyper["frac_bits"]
    assert q["thresholds"] == [int(np.floor((np.log(s) + np.log(0.5)) * 2.0 ** frac)) for s in scale_table()[:-1]]
    assert q["check"]["psnr"] > max(e["check"]["psnr"] for e in old["entropy"]["qualities"]) - 1.0
    assert f"quality {n + 1}: step 0.5" in stdout and f"decodes files of model {old['model_id']}" in stdout
    from aekit.export.manifest import describe

    assert f"supersedes   model {old['model_id']} (its qualities 1..{n}" in describe(new)


def test_the_extended_folder_decodes_the_old_ids_files_unchanged_and_codes_its_new_quality(extended, rgb_photos,
                                                                                           tmp_path):
    from aekit.images import save_image

    new = extended[1]
    old = shutil.copytree(extended[0], tmp_path / "old" / "hp")
    src = tmp_path / "src"
    src.mkdir()
    save_image(rgb_photos[0][:120, :150], src / "a.png")
    assert main(["compress", str(src), "-m", str(old), "-o", str(tmp_path / "lat"), "--quality", "3"]) == 0
    assert main(["decompress", str(tmp_path / "lat"), "-m", str(old), "-o", str(tmp_path / "by-old")]) == 0
    shutil.rmtree(old)  # only the extended folder is left to decode the old id's file
    assert main(["decompress", str(tmp_path / "lat"), "-m", str(new), "-o", str(tmp_path / "by-new")]) == 0
    assert (tmp_path / "by-new" / "a.png").read_bytes() == (tmp_path / "by-old" / "a.png").read_bytes()
    n = len(json.loads((new / "manifest.json").read_text())["entropy"]["qualities"])
    for q in (n - 1, n):
        assert main(["compress", str(src), "-m", str(new), "-o", str(tmp_path / f"q{q}"), "--quality", str(q)]) == 0
        assert main(["decompress", str(tmp_path / f"q{q}"), "-m", str(new), "-o", str(tmp_path / f"d{q}")]) == 0
    size = {q: (tmp_path / f"q{q}" / "a.png.ael").stat().st_size for q in (n - 1, n)}
    assert size[n] > size[n - 1]  # the finer step spends more bytes


def test_the_old_id_keeps_only_its_own_qualities(extended):
    from aekit.codec.core import Decoder
    from aekit.export.entropy import EntropyError
    from aekit.export.manifest import load_manifest

    old_id = load_manifest(extended[1])["supersedes"][0]["model_id"]
    n = load_manifest(extended[1])["supersedes"][0]["qualities"]
    dec = Decoder([extended[1].parent])
    assert dec.model(old_id)["model_id"] == old_id and len(dec.model(old_id)["entropy"]["qualities"]) == n
    dec.entropy(old_id, 255, n)
    with pytest.raises(EntropyError, match=f"has no quality {n + 1}"):
        dec.entropy(old_id, 255, n + 1)


def test_a_second_extension_keeps_every_older_id(extended, tmp_path, monkeypatch):
    import aekit.export.onnx as onnx_export
    from aekit.codec.core import Decoder
    from aekit.export.manifest import load_manifest

    monkeypatch.setattr(onnx_export, "MAX_CLIPPED", 1.0)  # the small model's y may clip at 0.25: allowed here
    assert main(["add-quality", str(extended[1]), "--step", "0.25", "--out", str(tmp_path / "m" / "hp")]) == 0
    first, second = load_manifest(extended[1]), load_manifest(tmp_path / "m" / "hp")
    n = len(first["entropy"]["qualities"])
    assert second["supersedes"] == [*first["supersedes"], {"model_id": first["model_id"], "qualities": n}]
    dec = Decoder([tmp_path / "m"])
    for e in second["supersedes"]:
        assert len(dec.model(e["model_id"])["entropy"]["qualities"]) == e["qualities"]
    assert len(dec.model(second["model_id"])["entropy"]["qualities"]) == n + 1


def test_a_tampered_supersedes_entry_is_refused(extended, tmp_path):
    from aekit.export.manifest import ModelError, load_manifest

    d = tmp_path / "long"
    shutil.copytree(extended[1], d)
    m = json.loads((d / "manifest.json").read_text())
    m["supersedes"] = m["supersedes"] * 65
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match="supersedes lists 65 models"):
        load_manifest(d)
    for change in ({"qualities": 1}, {"model_id": "0123456789abcdef"}, {"qualities": 99}):
        d = tmp_path / "m"
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(extended[1], d)
        m = json.loads((d / "manifest.json").read_text())
        m["supersedes"][0].update(change)
        (d / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(ModelError, match="supersedes"):
            load_manifest(d)


def test_add_quality_refuses_bad_steps_clipping_other_models_and_shipped_folders(extended, train_tiny, tmp_path,
                                                                                 monkeypatch, capsys):
    import aekit.export.onnx as onnx_export
    from aekit.export.onnx import export_model

    tiny = export_model(train_tiny(3, 4) / "best.pt", tmp_path / "tiny", speed=False)
    new = str(extended[1])
    cases = [([new, "--step", "0.75", "--out", str(tmp_path / "a")], "finer than the model's finest (0.5)"),
             ([new, "--step", "0.3", "--out", str(tmp_path / "a")], "a multiple of 1/4"),
             ([str(tiny), "--step", "0.5", "--out", str(tmp_path / "a")], "has no hyperprior"),
             (["photos-r9", "--step", "0.5"], "a shipped model; write the extended copy elsewhere with --out"),
             ([new, "--step", "0.25", "--out", new], "exists; --force replaces it")]
    for argv, says in cases:
        capsys.readouterr()
        assert main(["add-quality", *argv]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
    monkeypatch.setattr(onnx_export, "MAX_CLIPPED", -1.0)  # every step clips
    assert main(["add-quality", new, "--step", "0.25", "--out", str(tmp_path / "b")]) == 2
    assert "falls beyond the 8-bit symbols" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_vs_klt_counts_the_klt_points_a_model_beats(tmp_path):
    from aekit.codec.vs_klt import main as vs_klt_main

    def row(model, arch, q, bpp, psnr):
        return {"model": model, "arch": arch, "quality": q, "bpp": bpp, "psnr": psnr}

    klt = [row("m/klt-a", "klt", q, b, p) for q, b, p in ((1, 0.2, 28.0), (2, 0.4, 31.0), (3, 0.8, 34.0), (4, 1.6, 36.0))]
    ours = [row("zoo/ours", "gdn-hp", q, b, p) for q, b, p in ((1, 0.1, 28.5), (2, 0.3, 32.0), (3, 0.7, 35.0))]
    (tmp_path / "k.json").write_text(json.dumps({"models": klt}))
    (tmp_path / "m.json").write_text(json.dumps({"models": ours}))
    assert vs_klt_main([str(tmp_path / "k.json"), str(tmp_path / "m.json"), str(tmp_path / "out.md")]) == 0
    text = (tmp_path / "out.md").read_text()
    # q1 beats klt q1 (0.1 <= 0.2 bpp, 28.5 > 28.0), q2 beats klt q2, q3 beats klt q3; nothing reaches 36 dB
    assert "| ours |" in text and "3 of 4 |" in text and "Beaten by some shipped model: 3 of 4." in text
    assert "- not beaten: klt-a q4: 1.600 bpp, 36.00 dB" in text
