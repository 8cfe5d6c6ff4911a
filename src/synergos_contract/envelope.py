"""One envelope builder and one error translator for every REST service."""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from synergos_core.errors import SynergosError

API_VERSION = "0.1.0"
log = logging.getLogger(__name__)


def _method(request: Request) -> str:
    route = request.scope.get("route")
    name = getattr(route, "name", None) or "unknown"
    return f"{name}.{request.method.lower()}"


def envelope(request: Request, data: Any, status: int = 200) -> JSONResponse:
    """A success response: `{apiVersion, success, status, method, params, data}`."""
    body = {
        "apiVersion": API_VERSION,
        "success": 1,
        "status": status,
        "method": _method(request),
        "params": dict(request.path_params),
        "data": data,
    }
    return JSONResponse(body, status_code=status)


def error_envelope(request: Request, status: int, error: dict) -> JSONResponse:
    body = {
        "apiVersion": API_VERSION,
        "success": 0,
        "status": status,
        "method": _method(request),
        "params": dict(request.path_params),
        "data": None,
        "error": error,
    }
    return JSONResponse(body, status_code=status)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def _field_errors(exc: RequestValidationError) -> list[dict]:
    fields = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ()) if part != "body"]
        fields.append({"path": ".".join(loc) or "body", "message": err.get("msg", "invalid"), "type": err.get("type")})
    return fields


def install_error_handlers(app: FastAPI) -> None:
    """Translate every failure into the envelope; nothing a client sends can produce a traceback."""

    @app.exception_handler(SynergosError)
    async def _synergos(request: Request, exc: SynergosError) -> JSONResponse:
        if exc.status >= 500:
            log.warning("%s: %s", exc.code, exc.detail)
        return error_envelope(request, exc.status, exc.public())

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = _field_errors(exc)
        detail = "; ".join(f"{f['path']}: {f['message']}" for f in fields)
        return error_envelope(
            request, 422, {"code": "request.invalid", "title": "Invalid request", "detail": detail, "fields": fields}
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "route.not_found", 405: "method.not_allowed", 413: "request.too_large"}.get(
            exc.status_code, "request.error")
        return error_envelope(request, exc.status_code, {"code": code, "title": str(exc.detail), "detail": str(exc.detail)})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error while serving %s %s", request.method, request.url.path)
        return error_envelope(
            request, 500, {"code": "internal.error", "title": "Internal error",
                           "detail": "the service failed to process this request; see its logs"})


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with 413 before they are parsed (uvicorn sets no limit).

    A declared Content-Length over the limit is refused at once; a chunked body is read up to the
    limit, then handed on whole, so the app never sees a truncated request.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                await _send_413(send, self.max_bytes)
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                await _send_413(send, self.max_bytes)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _send_413(send: Any, limit: int) -> None:
    import json

    body = json.dumps({
        "apiVersion": API_VERSION, "success": 0, "status": 413, "method": "request", "params": {}, "data": None,
        "error": {"code": "request.too_large", "title": "Request too large",
                  "detail": f"request bodies are limited to {limit} bytes"},
    }).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
