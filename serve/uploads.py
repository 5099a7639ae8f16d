"""Reading an upload: size limits while the body streams in, multipart parts kept in memory (never
spooled to the system temp folder), safe display names, and the real image type sniffed from the bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from fastapi import Request
from starlette.formparsers import MultiPartParser

from aekit.serve.errors import ApiError

SIGNATURES = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff"}
SUFFIX = {"image/png": ".png", "image/jpeg": ".jpg"}
ACCEPTED_TYPES = (*SIGNATURES, "application/octet-stream", "")  # declared types we then sniff
LATENT_TYPES = ("application/octet-stream", "application/x-aekit-latent", "")


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
