"""The error tree shared by every service, and its one translator to the REST envelope.

    SynergosError            code, status, title, detail (public text only)
    ├── InvalidRequest       422  request.invalid / <thing>.invalid
    ├── NotFound             404  <thing>.not_found
    ├── Conflict             409  <thing>.exists / <thing>.conflict
    ├── Forbidden            403  <thing>.forbidden
    └── UpstreamError        502  worker.unreachable / worker.failed / federation.*

Internals are logged, never sent: an unexpected exception becomes a 500 `internal.error`
whose detail says nothing about the code.
"""
from __future__ import annotations


class SynergosError(Exception):
    status = 400
    code = "request.error"
    title = "Bad request"

    def __init__(self, detail: str, code: str | None = None, *, fields: list[dict] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code:
            self.code = code
        self.fields = fields

    def public(self) -> dict:
        body = {"code": self.code, "title": self.title, "detail": self.detail}
        if self.fields:
            body["fields"] = self.fields
        return body


class InvalidRequest(SynergosError):
    status = 422
    code = "request.invalid"
    title = "Invalid request"


class NotFound(SynergosError):
    status = 404
    code = "resource.not_found"
    title = "Not found"


class Conflict(SynergosError):
    status = 409
    code = "resource.exists"
    title = "Conflict"


class Forbidden(SynergosError):
    status = 403
    code = "request.forbidden"
    title = "Forbidden"


class UpstreamError(SynergosError):
    status = 502
    code = "worker.failed"
    title = "A participant's node failed"


class FederationError(UpstreamError):
    code = "federation.failed"
    title = "Federation failed"
