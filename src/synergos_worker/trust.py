"""What a Worker obeys: the operator's choice of commanding identities and collaborations.

Only a TTP or a Director of the collaboration CA (and, when the operator names them with
`--trust`, only those identities) may initialise, poll, terminate or open a federation channel,
and only for the collaborations (or `collab/project` pairs) the operator serves: `--collaboration`,
by default the collaboration written into the Worker's own certificate. Both are checked before
any state is allocated or any data is read."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from synergos_contract.auth import Refusal, check_caller
from synergos_core.errors import ErrorCode
from synergos_core.identity import Credentials, Identity, Role

COMMANDING_ROLES = frozenset({Role.TTP, Role.DIRECTOR})


@dataclass(frozen=True)
class WorkerTrust:
    names: frozenset[str]
    scopes: tuple[tuple[str, str | None], ...]  # (collaboration, project or None for all its projects)

    @classmethod
    def of(cls, credentials: Credentials, trust: Iterable[str], collaborations: Iterable[str]) -> WorkerTrust:
        chosen = list(collaborations)
        if not chosen and credentials.identity.collaboration:
            chosen = [credentials.identity.collaboration]
        scopes = []
        for entry in chosen:
            collab, _, project = entry.partition("/")
            scopes.append((collab, project or None))
        return cls(frozenset(trust), tuple(scopes))

    def caller(self, identity: Identity) -> Refusal:
        return check_caller(identity, COMMANDING_ROLES, self.names, "this Worker")

    def serves(self, collab: str, project: str) -> Refusal:
        if not self.scopes or any(c == collab and p in (None, project) for c, p in self.scopes):
            return None
        return ErrorCode.AUTH_WRONG_COLLABORATION, f"this Worker does not serve {collab}/{project}"

    def admit(self, identity: Identity, scope: dict[str, Any]) -> Refusal:
        """The REST gate: `/worker/<command>/<collab>/<project>/...`."""
        refused = self.caller(identity)
        if refused is not None:
            return refused
        parts = str(scope.get("path", "")).strip("/").split("/")
        if len(parts) >= 4 and parts[0] == "worker":
            return self.serves(parts[2], parts[3])
        return None
