"""Running a service's REST API: over TLS with the service's identity, or plainly with `--insecure`.

uvicorn terminates TLS with the collaboration CA as the only trust root and asks for a client
certificate (optional at the handshake, so `/health` answers a client without one; a
certificate that does not verify ends the handshake). `TLSH11Protocol` passes the verified
client certificate to the app as the ASGI TLS extension (`scope["extensions"]["tls"]`, with
`client_cert_chain` as the spec defines it and the parsed form in `client_cert_dict`), which
uvicorn does not yet do itself.
"""

from __future__ import annotations

import logging
import ssl
import sys
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from synergos_core.identity import Credentials, CredentialsError, resolve
from synergos_core.settings import ServiceSettings

log = logging.getLogger(__name__)

INSECURE_WARNING = (
    "INSECURE MODE (--insecure): no TLS and no identities. Anyone who can reach {where} can command "
    "this {role}. Use it only on a development machine; provision credentials with synergos-provision."
)


class TLSH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, adding the connection's verified client certificate to every scope."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return
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
        "limit_concurrency": 200,
    }
    if credentials is None:
        warn_insecure(role, f"{settings.host}:{settings.port}")
    else:
        options.update(
            ssl_certfile=str(credentials.cert),
            ssl_keyfile=str(credentials.key),
            ssl_ca_certs=str(credentials.ca),
            ssl_cert_reqs=ssl.CERT_OPTIONAL,
            http=TLSH11Protocol,
        )
    uvicorn.run(app, **options)


def scheme(credentials: Credentials | None) -> str:
    return "https" if credentials is not None else "http"
