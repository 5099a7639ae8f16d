"""Latent files written by format version 1 (and a version-5 coder-5 file) still decode; `aekit dump` describes them.

The fixture (tests/fixtures/v1/, README there) was written by the last aekit that wrote version 1;
a change that breaks reading it fails here.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from aekit.cli import main
from aekit.codec.core import Decoder
from aekit.codec.dump import describe
from aekit.images import load_image
from aekit.metrics import psnr
from conftest import ROOT_TESTS

V1 = ROOT_TESTS / "fixtures" / "v1"
SYMBOLS_SHA256 = "b8b7c086708a22e1163b3b6a7f292410b3c0b7ecd52beabea024c7db68b682fd"
MODEL_ID = "216c7178e107c61f"


def test_v1_header_fields():
    d = describe(V1 / "camera.png.ael", [V1 / "model"])
    assert d["format_version"] == 1 and d["model_id"] == MODEL_ID and d["model"] == str(V1 / "model")
    assert (d["image"], d["mode"], d["factor"], d["latent_shape"], d["levels"]) == ("28x28", "L", 4, [4, 7, 7], 256)
    assert (d["file_bytes"], d["header_bytes"], d["payload_bytes"], d["coder"]) == (227, 31, 196, "raw")
    assert d["bpp"] == round(8 * 227 / 784, 4)


def test_v1_file_still_decodes():
    data = (V1 / "camera.png.ael").read_bytes()
    decoder = Decoder([V1 / "model"])
    _, q = decoder.symbols(data)
    assert hashlib.sha256(np.ascontiguousarray(q).tobytes()).hexdigest() == SYMBOLS_SHA256
    decoded, header = decoder.decompress(data)
    source, then = load_image(V1 / "camera.png", 1)[0], load_image(V1 / "camera.decoded.png", 1)[0]
    assert header.mode == "L" and decoded.shape == source.shape == (28, 28, 1)
    assert np.abs(decoded.astype(int) - then.astype(int)).max() <= 1
    assert psnr(source, decoded) >= 19.5


def test_v1_file_through_the_cli(tmp_path, capsys):
    assert main(["decompress", str(V1 / "camera.png.ael"), "-o", str(tmp_path / "out.png"),
                 "-m", str(V1 / "model")]) == 0
    assert psnr(load_image(V1 / "camera.png", 1)[0], load_image(tmp_path / "out.png", 1)[0]) >= 19.5
    capsys.readouterr()
    assert main(["dump", str(V1 / "camera.png.ael"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_id"] == MODEL_ID


def test_dump_names_bad_files_and_exits_2(tmp_path, capsys):
    shutil.copy(V1 / "camera.png.ael", tmp_path / "good.png.ael")
    (tmp_path / "bad.png.ael").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    assert main(["dump", str(tmp_path)]) == 2
    cap = capsys.readouterr()
    assert "file_bytes: 227" in cap.out and "bad.png.ael" in cap.err and "not an aekit latent file" in cap.err


V5 = ROOT_TESTS / "fixtures" / "v5"


def test_v5_coder_5_file_still_decodes_with_the_shipped_photos_r9():
    """tests/fixtures/v5 (README there): a coder-5 file of photos-r9 decodes to the symbols it was written with,
    and `aekit dump` names its coder; a change of coder 5's layout or context rule fails here."""
    from aekit.export.manifest import resolve_model

    model = resolve_model("photos-r9")
    d = describe(V5 / "astronaut-128.png.ael", [model])
    assert (d["format_version"], d["model_id"], d["coder"]) == (5, "c3f234b202b9455b", "ans-hyperprior-context")
    _, q = Decoder([model]).symbols((V5 / "astronaut-128.png.ael").read_bytes())
    assert q.shape == (48, 11, 11)
    assert hashlib.sha256(np.ascontiguousarray(q).tobytes()).hexdigest() == \
        "2de2cd4805af5afca27f056e4f7c2fa3fb6045e7e3ce7bd2b9afe1c3acf7eedf"


V7 = ROOT_TESTS / "fixtures" / "v7"


