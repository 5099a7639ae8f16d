"""The HTTP API of `aekit serve`, in-process (FastAPI TestClient) and on loopback: every endpoint and error."""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e \".[serve]\")")
pytest.importorskip("httpx", reason="httpx is not installed (pip install -e \".[test]\")")

import warnings  # noqa: E402

with warnings.catch_warnings():  # starlette's notice about httpx2 is not ours to act on
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

from aekit.serve.app import create_app, serve_in_thread  # noqa: E402
from aekit.serve.config import ServeConfig  # noqa: E402


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images(fmnist_dir) -> dict[str, list[Path]]:
    """Real Fashion-MNIST test PNGs by class (a few per class)."""
    return {d.name: sorted(d.iterdir())[:6] for d in sorted((fmnist_dir / "test").iterdir())}


@pytest.fixture(scope="module")
def app_cfg(tiny_model, fmnist_dir, tmp_path_factory) -> ServeConfig:
    return ServeConfig(model=str(tiny_model(1, 4, "fmnist")), calibration=str(fmnist_dir / "test"), calibration_limit=20,
                       alpha=0.1, max_upload_bytes=64 * 1024, max_pixels=200 * 200,
                       workdir=str(tmp_path_factory.mktemp("serve-work")))


@pytest.fixture(scope="module")
def client(app_cfg):
    with TestClient(create_app(app_cfg)) as c:
        yield c


def post_file(client, url: str, data: bytes, name: str = "x.png", ctype: str = "image/png", **form):
    return client.post(url, files={"file": (name, data, ctype)}, data=form or None)


