"""One envelope builder and one error translator for every REST service."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from synergos_core.errors import ErrorCode, ServiceError, new_correlation_id, report
from synergos_core.finite import json_safe

API_VERSION = "0.1.0"
CORRELATION_HEADER = "X-Correlation-ID"
log = logging.getLogger(__name__)


def _method(request: Request) -> str:
    route = request.scope.get("route")
    name = getattr(route, "name", None) or "unknown"
    return f"{name}.{request.method.lower()}"


def envelope_body(request: Request, data: Any, status: int = 200) -> dict[str, Any]:
    """A success body: `{apiVersion, success, status, method, params, data}`. A NaN or an infinity
    anywhere in `data` (a record stored before such numbers were refused, a job's metrics) is
    answered as null: JSON has neither, and the answer must not fail because of one."""
    return {
        "apiVersion": API_VERSION,
        "success": 1,
        "status": status,
        "method": _method(request),
        "params": dict(request.path_params),
        "data": json_safe(data),
    }


def envelope(request: Request, data: Any, status: int = 200) -> JSONResponse:
    """A success response: the envelope of `data` (JSON-ready)."""
    return JSONResponse(envelope_body(request, data, status), status_code=status)


def error_envelope(request: Request, status: int, error: dict, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error response: the envelope with `success: 0` and `error: {code, title, detail,
    correlation_id}`; the id is also in the `X-Correlation-ID` header."""
    body = {
        "apiVersion": API_VERSION,
        "success": 0,
        "status": status,
        "method": _method(request),
        "params": dict(request.path_params),
        "data": None,
        "error": error,
    }
    cid = error.get("correlation_id")
    headers = {**(headers or {}), **({CORRELATION_HEADER: cid} if cid else {})}
    return JSONResponse(body, status_code=status, headers=headers)


def _catalogued(code: ErrorCode, detail: str, **extra: Any) -> dict:
    """The error object for a code the translator picks itself (not from a ServiceError)."""
    return {
        "code": str(code),
        "title": code.public_title,
        "detail": detail,
        "correlation_id": new_correlation_id(),
        **extra,
    }


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _field_errors(exc: RequestValidationError) -> list[dict]:
    fields = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ()) if part != "body"]
        fields.append({"path": ".".join(loc) or "body", "message": err.get("msg", "invalid"), "type": err.get("type")})
    return fields


def install_error_handlers(app: FastAPI) -> None:
    """Translate every failure into the envelope; nothing a client sends can produce a traceback.

    Every error carries a correlation id, in the body and the `X-Correlation-ID` header, and the
    log line about it carries the same id. An unexpected exception is logged with its traceback
    and answered 500 `internal.error` with the public text only.
    """

    def where(request: Request) -> str:
        return f"{request.method} {request.url.path}"

    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> JSONResponse:
        return error_envelope(request, exc.status, report(exc, log, where(request)))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = _field_errors(exc)
        detail = "; ".join(f"{f['path']}: {f['message']}" for f in fields)
        error = _catalogued(ErrorCode.REQUEST_INVALID, detail, fields=fields)
        log.debug("%s: %s [%s]", where(request), error["code"], error["correlation_id"])
        return error_envelope(request, 422, error)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, ErrorCode.REQUEST_ERROR)
        error = _catalogued(code, str(exc.detail))
        log.debug("%s: %d %s [%s]", where(request), exc.status_code, code, error["correlation_id"])
        return error_envelope(request, exc.status_code, error, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_envelope(request, 500, report(exc, log, f"while serving {where(request)}"))


_HTTP_CODES = {404: ErrorCode.ROUTE_NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED, 413: ErrorCode.REQUEST_TOO_LARGE}


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
    await send_error(send, ErrorCode.REQUEST_TOO_LARGE, f"request bodies are limited to {limit} bytes")


async def send_error(send: Any, code: ErrorCode, detail: str, headers: dict[str, str] | None = None) -> None:
    """Answer a request from ASGI middleware, before any route runs, with the error envelope."""
    import json

    error = _catalogued(code, detail)
    log.debug("%s refused before routing: %s [%s]", code, detail, error["correlation_id"])
    body = json.dumps(
        {
            "apiVersion": API_VERSION,
            "success": 0,
            "status": code.status,
            "method": "request",
            "params": {},
            "data": None,
            "error": error,
        }
    ).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": code.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (CORRELATION_HEADER.lower().encode(), error["correlation_id"].encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
