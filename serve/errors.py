"""The server's errors as HTTP answers: JSON {"error": "...", "status": N}, the status chosen by the
error's type (never its wording); domain errors are 4xx, never 500.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from aekit.images import ImageError, ImageLimitError
from aekit.codec.core import CodecError
from aekit.codec.format import LatentFormatError
from aekit.detector.calibration import CalibrationError
from aekit.detector.model import DetectorError
from aekit.export.entropy import EntropyError
from aekit.export.manifest import ModelError
from aekit.serve.models import UnknownClassError


class ApiError(Exception):
    """An answer other than 200: HTTP status and a one-line message naming the upload."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


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