def assert_error(r, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == status and all(w in body["error"] for w in words), body
    return body


# ---- endpoints ----------------------------------------------------------------------------
def test_health_model_status_and_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    m = client.get("/v1/model").json()
    assert m["manifest"]["format"] == "aekit-model" and "latent_hist" not in m["manifest"]
    assert m["serve"]["version"] == 0 and m["serve"]["calibrated"] and len(m["serve"]["classes"]) == 10
    s = client.get("/v1/status").json()
    assert s["learning"] == {"enabled": False} and s["model_id"] == m["manifest"]["model_id"]
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/v1/compress", "/v1/decompress", "/v1/reconstruct", "/v1/screen", "/v1/model", "/healthz"):
        assert p in paths
    assert "multipart/form-data" in paths["/v1/screen"]["post"]["requestBody"]["content"]


def test_compress_decompress_round_trip(client, images):
    src = images["bag"][0]
    r = post_file(client, "/v1/compress", src.read_bytes(), name="my bag.png")
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert 'filename="my bag.ael"' in r.headers["content-disposition"]
    assert r.content[:4] == b"\x89AEL" and len(r.content) < 28 * 28
    d = client.post("/v1/decompress", content=r.content, headers={"content-type": "application/octet-stream"})
    assert d.status_code == 200 and d.headers["content-type"] == "image/png"
    out = np.asarray(Image.open(io.BytesIO(d.content)))
    orig = np.asarray(Image.open(src))
    assert out.shape == orig.shape == (28, 28)
    assert 10 * np.log10(255**2 / np.mean((out.astype(float) - orig) ** 2)) > 12  # a real reconstruction


def test_reconstruct_raw_body_and_headers(client, images):
    src = images["trouser"][0]
    r = client.post("/v1/reconstruct", content=src.read_bytes(), headers={"content-type": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (28, 28)
    assert 0 < int(r.headers["x-latent-bytes"]) < 784 and float(r.headers["x-psnr"]) > 12
    assert r.headers["x-model-version"] == "0"


def test_jpeg_upload_accepted(client, images):
    buf = io.BytesIO()
    Image.open(images["coat"][0]).save(buf, format="JPEG", quality=95)
    r = post_file(client, "/v1/reconstruct", buf.getvalue(), name="coat.jpg", ctype="image/jpeg")
    assert r.status_code == 200


def test_screen_record(client, images):
    r = post_file(client, "/v1/screen", images["sneaker"][0].read_bytes(), **{"class": "sneaker"})
    assert r.status_code == 200, r.text
    s = r.json()
    assert s["class"] == "sneaker" and s["n_calibration"] == 20 and s["alpha"] == 0.1
    assert 0 < s["p_value"] <= 1 and s["score"] > 0
    assert s["is_anomaly"] == (s["score"] > s["threshold"]) and s["verdict"] in ("normal", "anomaly")
    q = client.post("/v1/screen?class=sneaker", content=images["sneaker"][0].read_bytes(),
                    headers={"content-type": "image/png"})
    assert q.json()["score"] == pytest.approx(s["score"])  # query parameter = form field


def test_screen_class_errors(client, images):
    data = images["bag"][0].read_bytes()
    assert_error(post_file(client, "/v1/screen", data), 422, "class", "bag")
    assert_error(post_file(client, "/v1/screen", data, **{"class": "zebra"}), 422, "zebra")


def test_analyze_gives_everything_the_page_shows(client, images):
    r = post_file(client, "/v1/analyze", images["dress"][0].read_bytes(), name="dress.png", **{"class": "dress"})
    j = r.json()
    assert r.status_code == 200 and j["latent_name"] == "dress.ael" and j["raw_bytes"] == 784
    assert j["ratio"] == pytest.approx(784 / j["latent_bytes"], rel=0.01)
    import base64

    assert base64.b64decode(j["latent"])[:4] == b"\x89AEL"
    assert Image.open(io.BytesIO(base64.b64decode(j["reconstruction_png"]))).size == (28, 28)
    assert j["screen"]["verdict"] in ("normal", "anomaly")


# ---- bad input ----------------------------------------------------------------------------
def test_wrong_types_refused(client, images):
    assert_error(post_file(client, "/v1/compress", b"GIF89a" + bytes(40), name="a.gif", ctype="image/gif"),
                 415, "a.gif", "image/gif")
    assert_error(post_file(client, "/v1/compress", b"hello, not an image", name="a.png"), 415, "a.png", "not a PNG")
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="BMP")
    assert_error(post_file(client, "/v1/reconstruct", buf.getvalue(), name="b.bmp", ctype="application/octet-stream"),
                 415, "b.bmp")
    assert_error(client.post("/v1/screen", content=b"{}", headers={"content-type": "application/json"}), 415, "json")


def test_corrupt_empty_and_missing_uploads(client, images):
    data = images["bag"][0].read_bytes()
    body = assert_error(post_file(client, "/v1/compress", data[:60], name="cut.png"), 422, "cut.png", "cannot decode")
    assert "/tmp" not in body["error"] and "work" not in body["error"]  # the server's paths never leak
    assert_error(post_file(client, "/v1/compress", b"", name="e.png"), 422, "empty")
    assert_error(client.post("/v1/compress", data={"x": "1"}, files={"other": ("a.png", data, "image/png")}),
                 422, "'file'")
    assert_error(client.post("/v1/compress", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"}),
                 400, "multipart")


def test_limits_size_and_pixels(client):
    big = np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8)  # 90 kB PNG > 64 kB
    assert_error(post_file(client, "/v1/compress", png_bytes(big), name="big.png"), 413, "limit")
    bomb = png_bytes(np.zeros((400, 400), dtype=np.uint8))  # tiny file, 160,000 pixels > 40,000
    assert len(bomb) < 64 * 1024
    assert_error(post_file(client, "/v1/reconstruct", bomb, name="bomb.png"), 413, "bomb.png", "pixels")


def test_colour_image_refused_by_gray_model(client):
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    assert_error(post_file(client, "/v1/compress", png_bytes(rgb), name="red.png"), 422, "red.png", "colour")


def test_too_small_to_screen_is_refused_as_the_cli_refuses_it(client):
    """/v1/screen answers 422 for an image below the model's smallest side (aekit screen refuses it too);
    compress, like aekit compress, still codes it (padded)."""
    tiny = png_bytes(np.zeros((2, 2), dtype=np.uint8))
    assert_error(post_file(client, "/v1/screen", tiny, name="t.png"), 422, "2x2 is too small to screen")
    assert post_file(client, "/v1/compress", tiny, name="t.png").status_code == 200


def test_bad_latent_files(client, images, tiny_model, rgb_photos):
    ael = post_file(client, "/v1/compress", images["bag"][0].read_bytes()).content
    for bad, why in ((ael[:20], "truncated"), (b"not a latent", "not an aekit latent"),
                     (ael[:-1] + bytes([ael[-1] ^ 1]), "checksum")):
        assert_error(client.post("/v1/decompress", files={"file": ("z.ael", bad, "application/octet-stream")}),
                     422, "z.ael", why)
    assert_error(client.post("/v1/decompress", content=ael, headers={"content-type": "image/png"}), 415, "octet-stream")
    from aekit.codec.core import Codec

    other = Codec(tiny_model(3, 4)).compress(rgb_photos[0][:32, :32])  # a real file of another model
    assert_error(client.post("/v1/decompress", files={"file": ("o.ael", other, "application/octet-stream")}),
                 409, "o.ael", "not served here")


def test_timeout_answers_503(app_cfg, images):
    from dataclasses import replace

    with TestClient(create_app(replace(app_cfg, request_timeout_s=1e-6, workdir=None))) as c:
        assert_error(post_file(c, "/v1/reconstruct", images["bag"][0].read_bytes()), 503, "longer than")
        assert c.get("/healthz").status_code == 200


def test_cors_off_by_default_and_opt_in(app_cfg):
    from dataclasses import replace

    with TestClient(create_app(replace(app_cfg, workdir=None))) as c:
        r = c.get("/healthz", headers={"origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers
    with TestClient(create_app(replace(app_cfg, workdir=None, cors_origins=["http://ok.example"]))) as c:
        r = c.get("/healthz", headers={"origin": "http://ok.example"})
        assert r.headers["access-control-allow-origin"] == "http://ok.example"


def test_uploads_kept_only_when_asked_and_never_by_client_name(app_cfg, images, tmp_path):
    from dataclasses import replace

    work = tmp_path / "work"
    with TestClient(create_app(replace(app_cfg, workdir=str(work)))) as c:
        assert post_file(c, "/v1/compress", images["bag"][0].read_bytes()).status_code == 200
    assert not any((work / "tmp").iterdir())  # temporaries are gone; nothing kept
    keep = tmp_path / "keep"
    with TestClient(create_app(replace(app_cfg, workdir=None, keep_uploads=str(keep)))) as c:
        data = images["bag"][1].read_bytes()
        r = post_file(c, "/v1/compress", data, name="../../../escape.png")
        assert r.status_code == 200 and 'filename="escape.ael"' in r.headers["content-disposition"]
        assert post_file(c, "/v1/compress", b"junk", name="x.png").status_code == 415  # refused: not kept
    kept = list(keep.iterdir())
    assert len(kept) == 1 and kept[0].read_bytes() == data and "escape" not in kept[0].name
    assert not (tmp_path.parent / "escape.png").exists()


def test_uncalibrated_model_says_so(tiny_model, images):
    with TestClient(create_app(ServeConfig(model=str(tiny_model(1, 4))))) as c:
        assert_error(post_file(c, "/v1/screen", images["bag"][0].read_bytes()), 409, "not calibrated")
        j = post_file(c, "/v1/analyze", images["bag"][0].read_bytes()).json()
        assert j["screen"]["calibrated"] is False and j["latent_bytes"] > 0


def test_concurrent_uploads_on_loopback(app_cfg, images):
    """16 threads x 4 mixed requests against a real uvicorn server: all answered, none 5xx."""
    import httpx
    from dataclasses import replace

    files = [p for ps in images.values() for p in ps]
    with serve_in_thread(create_app(replace(app_cfg, workdir=None))) as url:
        def one(i: int) -> int:
            p = files[i % len(files)]
            with httpx.Client(base_url=url, timeout=60) as h:
                url_path = ("/v1/reconstruct", f"/v1/screen?class={p.parent.name}", "/v1/compress")[i % 3]
                r = h.post(url_path, content=p.read_bytes(), headers={"content-type": "image/png"})
                bad = h.post("/v1/compress", content=b"junk", headers={"content-type": "image/png"})
                return r.status_code * 1000 + bad.status_code

        with ThreadPoolExecutor(16) as ex:
            codes = list(ex.map(one, range(64)))
    assert set(codes) == {200415}, codes


# ---- command line and imports ---------------------------------------------------------------
def test_cli_errors_name_the_problem(capsys, tiny_model, tmp_path):
    from aekit.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0 and "--learn" in capsys.readouterr().out
    assert main(["serve", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    model = str(tiny_model(1, 4))
    assert main(["serve", model, "--learn", "--checkpoint", str(tmp_path / "no.pt")]) == 2
    assert "no.pt" in capsys.readouterr().err
    assert main(["serve", model, "--calibration", str(tmp_path / "nocal")]) == 2
    assert "nocal" in capsys.readouterr().err
    import socket

    with socket.socket() as busy:  # a port someone else listens on: one line, exit 2, before the model loads
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(tiny_model(1, 4)), "--port", str(port)]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_serving_without_learning_never_imports_torch(tiny_model, images):
    import subprocess
    import sys

    code = (
        "import sys, warnings; warnings.simplefilter('ignore')\n"
        "from fastapi.testclient import TestClient\n"
        "from aekit.serve.app import create_app\nfrom aekit.serve.config import ServeConfig\n"
        f"c = TestClient(create_app(ServeConfig(model={str(tiny_model(1, 4))!r})))\n"
        f"data = open({str(images['bag'][0])!r}, 'rb').read()\n"
        "assert c.post('/v1/reconstruct', content=data, headers={'content-type': 'image/png'}).status_code == 200\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
