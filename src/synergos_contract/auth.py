"""Who may call a service: the identity of the verified client certificate, checked before routing.

The server (`serving.run`) verifies a client's certificate against the collaboration CA during
the TLS handshake and hands the parsed certificate to the app in the ASGI TLS extension
(`scope["extensions"]["tls"]`); a certificate from another CA never completes the handshake.
`IdentityGate` answers 401 to a request without a certificate and 403 to one whose identity
this service does not serve, before any route, body parsing or state; only `/health` is open.
The identity is left in `request.state.identity` for finer rules (the contract's roles).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import Request

from synergos_core.errors import ErrorCode, Forbidden
from synergos_core.identity import ORCHESTRATING_ROLES, Identity, Role, peer_identity

from .envelope import send_error

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health"})
# (code, public detail) when an identity is refused; None admits it
Refusal = tuple[ErrorCode, str] | None
Admit = Callable[[Identity, dict[str, Any]], Refusal]


def scope_identity(scope: dict[str, Any]) -> Identity | None:
    tls = (scope.get("extensions") or {}).get("tls") or {}
    return peer_identity(tls.get("client_cert_dict"))


class IdentityGate:
    """ASGI middleware: 401 without a verified identity, 403 when `admit` refuses it."""

    def __init__(self, app: Any, admit: Admit, open_paths: Iterable[str] = OPEN_PATHS) -> None:
        self.app = app
        self.admit = admit
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        identity = scope_identity(scope)
        scope.setdefault("state", {})["identity"] = identity
        if scope.get("path") not in self.open_paths:
            if identity is None:
                await send_error(
                    send,
                    ErrorCode.AUTH_REQUIRED,
                    "present a certificate of this collaboration (a folder from synergos-provision)",
                )
                return
            refusal = self.admit(identity, scope)
            if refusal is not None:
                code, detail = refusal
                log.warning("%s refused at %s %s: %s", identity, scope.get("method", ""), scope.get("path"), detail)
                await send_error(send, code, detail)
                return
        await self.app(scope, receive, send)


def check_caller(identity: Identity, roles: Iterable[str], names: Iterable[str], service: str) -> Refusal:
    """Refuse an identity whose role is not among `roles`, or, when `names` is not empty, whose
    name is not among them."""
    named = frozenset(names)
    if identity.role not in frozenset(roles):
        return ErrorCode.AUTH_FORBIDDEN, f"a {identity.role.value} may not call {service}"
    if named and identity.name not in named:
        return ErrorCode.AUTH_FORBIDDEN, f"{identity.name} is not among the identities {service} trusts"
    return None


def roles_and_names(roles: Iterable[str], names: Iterable[str] = ()) -> Admit:
    """Admit identities of these roles (and, if `names` is not empty, only those names)."""
    allowed, named = frozenset(roles), frozenset(names)

    def admit(identity: Identity, scope: dict[str, Any]) -> Refusal:
        return check_caller(identity, allowed, named, "this service")

    return admit


# ---- roles on the TTP and the Director ----

# routes a participant may call, each only with its own participant id in the path
PARTICIPANT_ROUTES = frozenset({"participant", "registration", "registrations", "tags", "validations", "predictions"})


def contract_gate(identity: Identity, scope: dict[str, Any]) -> Refusal:
    """Before routing: orchestrating identities and participants pass (the route decides for
    participants); a Worker's identity never commands a TTP or a Director."""
    if identity.role in ORCHESTRATING_ROLES or identity.role is Role.PARTICIPANT:
        return None
    return ErrorCode.AUTH_FORBIDDEN, f"a {identity.role.value} may not call this service"


async def authorize(request: Request) -> None:
    """After routing: a participant acts only for itself, on the routes it may use; an identity
    issued for one collaboration acts only in that collaboration."""
    identity: Identity | None = getattr(request.state, "identity", None)
    if identity is None:  # `--insecure`, or an open path
        return
    params = request.path_params
    if identity.collaboration and params.get("collab_id") not in (None, identity.collaboration):
        raise Forbidden(
            f"{identity} was issued for collaboration {identity.collaboration}", ErrorCode.AUTH_WRONG_COLLABORATION
        )
    if identity.role in ORCHESTRATING_ROLES:
        return
    route = request.scope.get("route")
    name = getattr(route, "name", None)
    if name == "participants" and request.method == "POST":
        try:
            body = await request.json()
        except ValueError:
            return  # the route answers 422 for the body itself
        claimed = body.get("id", body.get("participant_id")) if isinstance(body, dict) else None
        if claimed == identity.name:
            return
        raise Forbidden(f"{identity} may create only its own participant record", ErrorCode.AUTH_FORBIDDEN)
    if name in PARTICIPANT_ROUTES and params.get("participant_id") == identity.name:
        return
    raise Forbidden(
        f"{identity} may manage only its own participant record, registrations and tags, and request and read "
        "its own validations and predictions",
        ErrorCode.AUTH_FORBIDDEN,
    )
