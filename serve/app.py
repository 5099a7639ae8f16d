"""The FastAPI application: upload page, /v1 API, limits, error mapping, online learning hooks.

    from aekit.serve.app import create_app; app = create_app(ServeConfig(model="models/fmnist-r4"))
Every expected failure is a 4xx JSON body {"error": "...", "status": N} naming the upload, its
status chosen by the error's type (aekit.serve.errors). Uploads stay in memory (aekit.serve.uploads);
only --keep-uploads and learned versions write, inside the server's own folders. Heavy requests
(decode, encode, screen; the work is aekit.serve.server.Server's) run at most `max_concurrent` at a
time; a request that finds `max_waiting` others queued answers 503 at once.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from aekit.machine import release_free_heap
from aekit.metrics import psnr
from aekit.codec.jobs import encode_image_file
from aekit.serve.config import ServeConfig
from aekit.serve.errors import ApiError, add_error_handlers, status_of
from aekit.serve.server import Server, anomaly_map_record
from aekit.serve.uploads import Upload, display_name, read_upload, sniff_image

# Names importable from here since before the split into errors / uploads / server.
__all__ = ["ApiError", "Server", "Slots", "Upload", "add_error_handlers", "anomaly_map_record", "create_app",
           "display_name", "png_response", "read_upload", "serve_in_thread", "sniff_image", "status_of"]

CSP = "default-src 'self'; img-src 'self' blob: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

IMAGE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}, "class": {"type": "string"}}}},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}}
LATENT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}}}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


def png_response(image_or_bytes: np.ndarray | bytes, headers: dict[str, str]) -> Response:
    data = image_or_bytes if isinstance(image_or_bytes, bytes) else encode_image_file(image_or_bytes, Path("x.png"))
    return Response(data, media_type="image/png", headers=headers)


@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run the app with uvicorn in a background thread (tests, notebooks); yields its base URL."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="aekit-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"aekit serve did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(30)


class Slots:
    """At most `max_concurrent` heavy requests at once, at most `max_waiting` queued, each timed out."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.heavy = asyncio.Semaphore(max(1, cfg.max_concurrent))
        self.waiting = 0  # requests queued for a slot (one event loop: no lock needed)
        self.busy = 0  # requests holding a slot

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) in a worker thread; 503 after the request timeout."""
        try:
            return await asyncio.wait_for(run_in_threadpool(fn, *args), self.cfg.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(503, f"request took longer than {self.cfg.request_timeout_s:g} s; "
                                "try a smaller image or retry later") from None

    async def handle(self, request: Request, fn: Callable[[Upload], Any]) -> tuple[Upload, Any]:
        """Read the upload and run fn on it inside one of the `max_concurrent` slots.

        The slot is taken before the body is read, so queued requests hold no upload in memory;
        the worker thread always finishes before its slot is given back (anyio does not abandon
        threads), so at most max_concurrent images are ever decoded at once.
        """
        cfg = self.cfg
        if self.waiting >= cfg.max_waiting:
            raise ApiError(503, f"server busy ({cfg.max_concurrent} requests running, {self.waiting} waiting); "
                                "retry later")
        self.waiting += 1
        try:
            await asyncio.wait_for(self.heavy.acquire(), cfg.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(503, f"no free slot within {cfg.request_timeout_s:g} s; retry later") from None
        finally:
            self.waiting -= 1
        self.busy += 1
        try:
            up = await read_upload(request, cfg.max_upload_bytes)
            return up, await self.run(fn, up)
        finally:
            self.busy -= 1
            self.heavy.release()
            if self.busy == 0 and self.waiting == 0:  # idle after a burst: the images' freed pages go back to the
                release_free_heap()  # OS (glibc keeps them otherwise: RSS stayed at the burst's peak)


def create_app(cfg: ServeConfig) -> FastAPI:
    """Build the app (models loaded now; the learner starts with the app's lifespan)."""
    server = Server(cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if server.learner:
            server.learner.start()
        try:
            yield
        finally:
            server.close()

    app = FastAPI(title="aekit serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Autoencoder codec and anomaly screening over HTTP (see README, section Serve).")
    app.state.server = server
    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"])
    add_error_handlers(app)
    slots = Slots(cfg)
    add_info_routes(app, server)
    add_codec_routes(app, server, slots)
    add_screen_routes(app, server, slots)
    return app


def add_info_routes(app: FastAPI, server: Server) -> None:
    """The page, liveness, the model's manifest and the server's status (no upload, no slot)."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(resources.files("aekit.serve").joinpath("page.html").read_text(encoding="utf-8"),
                            headers={"Content-Security-Policy": CSP})

    @app.get("/healthz", summary="liveness")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model", summary="the current model's manifest (histogram and calibration scores left out)")
    def model() -> dict[str, Any]:
        m = {k: v for k, v in server.store.current.manifest.items() if not k.startswith("_") and k != "latent_hist"}
        if isinstance(m.get("calibration"), dict):
            m["calibration"] = {**m["calibration"], "classes": {
                c: {k: v for k, v in cc.items() if k != "scores"} for c, cc in m["calibration"]["classes"].items()}}
        return {"manifest": m, "serve": server.status()}

    @app.get("/v1/status", summary="model version, calibration, learning counters and running loss")
    def status() -> dict[str, Any]:
        return server.status()


def add_codec_routes(app: FastAPI, server: Server, slots: Slots) -> None:
    """compress, decompress and reconstruct: bytes in, bytes out, model id and version in headers."""

    @app.post("/v1/compress", summary="image (PNG/JPEG) -> latent file (.ael)", openapi_extra=IMAGE_BODY,
              response_class=Response, responses={200: {"content": {"application/octet-stream": {}}}})
    async def compress(request: Request) -> Response:
        up, (data, snap) = await slots.handle(request, server.compress)
        name = up.name.rsplit(".", 1)[0] + ".ael"
        return Response(data, media_type="application/octet-stream", headers={
            "Content-Disposition": f'attachment; filename="{name}"', "X-Model-Id": snap.model_id,
            "X-Model-Version": str(snap.version)})

    @app.post("/v1/decompress", summary="latent file (.ael) -> PNG", openapi_extra=LATENT_BODY,
              response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def decompress(request: Request) -> Response:
        _, (data, version) = await slots.handle(request, server.decompress)
        return png_response(data, {"X-Model-Version": str(version)})

    @app.post("/v1/reconstruct", summary="image -> its reconstruction through the 8-bit latent (PNG)",
              openapi_extra=IMAGE_BODY, response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def reconstruct(request: Request) -> Response:
        _, (image, out, latent, snap) = await slots.handle(request, server.reconstruct)
        return png_response(out, {"X-Latent-Bytes": str(len(latent)), "X-Model-Id": snap.model_id,
                                  "X-Model-Version": str(snap.version), "X-PSNR": f"{psnr(image, out):.2f}"})


def add_screen_routes(app: FastAPI, server: Server, slots: Slots) -> None:
    """screen, analyze (the page's call) and learn: JSON answers."""
    cfg = server.cfg

    @app.post("/v1/screen", summary="image -> anomaly score, class threshold, conformal p-value, verdict "
              "(maps=1: and its anomaly map, PNG + float32 .npy in base64)",
              openapi_extra=IMAGE_BODY)
    async def screen(request: Request) -> dict[str, Any]:
        return (await slots.handle(request, server.screen))[1]

    @app.post("/v1/analyze", summary="the page's call: reconstruction, latent file, sizes and screening in one JSON",
              openapi_extra=IMAGE_BODY)
    async def analyze(request: Request) -> dict[str, Any]:
        return (await slots.handle(request, server.analyze))[1]

    @app.post("/v1/learn", summary="--learn: an image the operator marks as normal -> the training queue",
              openapi_extra=IMAGE_BODY)
    async def learn(request: Request) -> dict[str, Any]:
        if cfg.learn_token and request.headers.get("x-learn-token") != cfg.learn_token:
            raise ApiError(403, "/v1/learn needs the operator's token in the X-Learn-Token header")
        return (await slots.handle(request, server.learn))[1]
