"""Running a service's REST API: over TLS with the service's identity, or plainly with `--insecure`.

uvicorn terminates TLS with the collaboration CA as the only trust root and asks for a client
certificate (optional at the handshake, so `/health` answers a client without one; a
certificate that does not verify ends the handshake). `GuardedH11Protocol` passes the verified
client certificate to the app as the ASGI TLS extension (`scope["extensions"]["tls"]`, with
`client_cert_chain` as the spec defines it and the parsed form in `client_cert_dict`), which
uvicorn does not yet do itself, and bounds what slow or idle connections can hold.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import sys
from collections import OrderedDict
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from synergos_core.identity import Credentials, CredentialsError, resolve
from synergos_core.settings import ServiceSettings

log = logging.getLogger(__name__)

INSECURE_WARNING = (
    "INSECURE MODE (--insecure): no TLS and no identities. Anyone who can reach {where} can command "
    "this {role}. Use it only on a development machine; provision credentials with synergos-provision."
)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, guarded against slow and idle connections and carrying the TLS peer.

    - A connection must deliver its first request's headers within `HEADER_TIMEOUT_S`, else it is
      closed (uvicorn itself waits for headers without bound).
    - One client address keeps at most `MAX_PENDING_PER_CLIENT` connections that have not yet sent
      a request; beyond that its oldest such connection is closed, so a flood of slow connections
      costs only the flooder, even beside an honest client on the same address.
    - On TLS, the verified client certificate is passed to the app as the ASGI TLS extension.
    """

    HEADER_TIMEOUT_S = float(os.environ.get("SYNERGOS_HEADER_TIMEOUT_S", "10"))
    MAX_PENDING_PER_CLIENT = int(os.environ.get("SYNERGOS_MAX_PENDING_PER_CLIENT", "32"))
    _pending: ClassVar[dict[str, OrderedDict[int, GuardedH11Protocol]]] = {}
    _peer: str | None = None
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._peer = self.client[0] if self.client else "?"
        waiting = GuardedH11Protocol._pending.setdefault(self._peer, OrderedDict())
        waiting[id(self)] = self
        if len(waiting) > self.MAX_PENDING_PER_CLIENT:
            _, oldest = waiting.popitem(last=False)
            log.warning("%s keeps too many connections without a request: closing its oldest", self._peer)
            oldest.transport.close()
        self._header_deadline = self.loop.call_later(self.HEADER_TIMEOUT_S, self._drop_if_silent)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self._carry_peer(ssl_object)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None:  # a request arrived: no longer pending
            self._settle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._settle()
        super().connection_lost(exc)

    def _settle(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None
        if self._peer is not None:
            waiting = GuardedH11Protocol._pending.get(self._peer)
            if waiting is not None:
                waiting.pop(id(self), None)
                if not waiting:
                    del GuardedH11Protocol._pending[self._peer]
            self._peer = None

    def _drop_if_silent(self) -> None:
        self._header_deadline = None
        if self.cycle is None and not self.transport.is_closing():  # no request's headers yet
            self.transport.close()

    def _carry_peer(self, ssl_object: ssl.SSLObject) -> None:
        der = ssl_object.getpeercert(binary_form=True)
        tls = {
            "server_cert": None,
            "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
            "client_cert_name": None,
            "client_cert_error": None,
            "tls_version": None,
            "cipher_suite": None,
            "client_cert_dict": ssl_object.getpeercert() if der else None,
        }
        inner = self.app

        async def with_tls(scope: Any, receive: Any, send: Any) -> None:
            scope["extensions"] = {**(scope.get("extensions") or {}), "tls": tls}
            answered = False

            async def sending(message: Any) -> None:
                nonlocal answered
                await send(message)
                if message.get("type") == "http.response.body" and not message.get("more_body"):
                    answered = True

            try:
                await inner(scope, receive, sending)
            except Exception:
                # Starlette re-raises an unexpected error after its handler has answered (and
                # logged it under the client's correlation id); uvicorn would then close the TLS
                # transport at once, which can drop the answer before it is flushed
                if not answered:
                    raise

        self.app = with_tls


def service_credentials(settings: ServiceSettings, role: str) -> Credentials | None:
    """The service's identity, or None in `--insecure` mode; missing credentials are an error."""
    if settings.insecure:
        return None
    found = resolve(settings.credentials, role)
    if found is None:
        raise CredentialsError(
            f"the {role} needs credentials: pass --credentials DIR/NAME (or set SYNERGOS_CREDENTIALS) with a "
            "folder from `synergos-provision`, or --insecure on a development machine"
        )
    return found


def warn_insecure(role: str, where: str) -> None:
    message = INSECURE_WARNING.format(where=where, role=role)
    log.warning(message)
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


def run(app: Any, settings: ServiceSettings, role: str, credentials: Credentials | None) -> None:
    """Serve `app` on the settings' host and port until stopped."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "ws": "none",
        "log_config": None,
        "timeout_keep_alive": 5,
        # no global cap: uvicorn would answer 503 to everyone while slow connections held it; each
        # client is capped instead, and a connection that sends no request is dropped
        "limit_concurrency": None,
        "backlog": 2048,
        "http": GuardedH11Protocol,
    }
    if credentials is None:
        warn_insecure(role, f"{settings.host}:{settings.port}")
    else:
        options.update(
            ssl_certfile=str(credentials.cert),
            ssl_keyfile=str(credentials.key),
            ssl_ca_certs=str(credentials.ca),
            ssl_cert_reqs=ssl.CERT_OPTIONAL,
        )
    uvicorn.run(app, **options)


def scheme(credentials: Credentials | None) -> str:
    return "https" if credentials is not None else "http"
