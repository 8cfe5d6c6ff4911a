"""Errors raised by the Driver.

    SynergosError              every Driver error: .status, .code, .title, .detail, .fields
    ├── ConnectionFailed       no answer from the address (refused, unreachable, timed out);
    │   │                      .address names what was tried, .reason the underlying cause
    │   └── ServerUnresponsive a long call's server stopped answering (frozen, cut off) for the
    │                          Driver's `liveness_timeout`; .waited_for names the work
    ├── JobFailed              read(..., wait=True): the queued work failed; .job is the job,
    │                          .reason its public reason
    ├── WaitTimeout            read(..., wait=True): the work did not finish within the timeout;
    │                          .waited_for names the scope, .jobs the jobs still open
    └── ResponseError          the server answered with `success: 0` or a non-2xx status;
        │                      .response holds the parsed envelope (or None)
        ├── RequestInvalid     400, 413, 422   request.invalid, <thing>.invalid (.fields)
        ├── Forbidden          403             <thing>.forbidden
        ├── NotFound           404             <thing>.not_found
        ├── Conflict           409             <thing>.exists, <thing>.conflict
        └── ServerError        5xx             internal.error, worker.unreachable, ...

`code` is the server's stable dotted string from the envelope's `error` object; `str()` of an
error reads `404 run.not_found: run 'run_9' does not exist`.

Mistakes caught before anything is sent (a missing id, a registration without nodes) raise
the built-in `ValueError`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "SynergosError",
    "ConnectionFailed",
    "ServerUnresponsive",
    "JobFailed",
    "WaitTimeout",
    "ResponseError",
    "RequestInvalid",
    "Forbidden",
    "NotFound",
    "Conflict",
    "ServerError",
]


class SynergosError(Exception):
    """Base of every error the Driver raises on purpose."""

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        code: str = "synergos.error",
        title: str | None = None,
        fields: list[dict[str, Any]] | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.code = code
        self.title = title or code
        self.fields = fields
        self.method = method
        self.url = url

    def __str__(self) -> str:
        prefix = f"{self.status} {self.code}" if self.status is not None else self.code
        return f"{prefix}: {self.detail}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only state would be lost by the default pickling of exceptions.
        return (_restore, (type(self), self.args, self.__dict__.copy()))


def _restore(cls: type[SynergosError], args: tuple[Any, ...], state: dict[str, Any]) -> SynergosError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class ConnectionFailed(SynergosError):
    """The address gave no answer: connection refused, host unreachable or timed out."""

    def __init__(self, address: str, reason: str, *, method: str | None = None, url: str | None = None) -> None:
        where = f" ({method} {url})" if method and url else ""
        super().__init__(
            f"could not reach {address}{where}: {reason}",
            code="connection.failed",
            title="Connection failed",
            method=method,
            url=url,
        )
        self.address = address
        self.reason = reason


class ServerUnresponsive(ConnectionFailed):
    """A long call (training, alignment, validation, ...) was given up: its server answered neither
    the call nor any probe of its health for `waited_s` seconds (the Driver's `liveness_timeout`),
    as a frozen or cut-off server does. The work may still be running there; `.waited_for` names
    it."""

    def __init__(
        self, address: str, waited_for: str, waited_s: float, *, method: str | None = None, url: str | None = None
    ) -> None:
        super().__init__(address, f"no answer for {waited_s:.0f} s", method=method, url=url)
        self.detail = (
            f"{address} stopped answering while {waited_for} ({method} {url}): nothing for {waited_s:.0f} s, "
            "not even to GET /health, so the server is frozen, overloaded or cut off; the work may still be "
            "running there: read it with wait=True once the server answers again"
        )
        self.args = (self.detail,)
        self.code = "connection.unresponsive"
        self.title = "Server unresponsive"
        self.waited_for = waited_for
        self.waited_s = waited_s


class JobFailed(SynergosError):
    """The work a `read(..., wait=True)` waited for ended failed (or interrupted: its service
    stopped; request it again, a training resumes); `.job` is the job as the server reported it,
    `.reason` why."""

    def __init__(self, job: Any, waited_for: str) -> None:
        reason = str(job.get("detail") or "no reason given") if isinstance(job, dict) else "no reason given"
        kind = job.get("kind", "job") if isinstance(job, dict) else "job"
        ended = "was interrupted" if isinstance(job, dict) and job.get("state") == "interrupted" else "failed"
        super().__init__(f"{kind} for {waited_for} {ended}: {reason}", code="job.failed", title="Job failed")
        self.job = job
        self.reason = reason
        self.waited_for = waited_for


class WaitTimeout(SynergosError):
    """A `read(..., wait=True)` gave up after its timeout; `.jobs` are the jobs still open."""

    def __init__(self, waited_for: str, timeout: float, jobs: list[Any], *, records: int = 0) -> None:
        from ._wait import describe_open  # _wait imports this module

        super().__init__(
            f"waited {timeout:g} s for {waited_for}; {describe_open(jobs, records)}",
            code="wait.timeout",
            title="Timed out waiting",
        )
        self.waited_for = waited_for
        self.timeout = timeout
        self.jobs = jobs


class ResponseError(SynergosError):
    """The server answered, and the answer was an error."""

    def __init__(self, detail: str, *, response: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.response = response


class RequestInvalid(ResponseError):
    """400/413/422: the request was refused as invalid; `fields` lists the offending paths."""


class Forbidden(ResponseError):
    """403: the operation is not allowed here (e.g. optimizations on a basic TTP)."""


class NotFound(ResponseError):
    """404: an id in the route does not exist."""


class Conflict(ResponseError):
    """409: the record already exists or clashes with another."""


class ServerError(ResponseError):
    """5xx: the server (or a Worker behind it) failed."""


_BY_STATUS: dict[int, type[ResponseError]] = {
    400: RequestInvalid,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: RequestInvalid,
    422: RequestInvalid,
}

_DEFAULT_CODES: dict[int, str] = {
    400: "request.invalid",
    403: "request.forbidden",
    404: "resource.not_found",
    409: "resource.conflict",
    413: "request.too_large",
    422: "request.invalid",
}


def error_class(status: int) -> type[ResponseError]:
    """The exception class for an HTTP status."""
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, ResponseError)


def default_code(status: int) -> str:
    """A code for answers that carry no `error.code` (e.g. a proxy's HTML error page)."""
    if status >= 500:
        return "server.error"
    return _DEFAULT_CODES.get(status, f"http.{status}")
