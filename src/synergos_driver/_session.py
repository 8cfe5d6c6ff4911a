"""One HTTP session per Driver: sends a request, retries what is safe to retry, unwraps the envelope.

Retry policy: a GET is retried (with doubling backoff) on a transport failure or a 5xx answer;
any method is retried when the connection could not even be opened (nothing was sent); a
request that may have reached the server is never re-sent unless it is a GET.

Long calls (`long_request`: a basic TTP trains within the request, for hours perhaps) have no
read timeout, but are bounded all the same: while one is out, the server's `GET /health` is
probed, and once neither has answered for `liveness_timeout` seconds the call raises
`ServerUnresponsive` (a frozen or cut-off server), naming the work it waited for.
"""

from __future__ import annotations

import concurrent.futures
import ssl
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import httpx

from ._exceptions import (
    ConnectionFailed,
    ResponseError,
    ServerUnresponsive,
    SynergosError,
    default_code,
    error_class,
)
from ._progress import JobProgress

Envelope = dict[str, Any]

# Nothing was sent when these are raised, so every method may try again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
HEALTH = "/health"  # what a long call probes: every Synergos service answers it, without a certificate


class Session:
    backoff = 0.5  # seconds before the first retry; doubles after each

    def __init__(
        self,
        address: str,
        *,
        timeout: float | httpx.Timeout | None,
        transport: httpx.BaseTransport | None,
        retries: int,
        show_progress: bool,
        user_agent: str,
        verify: ssl.SSLContext | bool = True,
        liveness_timeout: float | None = 60.0,
    ) -> None:
        self.address = address
        # a long call gives up once its server has answered nothing for this long (None: never)
        self.liveness_timeout = None if liveness_timeout is None else max(0.1, float(liveness_timeout))
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        # Long operations (training, validation, ...) may legitimately take hours: no read limit.
        self.long_timeout = httpx.Timeout(
            connect=self.timeout.connect, read=None, write=self.timeout.write, pool=self.timeout.pool
        )
        self.retries = max(0, int(retries))
        self.show_progress = show_progress
        # last progress line shown per job, across requests: queued work is not announced twice
        self.progress_shown: dict[str, str] = {}
        self._client = httpx.Client(
            base_url=address,
            timeout=self.timeout,
            transport=transport,
            verify=verify,
            follow_redirects=True,
            headers={"User-Agent": user_agent, "Accept": "application/json"},
        )

    def close(self) -> None:
        self._client.close()

    # ---- requests ----

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        timeout: httpx.Timeout | None = None,
        retries: int | None = None,
    ) -> Envelope:
        """Send one request and return its envelope, or raise a `SynergosError`."""
        attempts = 1 + (self.retries if retries is None else max(0, retries))
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self._client.request(
                    method,
                    path,
                    json=json,
                    params=params,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.RequestError as exc:
                retryable = isinstance(exc, _NOT_SENT) or (method == "GET" and isinstance(exc, httpx.TransportError))
                if retryable and not last:
                    self._pause(attempt)
                    continue
                raise ConnectionFailed(self.address, _reason(exc), method=method, url=path) from exc
            if response.status_code >= 500 and method == "GET" and not last:
                self._pause(attempt)
                continue
            return self._unwrap(method, path, response)
        raise AssertionError("unreachable")  # pragma: no cover

    def long_request(self, method: str, path: str, *, json: Any = None, what: str) -> Envelope:
        """`request` without a read timeout, for work that may take hours, given up with
        `ServerUnresponsive` (naming `what`) once neither it nor a probe of the server's health has
        had an answer for `liveness_timeout` seconds. The request itself runs on a daemon thread,
        left behind (with its connection) if it is given up."""
        if self.liveness_timeout is None:
            return self.request(method, path, json=json, timeout=self.long_timeout)
        answer: concurrent.futures.Future[Envelope] = concurrent.futures.Future()

        def send() -> None:
            try:
                answer.set_result(self.request(method, path, json=json, timeout=self.long_timeout))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, raised there
                answer.set_exception(exc)

        threading.Thread(target=send, name="synergos-long-call", daemon=True).start()
        probe = max(0.2, min(5.0, self.liveness_timeout / 3))  # both how often and how long a probe waits
        heard = time.monotonic()
        while True:
            try:
                return answer.result(timeout=probe)
            except concurrent.futures.TimeoutError:
                pass
            if self._answers(probe):
                heard = time.monotonic()
            elif answer.done():
                return answer.result()
            elif time.monotonic() - heard >= self.liveness_timeout:
                raise ServerUnresponsive(
                    self.address, what, time.monotonic() - heard, method=method, url=path
                ) from None

    def _answers(self, timeout: float) -> bool:
        """Whether the server answers its health probe (any answer: the process is alive and serving)."""
        try:
            self._client.get(HEALTH, timeout=httpx.Timeout(timeout))
        except httpx.HTTPError:
            return False
        return True

    def watch(self, collab_id: str, project_id: str | None) -> AbstractContextManager[Any]:
        """Show job progress on stderr while the body of the `with` runs (if enabled)."""
        if not self.show_progress:
            return nullcontext()
        params = {"collab_id": collab_id}
        if project_id is not None:
            params["project_id"] = project_id
        return JobProgress(self, params)

    def _pause(self, attempt: int) -> None:
        time.sleep(self.backoff * (2**attempt))

    def _unwrap(self, method: str, path: str, response: httpx.Response) -> Envelope:
        try:
            body = response.json() if response.content else None
        except ValueError:
            body = None
        if response.is_success:
            if isinstance(body, dict) and body.get("success", 1) not in (0, False):
                return body
            if body is None and not response.content:
                # An empty success (e.g. 204): keep the promise that every call returns an envelope.
                return {
                    "apiVersion": None,
                    "success": 1,
                    "status": response.status_code,
                    "method": method.lower(),
                    "params": {},
                    "data": None,
                }
        raise _error(method, path, response, body)


def _error(method: str, path: str, response: httpx.Response, body: Any) -> SynergosError:
    envelope = body if isinstance(body, dict) else None
    error = envelope.get("error") if envelope else None
    error = error if isinstance(error, dict) else {}
    status = response.status_code
    if response.is_success:
        # HTTP said yes but the envelope said no (or was not an envelope at all).
        claimed = envelope.get("status") if envelope else None
        status = claimed if isinstance(claimed, int) and claimed >= 300 else status
    if envelope is None and response.is_success:
        return ResponseError(
            f"expected a JSON envelope, got {response.headers.get('content-type', 'no content type')}",
            status=status,
            code="response.invalid",
            title="Invalid response",
            method=method,
            url=path,
        )
    detail = (
        error.get("detail")
        or (envelope or {}).get("message")  # the original flask-restx aborts: {"message": ...}
        or response.text.strip()[:200]
        or response.reason_phrase
    )
    return error_class(status)(
        str(detail),
        status=status,
        code=str(error.get("code") or default_code(status)),
        title=error.get("title") or response.reason_phrase or None,
        fields=error.get("fields"),
        method=method,
        url=path,
        response=envelope,
    )


def _reason(exc: httpx.RequestError) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
