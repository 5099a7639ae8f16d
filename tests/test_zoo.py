"""The shipped models (aekit/zoo): they load, round trip at their card's floor, agree with their
cards, resolve by name in every command, and fit the size budget."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from aekit import zoo
from aekit.cli import build_parser, main
from aekit.export.manifest import ModelError, load_manifest, model_arg, resolve_model
from aekit.export import zoo as ezoo

NAMES = zoo.names()
EXPECTED = ("photos-r4", "photos-r4-hq", "photos-r9", "photos-r9-hq", "photos-r9-fast", "fmnist-r4", "fmnist-r9", "fmnist-detect")
ZOO_BUDGET_MB = 50


def test_zoo_ships_the_reference_models():
    missing = [n for n in EXPECTED if n not in NAMES]
    assert not missing, f"not shipped: {missing} (bench/train_zoo.sh builds them)"


def test_zoo_fits_its_budget():
    """The models' folders and the shared tables their manifests name (shipped beside the runtime)."""
    from pathlib import Path

    import aekit.export.manifest as manifest

    shared = sum((Path(manifest.__file__).parent / f).stat().st_size for f in manifest.SHARED_TABLES.values()) / 1e6
    total = sum(ezoo.size_mb(zoo.path(n)) for n in NAMES) + shared
    assert total < ZOO_BUDGET_MB, f"zoo is {total:.1f} MB"


@pytest.mark.parametrize("name", NAMES)
def test_card_agrees_with_model(name):
    assert ezoo.check(name) == []


@pytest.mark.parametrize("name", NAMES)
def test_shipped_model_round_trips_at_its_floor(name):
    pytest.importorskip("skimage")
    from aekit.bench.zoo import roundtrip_psnr

    card = ezoo.load_card(name)
    got = roundtrip_psnr(zoo.path(name), card["roundtrip"]["image"])
    assert got >= card["roundtrip"]["floor_db"], f"{name}: {got:.2f} dB < floor {card['roundtrip']['floor_db']}"


HYPER = [n for n in NAMES if load_manifest(zoo.path(n)).get("arch") == "gdn-hp"]


@pytest.mark.parametrize("name", HYPER)
def test_shipped_hyperprior_is_alive_and_codes_a_photo(name):
    """A gdn-hp zoo model's z varies over a real photo (a collapsed h_a gives one z everywhere, and zstd then
    beats the hyperprior on every file: photos-r9-fast's first export did), and its hyperprior coder beats
    zstd on the astronaut at the default quality."""
    skimage = pytest.importorskip("skimage.data")
    import aekit.codec.core as core
    from aekit.export.entropy import _zstd_compress

    c = core.Codec(zoo.path(name))
    q = np.asarray(c.symbols([skimage.astronaut()[:384, :384]])[0])
    z = c.em.hyper_symbols(q)
    assert (z.reshape(z.shape[0], -1).max(1) != z.reshape(z.shape[0], -1).min(1)).sum() >= 4, f"{name}: z barely varies"
    _, ans = c.em._encode_hyper_best(q)
    assert len(ans) < len(_zstd_compress(q.tobytes())), f"{name}: the hyperprior loses to zstd on the astronaut"


@pytest.fixture
def tmp_zoo(tmp_path, monkeypatch):
    """A copy of one shipped model in a zoo of its own (for tampering)."""
    name = NAMES[0] if NAMES else pytest.skip("no shipped model")
    shutil.copytree(zoo.path(name), tmp_path / name)
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path)
    return tmp_path / name


def test_info_shows_the_int8_variants(capsys):
    """`aekit info` of the shipped photo models names their int8 variants (7-bit weights since session 10):
    photos-r9 both networks (its encoder's y in 16 bits), photos-r9-hq its decoder only (with its encoder too, even
    with the output layer in fp32, it lost 0.36 dB, over the 0.3 dB limit); photos-r4 and photos-r4-hq (photos-r9
    and photos-r9-hq, each fine-tuned on the 1.5x grid, rescaled) both networks, their own (added to the rescaled
    graphs; photos-r4-hq's with the latent in 16 bits on both sides), and say what they were rescaled from."""
    assert main(["info", "photos-r9-hq"]) == 0
    out = capsys.readouterr().out
    assert "int8 variant decoder (" in out and "encoder_int8" not in out
    assert main(["info", "photos-r9"]) == 0
    out = capsys.readouterr().out
    assert "int8 variant encoder + decoder" in out and "kept in fp32" not in out
    assert "the encoder's output y in uint16" in out  # stage 12's encoder: y in 16 bits (0.50 dB lost in 8)
    for name, src in (("photos-r4", "photos-r9-g15-s6 (fe639500760cf9ce"),
                      ("photos-r4-hq", "photos-r9-hq-g15-s5 (2e762ce5b4a3707b")):
        assert main(["info", name]) == 0
        out = capsys.readouterr().out
        assert "int8 variant encoder + decoder" in out and f"rescaled     {src}, 1/9 at H/12) on a grid 1.5x" in out
    assert "the decoder's input y_hat in uint16" in out  # photos-r4-hq stage 4: 0.30 dB lost with y_hat in 8 bits


