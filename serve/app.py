"""The FastAPI application: upload page, /v1 API, limits, error mapping, online learning hooks.

    from aekit.serve.app import create_app; app = create_app(ServeConfig(model="models/fmnist-r4"))
Every expected failure is a 4xx JSON body {"error": "...", "status": N} naming the upload, its
status chosen by the error's type. Uploads stay in memory (multipart parts are never spooled to
the system temp folder); only --keep-uploads and learned versions write, inside the server's own
folders. Heavy requests (decode, encode, screen) run at most `max_concurrent` at a time; a
request that finds `max_waiting` others queued answers 503 at once.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import shutil
import tempfile
import time
import uuid
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartParser

from aekit.images import ImageError, ImageLimitError, NamedBytes, atomic_write_bytes, load_for_channels, psnr
from aekit.codec.core import CodecError
from aekit.codec.format import LatentFormatError
from aekit.codec.jobs import encode_image_file
from aekit.detector.calibration import CalibrationError
from aekit.detector.model import DetectorError
from aekit.export.entropy import EntropyError
from aekit.export.manifest import ModelError
from aekit.serve.config import ServeConfig
from aekit.serve.models import ModelStore, Snapshot, UnknownClassError, screen_one

SIGNATURES = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff"}
SUFFIX = {"image/png": ".png", "image/jpeg": ".jpg"}
ACCEPTED_TYPES = (*SIGNATURES, "application/octet-stream", "")  # declared types we then sniff
LATENT_TYPES = ("application/octet-stream", "application/x-aekit-latent", "")


class ApiError(Exception):
    """An answer other than 200: HTTP status and a one-line message naming the upload."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Upload:
    data: bytes  # the file's bytes
    name: str  # display name (sanitised client filename, or "upload")
    content_type: str  # declared media type ("" when none)
    fields: dict[str, str] = field(default_factory=dict)  # other form fields and query parameters


def display_name(name: str | None) -> str:
    """A client filename reduced to a safe basename for messages and download names (never a path)."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._ -]", "_", base).strip(" .")[:100]
    return base or "upload"


def status_of(e: Exception) -> int:
    """HTTP status of a domain error, by its type: limits 413, model/calibration state 409, bad input 422."""
    if isinstance(e, ApiError):
        return e.status
    if isinstance(e, ImageLimitError):
        return 413
    if isinstance(e, UnknownClassError):
        return 422  # a class the model was never calibrated on: bad input, not a model state
    if isinstance(e, (ModelError, CalibrationError)):
        return 409
    return 422  # ImageError, CodecError, LatentFormatError, EntropyError, DetectorError, ValueError


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"upload of {int(declared)} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"upload exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(request: Request, limit: int) -> Upload:
    """One file from multipart/form-data (field `file`) or a raw body; other fields kept as strings."""
    body = await read_body(request, limit + 64 * 1024)  # room for multipart headers
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fields = dict(request.query_params)
    if ctype != "multipart/form-data":
        if len(body) > limit:
            raise ApiError(413, f"upload exceeds the limit of {limit} bytes")
        return Upload(body, display_name(request.headers.get("x-filename")), ctype, fields)

    async def chunks():
        yield body

    parser = MultiPartParser(request.headers, chunks(), max_files=1, max_fields=8)
    parser.spool_max_size = len(body) + 1  # the part stays in memory, never in the system temp folder
    try:
        form = await parser.parse()
    except Exception as e:  # malformed multipart: starlette raises its own HTTP/parse errors
        raise ApiError(400, f"malformed multipart body ({getattr(e, 'detail', e)})") from None
    part = form.get("file")
    if part is None or isinstance(part, str):
        raise ApiError(422, "multipart upload without a file field named 'file'")
    data = await part.read()
    fields.update({k: v for k, v in form.items() if isinstance(v, str)})
    if len(data) > limit:
        raise ApiError(413, f"{display_name(part.filename)}: {len(data)} bytes exceeds the limit of {limit} bytes")
    return Upload(data, display_name(part.filename), (part.content_type or "").lower(), fields)


def sniff_image(up: Upload) -> str:
    """The upload's real type, image/png or image/jpeg; 415 for anything else."""
    if up.content_type not in ACCEPTED_TYPES:
        raise ApiError(415, f"{up.name}: content type {up.content_type} refused; send image/png or image/jpeg")
    if not up.data:
        raise ApiError(422, f"{up.name}: empty upload")
    for kind, sig in SIGNATURES.items():
        if up.data.startswith(sig):
            return kind
    raise ApiError(415, f"{up.name}: not a PNG or JPEG file (only image/png and image/jpeg are accepted)")


