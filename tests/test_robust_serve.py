"""Issue 14 §3/§5 for `aekit serve`: uploads never spool outside the server's folder, HTTP status by
error type, malformed EXIF is not a 500, and memory stays bounded under concurrent heavy requests.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e \".[serve]\")")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (pip install -e \".[test]\")")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from aekit.detector.calibration import CalibrationError  # noqa: E402
from aekit.export.manifest import ModelError  # noqa: E402
from aekit.images import ImageError, ImageLimitError  # noqa: E402
from aekit.serve.app import ApiError, create_app, status_of  # noqa: E402
from aekit.serve.config import ServeConfig  # noqa: E402
from aekit.serve.models import UnknownClassError  # noqa: E402


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def app_and_workdir(tiny_model, tmp_path):
    cfg = ServeConfig(model=str(tiny_model(1, 4)), workdir=str(tmp_path / "work"), max_upload_bytes=4 << 20)
    app = create_app(cfg)
    yield app, tmp_path / "work"
    app.state.server.close()


def test_status_by_error_type_not_message():
    assert status_of(ImageLimitError("x: too big")) == 413
    assert status_of(ImageError("x: exceeds the limit of 5 (words alone decide nothing)")) == 422
    assert status_of(UnknownClassError("class 'zebra' is unknown")) == 422
    assert status_of(CalibrationError("is unknown")) == 409  # a model state, whatever the text says
    assert status_of(ModelError("m")) == 409
    assert status_of(ApiError(503, "busy")) == 503


def test_multipart_uploads_never_spool_to_the_system_temp_folder(app_and_workdir, monkeypatch):
    """A 2 MB multipart part (starlette spools above 1 MB) stays in memory; control: the stock parser spools."""
    app, workdir = app_and_workdir
    spooled: list[str] = []
    real_rollover = tempfile.SpooledTemporaryFile.rollover

    def rollover(self):
        spooled.append("rollover")
        return real_rollover(self)

    created: list[str] = []
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*a, **k):
        fd, name = real_mkstemp(*a, **k)
        created.append(name)
        return fd, name

    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", rollover)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    blob = os.urandom(2 << 20)
    r = TestClient(app).post("/v1/decompress", files={"file": ("big.ael", blob, "application/octet-stream")})
    assert r.status_code == 422 and "big.ael" in r.json()["error"]  # parsed, then refused as no latent file
    assert spooled == [] and all(Path(n).resolve().is_relative_to(workdir.resolve()) for n in created)

    import asyncio

    from starlette.datastructures import Headers
    from starlette.formparsers import MultiPartParser

    body = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n" + blob + b"\r\n--b--\r\n")

    async def stock():
        async def chunks():
            yield body

        return await MultiPartParser(Headers({"content-type": "multipart/form-data; boundary=b"}), chunks()).parse()

    asyncio.run(stock())
    assert spooled == ["rollover"]  # the spy works: the framework's default would have spooled


def malformed_exif_jpeg() -> bytes:
    ifd = [(0x0112, 3, 1, struct.pack("<HH", 6, 0)), (0x010F, 5, 1, struct.pack("<I", 8))]
    exif = (b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(ifd))
            + b"".join(struct.pack("<HHI", *e[:3]) + e[3] for e in ifd) + struct.pack("<I", 0))
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 24), 120, np.uint8)).save(buf, "JPEG", exif=exif)
    return buf.getvalue()


def test_malformed_exif_is_accepted_not_a_500(app_and_workdir):
    app, _ = app_and_workdir
    r = TestClient(app).post("/v1/reconstruct", content=malformed_exif_jpeg(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (32, 24)  # orientation 6 applied: 24x32 stored


def test_a_latent_declaring_too_many_pixels_is_413_before_decoding(tiny_model, app_and_workdir):
    from aekit.codec.core import Codec

    app, _ = app_and_workdir
    data = Codec(tiny_model(1, 4)).compress(np.zeros((2048, 2048, 1), np.uint8))  # 4.2 Mpx, flat: tiny file
    server = app.state.server
    server.cfg.max_pixels = 1 << 20
    r = TestClient(app).post("/v1/decompress", content=data, headers={"content-type": "application/octet-stream"})
    assert r.status_code == 413 and "2048x2048" in r.json()["error"], r.text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RSS read from /proc (Linux)")
def test_memory_stays_bounded_under_concurrent_heavy_requests(tiny_model, tmp_path):
    """The issue's case: 7 KB flat 2048x2048 PNGs to /v1/reconstruct, many at once (4 took 104 MB -> 3.3 GB).

    Now: at most max_concurrent=2 decode at a time, images above 512x512 are coded in tiles, so
    the peak must stay far below one untiled request's ~1 GB. Figures go to serve/RESULTS.md by hand.
    """
    port, n = free_port(), 8
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "aekit.cli", "serve", str(tiny_model(1, 4)), "--port", str(port),
                          "--workdir", str(tmp_path / "work"), "--timeout", "300", "--max-concurrent", "2"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(url + "/healthz", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                assert p.poll() is None and time.monotonic() < deadline, p.stdout.read() if p.poll() else "timeout"
                time.sleep(0.3)
        flat = png(np.full((2048, 2048), 200, np.uint8))
        assert len(flat) < 20_000
        httpx.post(url + "/v1/reconstruct", content=png(np.full((64, 64), 200, np.uint8)),
                   headers={"content-type": "image/png"}, timeout=60).raise_for_status()  # warm: sessions built
        before = rss_mb(p.pid)
        t0 = time.monotonic()
        with ThreadPoolExecutor(n) as pool:
            codes = list(pool.map(lambda _: httpx.post(url + "/v1/reconstruct", content=flat,
                                                      headers={"content-type": "image/png"}, timeout=600).status_code,
                                  range(n)))
        seconds = time.monotonic() - t0
        after = rss_mb(p.pid)
    finally:
        p.terminate()
        p.wait(30)
    record = {"requests": n, "concurrent_clients": n, "max_concurrent": 2, "image": "2048x2048 flat PNG",
              "png_bytes": len(flat), "codes": codes, "seconds": round(seconds, 1),
              "rss_before_mb": round(before["VmRSS"], 1), "peak_mb": round(after["VmHWM"], 1),
              "rss_after_mb": round(after["VmRSS"], 1)}
    print("serve memory:", json.dumps(record))
    out = os.environ.get("AEKIT_SERVE_MEMORY_JSON")
    if out:
        Path(out).write_text(json.dumps(record, indent=1) + "\n")
    assert codes == [200] * n
    assert after["VmHWM"] - before["VmRSS"] < 600, record  # one untiled 4 Mpx request alone took ~1 GB
    assert after["VmRSS"] - before["VmRSS"] < 300, record  # and what is left afterwards is small