def test_info_agrees_with_the_card(capsys):
    """`aekit info NAME` and `aekit models show NAME` give one speed (the card's quiet measurement) and the
    whole training, not only the checkpoint's last stage."""
    card = json.loads((zoo.path("photos-r9") / "card.json").read_text())
    assert main(["info", "photos-r9"]) == 0
    out = capsys.readouterr().out
    speed = card["speed"]["mp_per_s"]
    assert f"measured {speed['encoder']} / {speed['decoder']} MP/s" in out
    assert f"{card['training']['epochs']} epochs, {card['training']['time_s']} s over all stages" in out


def test_tampered_onnx_is_refused(tmp_zoo):
    enc = tmp_zoo / "encoder.onnx"
    data = bytearray(enc.read_bytes())
    data[-1] ^= 1
    enc.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match|hash"):
        load_manifest(tmp_zoo)


def test_card_that_disagrees_fails_the_check(tmp_zoo):
    card = json.loads((tmp_zoo / "card.json").read_text())
    card["model_id"] = "0" * 16
    del card["heldout"]["default"]
    (tmp_zoo / "card.json").write_text(json.dumps(card))
    bad = ezoo.check(tmp_zoo.name)
    assert any("card says model" in b for b in bad) and any("lacks default" in b for b in bad)


def test_resolve_model_prefers_existing_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_model("no-such-model") == Path("no-such-model")  # unknown: the caller's error names it
    if NAMES:
        assert resolve_model(NAMES[0]) == zoo.path(NAMES[0])
        (tmp_path / NAMES[0]).mkdir()
        assert resolve_model(NAMES[0]) == Path(NAMES[0])  # a folder of that name here wins


def test_unknown_model_error_lists_the_zoo():
    with pytest.raises(ModelError, match="shipped model"):
        load_manifest(model_arg("photos-r5"))


CLI_MODEL_ARGS = [  # (argv with NAME for the model, attribute of the parsed args)
    (["compress", "in", "-m", "NAME", "-o", "out"], "model"),
    (["decompress", "in", "-o", "out", "-m", "NAME"], "models"),
    (["evaluate", "in", "-m", "NAME"], "model"),
    (["denoise", "in", "-m", "NAME", "-o", "out"], "model"),
    (["dump", "x.ael", "-m", "NAME"], "models"),
    (["info", "NAME"], "model"),
    (["screen", "NAME", "in"], "model"),
    (["bench-detect", "NAME", "in", "--cal", "cal"], "model"),
    (["detector", "evaluate", "NAME", "in"], "model"),
    (["bench", "NAME"], "model"),
    (["serve", "NAME"], "model"),
    (["features", "NAME", "in", "-o", "f.npz"], "model"),
    (["probe", "NAME", "--train", "a", "--test", "b"], "model"),
]


@pytest.mark.parametrize("argv,attr", CLI_MODEL_ARGS, ids=lambda x: x[0] if isinstance(x, list) else None)
def test_every_cli_resolves_model_names(argv, attr):
    name = NAMES[0] if NAMES else pytest.skip("no shipped model")
    try:
        args = build_parser().parse_args([name if a == "NAME" else a for a in argv])
    except SystemExit:
        pytest.fail(f"aekit {' '.join(argv)} does not parse")
    value = getattr(args, attr)
    assert (value[0] if isinstance(value, list) else value) == str(zoo.path(name))