class Server:
    """State behind the app: config, work folder, model store, optional learner, counters."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.own_workdir = cfg.workdir is None
        self.workdir = Path(cfg.workdir or tempfile.mkdtemp(prefix="aekit-serve-")).resolve()
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        (self.workdir / "versions").mkdir(exist_ok=True)
        self.store = ModelStore(cfg, self.workdir / "versions")
        self.keep = Path(cfg.keep_uploads).resolve() if cfg.keep_uploads else None
        if self.keep:
            self.keep.mkdir(parents=True, exist_ok=True)
        self.learner = None
        if cfg.learn:
            from aekit.serve.learn import Learner

            self.learner = Learner(cfg, self.store, self.workdir)
        self.started = time.time()

    def close(self) -> None:
        if self.learner:
            self.learner.stop()
        if self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def decode_image(self, up: Upload, snap: Snapshot) -> tuple[np.ndarray, str]:
        """Upload -> (uint8 (H, W, C), mode) for the snapshot's model, decoded from memory."""
        kind = sniff_image(up)
        image, mode = load_for_channels(NamedBytes(up.data, up.name), snap.codec.channels, self.cfg.max_pixels)
        if self.keep:
            atomic_write_bytes(self.keep / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}{SUFFIX[kind]}",
                               up.data)
        return image, mode

    def learn(self, up: Upload) -> dict[str, Any]:
        """An image the operator marks as normal -> the training queue (the only way images get there)."""
        if not self.learner:
            raise ApiError(409, "online learning is off; start the server with --learn")
        image, _ = self.decode_image(up, self.store.current)
        if self.store.in_calibration_set(image):
            raise ApiError(409, f"{up.name}: this image is in the calibration set; images the model trains on "
                                "must not calibrate it (the false-positive guarantee needs unseen normals)")
        queued = self.learner.offer(image)
        return {"name": up.name, "queued": queued, "learning": self.learner.snapshot()}

    def status(self) -> dict[str, Any]:
        snap = self.store.current
        return {"version": snap.version, "model_id": snap.model_id, "calibrated": snap.calibrated,
                "classes": snap.detector.classes_ if snap.calibrated else [],
                "channels": snap.codec.channels, "ratio": snap.manifest["ratio"],
                "learning": self.learner.snapshot() if self.learner else {"enabled": False},
                "loaded_versions": {str(v): mid for mid, v in sorted(self.store.loaded().items(), key=lambda kv: kv[1])},
                "uptime_s": round(time.time() - self.started, 1),
                "limits": {"max_upload_bytes": self.cfg.max_upload_bytes, "max_pixels": self.cfg.max_pixels,
                           "request_timeout_s": self.cfg.request_timeout_s, "queue_size": self.cfg.queue_size}}

    # ---- the work of each endpoint (runs in a worker thread) ------------------------------
    def compress(self, up: Upload) -> tuple[bytes, Snapshot]:
        snap = self.store.current
        image, mode = self.decode_image(up, snap)
        return snap.codec.compress(image, mode), snap

    def decompress(self, up: Upload) -> tuple[bytes, int]:
        if up.content_type not in LATENT_TYPES:
            raise ApiError(415, f"{up.name}: content type {up.content_type} refused; send the .ael file "
                                "as application/octet-stream")
        from aekit.codec.format import read_header

        snap = self.store.current
        h = read_header(up.data, up.name)  # the declared size, checked before any decoding work
        if h.width * h.height > self.cfg.max_pixels:
            raise ImageLimitError(f"{up.name}: declares a {h.width}x{h.height} image, above this server's limit "
                                  f"of {self.cfg.max_pixels} pixels")
        try:
            image, header = snap.decoder.decompress(up.data, up.name)
        except ModelError:
            mid = h.model_id
            loaded = ", ".join(f"version {v} ({m})" for m, v in sorted(self.store.loaded().items(), key=lambda kv: kv[1]))
            was = self.store.versions.get(mid)
            made = f"model version {was} ({mid}), no longer loaded" if was is not None else f"model {mid}, not served here"
            raise ApiError(409, f"{up.name}: latent file made by {made}; loaded: {loaded}") from None
        return encode_image_file(image, Path("x.png")), self.store.versions.get(header.model_id, -1)

    def reconstruct(self, up: Upload) -> tuple[np.ndarray, np.ndarray, bytes, Snapshot]:
        snap = self.store.current
        image, mode = self.decode_image(up, snap)
        latent = snap.codec.compress(image, mode)
        out, _ = snap.decoder.decompress(latent, up.name)
        return image, out, latent, snap

    def screen(self, up: Upload) -> dict[str, Any]:
        snap = self.store.current
        image, _ = self.decode_image(up, snap)  # (H, W, model channels): gray is replicated for RGB models
        rec = screen_one(snap, image, up.fields.get("class") or None)
        if up.fields.get("maps", "").lower() in ("1", "true", "yes"):  # ?maps=1: the anomaly map too
            rec["map"] = anomaly_map_record(snap, image, rec["class"])
        return rec

    def analyze(self, up: Upload) -> dict[str, Any]:
        """Everything the page shows for one upload, in one JSON answer."""
        image, out, latent, snap = self.reconstruct(up)
        try:
            screening: dict[str, Any] = screen_one(snap, image, up.fields.get("class") or None)
        except (CalibrationError, DetectorError) as e:
            screening = {"error": str(e), "calibrated": snap.calibrated}
        h, w, c = image.shape
        name = up.name.rsplit(".", 1)[0] + ".ael"
        return {"name": up.name, "width": w, "height": h, "channels": c, "upload_bytes": len(up.data),
                "raw_bytes": h * w * c, "latent_bytes": len(latent), "latent_name": name,
                "ratio": round(h * w * c / len(latent), 2), "psnr": round(psnr(image, out), 2),
                "reconstruction_png": base64.b64encode(encode_image_file(out, Path("x.png"))).decode(),
                "latent": base64.b64encode(latent).decode(),
                "screen": screening, "model_id": snap.model_id, "version": snap.version}