@pytest.mark.parametrize("name,fixture,coder,digest", [
    ("photos-r9", "astronaut-256-coder8.png.ael", "ans-channel-spatial",
     "86cf0c77b605281cdb437756899fa0cb4ba3722b81a70643cc8343b12e671ed0"),
    ("photos-r9-fast", "astronaut-256-coder7.png.ael", "ans-hyperprior-spatial",
     "15752854555e3fa4a6a528edf91ff7505a8c03dc4823b3e1e7e0b0a131ea03ef"),
])
def test_v7_coder_7_and_8_files_still_decode_with_the_shipped_models(name, fixture, coder, digest):
    """tests/fixtures/v7 (README there): a coder-8 file of photos-r9 and a coder-7 file of photos-r9-fast decode to
    the symbols they were written with; a change of coder 7/8's layout, passes or prediction rule fails here."""
    from aekit.export.manifest import resolve_model

    model = resolve_model(name)
    d = describe(V7 / fixture, [model])
    assert (d["format_version"], d["coder"]) == (7, coder)
    _, q = Decoder([model]).symbols((V7 / fixture).read_bytes())
    assert q.shape == (48, 22, 22)
    assert hashlib.sha256(np.ascontiguousarray(q).tobytes()).hexdigest() == digest


V8 = ROOT_TESTS / "fixtures" / "v8"


def test_v8_post_filter_file_still_decodes_with_the_shipped_model():
    """tests/fixtures/v8 (README there): a photos-r9 file with a post-filter block decodes to the symbols and the
    block it was written with, and its decoded pixels are the rule applied to the networks' output."""
    from aekit.codec.format import parse
    from aekit.codec.postfilter import PostFilter, apply
    from aekit.export.manifest import resolve_model

    model = resolve_model("photos-r9")
    data = (V8 / "rocket-256-postfilter.png.ael").read_bytes()
    h, _ = parse(data)
    assert (data[4], h.coder, len(h.post_filter)) == (8, 8, 39)
    d = describe(V8 / "rocket-256-postfilter.png.ael")  # aekit dump
    assert (d["format_version"], d["flags"], d["post_filter_bytes"], d["header_bytes"]) == (8, ["filter"], 39, 34)
    assert hashlib.sha256(h.post_filter).hexdigest() == "3a3fd07f756cff0140f3864a3ebe4ce3ddd93cff3f93b216945b5ed82317e1e0"
    dec = Decoder([model])
    _, q = dec.symbols(data)
    assert hashlib.sha256(np.ascontiguousarray(q).tobytes()).hexdigest() == \
        "2fa0e2cdf831b04d7c9aa65fb46c0bf897d82b04c7dad4f31e6a5bd9f90e190e"
    raw = dec._reconstruct(h, q[None])[0]
    assert np.array_equal(dec.reconstruct(h, q[None])[0], apply(raw, PostFilter.from_bytes(h.post_filter)[0]))


SUPERSEDED = ROOT_TESTS / "fixtures" / "superseded"


def test_a_file_of_a_superseded_id_decodes_with_the_shipped_model_that_extends_it():
    """tests/fixtures/superseded (README there): written by the 12-quality photos-r4-hq (stage 5, 45ed2772436a5f41);
    the shipped one has 13 and another id."""
    from skimage.data import rocket

    from aekit.export.manifest import load_manifest
    from aekit.zoo import path

    data = (SUPERSEDED / "rocket-128-r4hq-q12.png.ael").read_bytes()
    shipped = load_manifest(path("photos-r4-hq"))
    assert {"model_id": "45ed2772436a5f41", "qualities": 12} in shipped["supersedes"]
    assert shipped["model_id"] != "45ed2772436a5f41" and len(shipped["entropy"]["qualities"]) > 12
    decoder = Decoder([])
    header, q = decoder.symbols(data)
    assert (header.model_id, header.quality) == ("45ed2772436a5f41", 12)
    assert hashlib.sha256(np.ascontiguousarray(q).tobytes()).hexdigest() == \
        "b4780acf212cc20d266997ef0756fef479c9ea942c623ef463e4faa62d267eb2"
    decoded, _ = decoder.decompress(data)
    assert psnr(rocket()[:128, :128], decoded) > 32.0