def _gray_images(folder: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    from aekit.images import save_image

    for i in range(n):  # smooth blobs, like a garment on black
        yy, xx = np.mgrid[:28, :28]
        im = 200 * np.exp(-((yy - 14) ** 2 + (xx - 10 - 3 * i) ** 2) / 60) + rng.normal(0, 3, (28, 28))
        save_image(np.clip(im, 0, 255).astype(np.uint8)[:, :, None], folder / f"g{i}.png")
    return folder


@pytest.mark.skipif("fmnist-r4" not in NAMES, reason="fmnist-r4 not shipped")
def test_compress_by_name_and_decompress_without_flags(tmp_path, monkeypatch, caplog):
    src = _gray_images(tmp_path / "src")
    monkeypatch.chdir(tmp_path)  # no ./models here, no $AEKIT_MODELS: the file's id is found in the zoo
    monkeypatch.delenv("AEKIT_MODELS", raising=False)
    assert main(["compress", "src", "-m", "fmnist-r4", "-o", "lat"]) == 0
    assert main(["decompress", "lat", "-o", "out"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == ["g0.png", "g1.png", "g2.png"]
    # -m naming another model than the files' own: they still decode (by id), and one line says with which
    caplog.clear()
    assert main(["decompress", "lat", "-o", "out2", "-m", "fmnist-r9"]) == 0
    said = [r.getMessage() for r in caplog.records if "is not in" in r.getMessage()]
    assert len(said) == 1 and said[0].endswith("decoding with the shipped model fmnist-r4 (the files name it)")
    # not when nothing was named (the API's default search), nor when -m holds a link to the model's folder
    from aekit.codec import decompress_file

    caplog.clear()
    decompress_file(next((tmp_path / "lat").rglob("*.ael")), tmp_path / "api.png")
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "fm").symlink_to(zoo.path("fmnist-r4"))
    assert main(["decompress", "lat", "-o", "out3", "-m", "mods"]) == 0
    assert not [r for r in caplog.records if "is not in" in r.getMessage()]


@pytest.mark.skipif("fmnist-detect" not in NAMES, reason="fmnist-detect not shipped")
def test_screen_by_name(tmp_path):
    src = _gray_images(tmp_path / "src" / "trouser")
    code = main(["screen", "fmnist-detect", str(tmp_path / "src"), "--out", str(tmp_path / "screen")])
    assert code in (0, 1)
    assert (tmp_path / "screen.jsonl").is_file()


def test_models_lists_shows_and_checks(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in NAMES)
    assert main(["models", "check"]) == 0
    if NAMES:
        assert main(["models", "show", NAMES[0]]) == 0
        out = capsys.readouterr().out
        assert "## Training" in out and "## Known limits" in out
    for name in NAMES:  # speed is a property of every shipped model (issue 17): GFLOP/MP and measured MP/s
        assert main(["models", "show", name]) == 0
        out = capsys.readouterr().out
        assert "## Speed" in out and "GFLOP per megapixel: encoder" in out and "measured MP/s" in out
    assert main(["models", "show", "nope"]) == 2


def test_readme_table_is_current():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert ezoo.table(markdown=True) in readme, "README's model table is stale: python -m aekit.bench.zoo readme"


@pytest.mark.skipif("photos-r9" not in NAMES, reason="photos-r9 not shipped")
def test_demo_round_trips_bundled_photos_with_the_zoo(tmp_path, capsys):
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    assert main(["demo", "--out", str(tmp_path), "--model", "photos-r9", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "astronaut.png" in out and "held out" in out and "JPEG" in out  # astronaut is in PHOTO_TEST
    assert "`aekit models show photos-r9`" in out  # the hint names the model the demo ran
    assert (tmp_path / "latents" / "photos-r9" / "astronaut.png.ael").is_file()
    assert (tmp_path / "restored" / "photos-r9" / "astronaut.png").is_file()


@pytest.mark.skipif("fmnist-detect" not in NAMES, reason="fmnist-detect not shipped")
def test_calibrate_refuses_to_write_into_the_package(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = (zoo.path("fmnist-detect") / "manifest.json").read_bytes()
    assert main(["calibrate", "fmnist-detect", str(_gray_images(tmp_path / "normal" / "trouser"))]) == 2
    assert "calibrate a copy" in capsys.readouterr().err
    assert (zoo.path("fmnist-detect") / "manifest.json").read_bytes() == before


def test_gpu_recipe_names_shipped_models_and_refuses_others():
    """bench/train_gpu.sh (the prepared device run): parses, and an unknown model is one line and exit 2 before
    anything installs or trains. Its end-to-end check is `DEVICE=cpu SMOKE=1 bash bench/train_gpu.sh photos-r4 0.2`
    (minutes on a CPU: not part of the suite)."""
    import re
    import subprocess

    script = Path(__file__).resolve().parents[1] / "bench" / "train_gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    names = re.findall(r"^  (photos-[\w-]+)\)", script.read_text(), re.M)
    assert names and all(n in EXPECTED for n in names)
    r = subprocess.run(["bash", str(script), "photos-r5"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown model photos-r5" in r.stderr