def anomaly_map_record(snap: Snapshot, image: np.ndarray, cls: str) -> dict[str, Any]:
    """The per-pixel anomaly map of the calibrated score: shape, colour scale, PNG overlay
    ([image | map | colour scale]) and the raw float32 map as .npy bytes, both base64."""
    from aekit.detector.heatmap import map_panel

    det = snap.detector
    m = det.anomaly_maps(image[None], cls)[0]  # (H, W)
    scale = det.class_calibration(cls).map_scale
    buf = io.BytesIO()
    np.save(buf, m.astype(np.float32))
    return {"height": int(m.shape[0]), "width": int(m.shape[1]), "scale": scale, "max": float(m.max()),
            "png": base64.b64encode(encode_image_file(map_panel(image, m, scale), Path("x.png"))).decode(),
            "npy": base64.b64encode(buf.getvalue()).decode()}


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

    heavy = asyncio.Semaphore(max(1, cfg.max_concurrent))
    waiting = [0]  # requests queued for a slot (one event loop: no lock needed)

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.wait_for(run_in_threadpool(fn, *args), cfg.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(503, f"request took longer than {cfg.request_timeout_s:g} s; "
                                "try a smaller image or retry later") from None

    async def handle(request: Request, fn: Callable[[Upload], Any]) -> tuple[Upload, Any]:
        """Read the upload and run fn on it inside one of the `max_concurrent` slots.

        The slot is taken before the body is read, so queued requests hold no upload in memory;
        the worker thread always finishes before its slot is given back (anyio does not abandon
        threads), so at most max_concurrent images are ever decoded at once.
        """
        if waiting[0] >= cfg.max_waiting:
            raise ApiError(503, f"server busy ({cfg.max_concurrent} requests running, {waiting[0]} waiting); "
                                "retry later")
        waiting[0] += 1
        try:
            await asyncio.wait_for(heavy.acquire(), cfg.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(503, f"no free slot within {cfg.request_timeout_s:g} s; retry later") from None
        finally:
            waiting[0] -= 1
        try:
            up = await read_upload(request, cfg.max_upload_bytes)
            return up, await run(fn, up)
        finally:
            heavy.release()

    image_body = {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary"}, "class": {"type": "string"}}}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}}
    latent_body = {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary"}}}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(resources.files("serve").joinpath("page.html").read_text(encoding="utf-8"),
                            headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                     "style-src 'unsafe-inline'; script-src 'unsafe-inline'"})

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

    @app.post("/v1/compress", summary="image (PNG/JPEG) -> latent file (.ael)", openapi_extra=image_body,
              response_class=Response, responses={200: {"content": {"application/octet-stream": {}}}})
    async def compress(request: Request) -> Response:
        up, (data, snap) = await handle(request, server.compress)
        name = up.name.rsplit(".", 1)[0] + ".ael"
        return Response(data, media_type="application/octet-stream", headers={
            "Content-Disposition": f'attachment; filename="{name}"', "X-Model-Id": snap.model_id,
            "X-Model-Version": str(snap.version)})

    @app.post("/v1/decompress", summary="latent file (.ael) -> PNG", openapi_extra=latent_body,
              response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def decompress(request: Request) -> Response:
        _, (data, version) = await handle(request, server.decompress)
        return png_response(data, {"X-Model-Version": str(version)})

    @app.post("/v1/reconstruct", summary="image -> its reconstruction through the 8-bit latent (PNG)",
              openapi_extra=image_body, response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def reconstruct(request: Request) -> Response:
        _, (image, out, latent, snap) = await handle(request, server.reconstruct)
        return png_response(out, {"X-Latent-Bytes": str(len(latent)), "X-Model-Id": snap.model_id,
                                  "X-Model-Version": str(snap.version), "X-PSNR": f"{psnr(image, out):.2f}"})

    @app.post("/v1/screen", summary="image -> anomaly score, class threshold, conformal p-value, verdict "
              "(maps=1: and its anomaly map, PNG + float32 .npy in base64)",
              openapi_extra=image_body)
    async def screen(request: Request) -> dict[str, Any]:
        return (await handle(request, server.screen))[1]

    @app.post("/v1/analyze", summary="the page's call: reconstruction, latent file, sizes and screening in one JSON",
              openapi_extra=image_body)
    async def analyze(request: Request) -> dict[str, Any]:
        return (await handle(request, server.analyze))[1]

    @app.post("/v1/learn", summary="--learn: an image the operator marks as normal -> the training queue",
              openapi_extra=image_body)
    async def learn(request: Request) -> dict[str, Any]:
        if cfg.learn_token and request.headers.get("x-learn-token") != cfg.learn_token:
            raise ApiError(403, "/v1/learn needs the operator's token in the X-Learn-Token header")
        return (await handle(request, server.learn))[1]

    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every failure becomes {"error", "status"} JSON; domain errors are 4xx, never 500."""

    def body(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return body(e.status, e.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return body(e.status_code, str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return body(422, "; ".join(f"{'.'.join(map(str, x.get('loc', ())))}: {x.get('msg')}" for x in e.errors()))

    for exc in (ImageError, CodecError, LatentFormatError, EntropyError, ModelError, CalibrationError,
                DetectorError, ValueError):
        @app.exception_handler(exc)
        async def domain_error(request: Request, e: Exception) -> JSONResponse:
            return body(status_of(e), str(e))
