"""The TTP ⇄ Worker federation protocol, version 2: every control message as a typed model.

Op names live here and nowhere else. A control frame (see `wire`) is parsed into one of these
models once, where it is received (`parse_request` on the Worker, `parse_reply` on the TTP);
everything past that edge reads typed fields. Senders build the models and send `as_header(m)`;
the codec (`federation.send_state` / `send_tensors`) fills in `shards` and `layout` for the
tensor frames that follow, which is why those two fields are part of the models that carry
tensors and of no other.

Requests (TTP -> Worker)                         reply (Worker -> TTP)
    Train(epochs, evaluate, resume_from) + weights  Update(n_samples, losses, assessment) + weights
    Evaluate(meta, assess)         + weights     Loss(loss, n_samples, assessment)
    Infer(meta)                    + weights     Metrics(meta, statistics, n_samples, res_path, parts)
    Close                                        Closed
    GktTrain(epochs)        [+ server_out]       GktFeatures(n_samples, losses) + features, local_out
    GktEvaluate(meta, assess)      + server      Loss
    GktExport                                    GktExtractor + the party's extractor and head
and to any request: Error(code, detail).

Every message carries `run` ("c/p/e/r"), `round` and a fresh `nonce`; a reply also `reply_to`,
the nonce of its request (an `Error` may lack it when the request could not be read at all).

Versioning: the TTP names `PROTOCOL_VERSION` in the `Synergos-Protocol` header of the WebSocket
upgrade request; the Worker refuses any other (426, naming both versions) and names its own in
the header of the handshake's response, which the TTP checks. A change to any message that an
older peer would misread is a new version.
"""

from __future__ import annotations

import secrets
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, TypeAdapter, ValidationError

from .errors import ErrorCode, FederationError, SynergosError

PROTOCOL_VERSION = 2  # 2: Train.resume_from
PROTOCOL_HEADER = "Synergos-Protocol"

__all__ = [
    "PROTOCOL_VERSION",
    "PROTOCOL_HEADER",
    "Op",
    "Assessment",
    "ClassificationParts",
    "RegressionParts",
    "Train",
    "Evaluate",
    "Infer",
    "Close",
    "GktTrain",
    "GktEvaluate",
    "GktExport",
    "Update",
    "Loss",
    "Metrics",
    "Closed",
    "GktFeatures",
    "GktExtractor",
    "Error",
    "Request",
    "Reply",
    "RequestMessage",
    "ReplyMessage",
    "parse_request",
    "parse_reply",
    "reply_to",
    "as_header",
    "new_nonce",
    "version_mismatch",
]


class Op(StrEnum):
    # requests, TTP -> Worker
    TRAIN = "train"
    EVALUATE = "evaluate"
    INFER = "infer"
    CLOSE = "close"
    GKT_TRAIN = "gkt_train"
    GKT_EVALUATE = "gkt_evaluate"
    GKT_EXPORT = "gkt_export"
    # replies, Worker -> TTP
    UPDATE = "update"
    LOSS = "loss"
    METRICS = "metrics"
    CLOSED = "closed"
    GKT_FEATURES = "gkt_features"
    GKT_EXTRACTOR = "gkt_extractor"
    ERROR = "error"


def new_nonce() -> str:
    return secrets.token_hex(16)


def version_mismatch(presented: str | None, *, peer: str) -> str:
    """Why a channel is refused, in the same words on both ends: the version the other side named
    (None: it named none) and the one `peer` ("Worker" or "TTP"), the side refusing, speaks."""
    if presented is None:
        return f"no federation protocol version was named ({PROTOCOL_HEADER}); this {peer} speaks {PROTOCOL_VERSION}"
    return f"federation protocol {presented[:32]} is not supported; this {peer} speaks {PROTOCOL_VERSION}"


# -- field types: strict (no "3" for 3, no true for 1), finite where a number is a measurement --
Count = Annotated[int, Field(ge=0)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Nonce = Annotated[str, Field(min_length=16, max_length=128)]
Meta = Literal["train", "evaluate", "predict"]
# one tensor announced by `send_tensors`: [name, dtype, shape]; which names and dtypes are allowed,
# and how many bytes, the receiver decides (`wire.parse_layout`). A JSON array, hence the lax tuple.
TensorSpec = Annotated[tuple[StrictStr, StrictStr, list[Annotated[StrictInt, Field(ge=0)]]], Field(strict=False)]


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ClassificationParts(_Model):
    """Sums from which the pooled accuracy is exact (`metrics.metric_parts`)."""

    n: Count
    correct: Count


class RegressionParts(_Model):
    """Sums from which the pooled R2 is exact (`metrics.metric_parts`)."""

    n: Count
    sse: FiniteFloat
    sum_y: FiniteFloat
    sum_y2: FiniteFloat


MetricParts = ClassificationParts | RegressionParts


class Assessment(_Model):
    """Weights received, judged on the party's own data (`LocalTrainer.assess`); None: no such data."""

    train_loss: FiniteFloat | None = None
    train_samples: Count = 0
    eval_loss: FiniteFloat | None = None
    eval_samples: Count = 0
    metric: MetricParts | None = None


class _Message(_Model):
    run: str = Field(min_length=1, max_length=1024)
    round: Count
    nonce: Nonce


class _Reply(_Message):
    reply_to: Nonce


class _LocalTraining(_Model):
    """What a party reports of its local training (`LocalTrainer.train`, `GKTTrainer.train_gkt`)."""

    n_samples: Count
    train_loss: FiniteFloat
    epoch_losses: list[FiniteFloat]
    compute_s: Seconds
    lrs: list[FiniteFloat]


# ---- replies (Worker -> TTP) ----


class Update(_Reply, _LocalTraining):
    """Local weights follow in `shards` frames; `assessment` is of the weights received (if asked)."""

    op: Literal[Op.UPDATE] = Op.UPDATE
    assessment: Assessment | None = None
    shards: Count = 0


class Loss(_Reply):
    op: Literal[Op.LOSS] = Op.LOSS
    loss: FiniteFloat | None  # None: the party has no data for the meta asked
    n_samples: Count
    assessment: Assessment | None = None


class Metrics(_Reply):
    """Statistics against the party's own labels; its predictions stay on its node under `res_path`."""

    op: Literal[Op.METRICS] = Op.METRICS
    meta: Meta
    statistics: dict[str, Any] | None
    n_samples: Count
    res_path: str | None
    parts: MetricParts | None = None


class Closed(_Reply):
    op: Literal[Op.CLOSED] = Op.CLOSED


class GktFeatures(_Reply, _LocalTraining):
    """Features and predictions of every train sample follow, announced in `layout`."""

    op: Literal[Op.GKT_FEATURES] = Op.GKT_FEATURES
    shards: Count = 0
    layout: list[TensorSpec] | None = None


class GktExtractor(_Reply):
    op: Literal[Op.GKT_EXTRACTOR] = Op.GKT_EXTRACTOR
    shards: Count = 0
    layout: list[TensorSpec] | None = None


class Error(_Message):
    """The request failed; `reply_to` is None when the request could not even be read."""

    op: Literal[Op.ERROR] = Op.ERROR
    reply_to: Nonce | None = None
    code: str = Field(max_length=128)
    detail: str = Field(max_length=16384)


# ---- requests (TTP -> Worker) ----


class Train(_Message):
    """Load the global weights that follow; if `evaluate`, first assess them; then train for `epochs`.

    `resume_from` (a resumed run's first round): before training, restore the optimizer, scheduler
    and shuffling state this party saved after its training of that round."""

    op: Literal[Op.TRAIN] = Op.TRAIN
    epochs: Annotated[int, Field(ge=1)]
    evaluate: bool = False
    resume_from: Count | None = None
    shards: Count = 0


class Evaluate(_Message):
    op: Literal[Op.EVALUATE] = Op.EVALUATE
    meta: Meta
    assess: bool = False
    shards: Count = 0


class Infer(_Message):
    """Predict on `meta` with the weights that follow; keep the predictions, return statistics."""

    op: Literal[Op.INFER] = Op.INFER
    meta: Meta
    shards: Count = 0


class Close(_Message):
    op: Literal[Op.CLOSE] = Op.CLOSE


class GktTrain(_Message):
    """Train extractor and head for `epochs`, softened towards `server_out` when it follows."""

    op: Literal[Op.GKT_TRAIN] = Op.GKT_TRAIN
    epochs: Annotated[int, Field(ge=1)]
    shards: Count = 0
    layout: list[TensorSpec] | None = None


class GktEvaluate(_Message):
    """Evaluate with the server layers that follow (the party knows their layout)."""

    op: Literal[Op.GKT_EVALUATE] = Op.GKT_EVALUATE
    meta: Meta
    assess: bool = False
    shards: Count = 0


class GktExport(_Message):
    op: Literal[Op.GKT_EXPORT] = Op.GKT_EXPORT


RequestMessage = Train | Evaluate | Infer | Close | GktTrain | GktEvaluate | GktExport
ReplyMessage = Update | Loss | Metrics | Closed | GktFeatures | GktExtractor | Error
Request = Annotated[RequestMessage, Field(discriminator="op")]
Reply = Annotated[ReplyMessage, Field(discriminator="op")]

_REQUESTS: TypeAdapter[RequestMessage] = TypeAdapter(Request)
_REPLIES: TypeAdapter[ReplyMessage] = TypeAdapter(Reply)
_REQUEST_OPS = frozenset(m.model_fields["op"].default for m in RequestMessage.__args__)
_REPLY_OPS = frozenset(m.model_fields["op"].default for m in ReplyMessage.__args__)


def parse_request(header: dict[str, Any]) -> RequestMessage:
    """A received control header as its request model; anything malformed is `federation.protocol`."""
    request: RequestMessage = _parse(_REQUESTS, _REQUEST_OPS, "request", header)
    return request


def parse_reply(header: dict[str, Any]) -> ReplyMessage:
    """A received control header as its reply model; anything malformed is `federation.protocol`."""
    reply: ReplyMessage = _parse(_REPLIES, _REPLY_OPS, "reply", header)
    return reply


def _parse(adapter: TypeAdapter[Any], ops: frozenset[str], role: str, header: object) -> Any:
    op = header.get("op") if isinstance(header, dict) else None
    if not isinstance(op, str) or op not in ops:
        shown = op if isinstance(op, str) and len(op) <= 64 else type(op).__name__
        raise FederationError(
            f"{shown!r} is not a {role} of federation protocol {PROTOCOL_VERSION} (one of: {', '.join(sorted(ops))})",
            ErrorCode.FEDERATION_PROTOCOL,
        )
    try:
        return adapter.validate_python(header)
    except ValidationError as exc:
        raise FederationError(f"malformed {op} {role}: {_describe(exc, op)}", _refusal_code(exc)) from None


# fields that carry a party's sample counts: a wrong one is that party's bad count, not a broken message
_COUNT_FIELDS = frozenset({"n_samples", "train_samples", "eval_samples"})


def _refusal_code(exc: ValidationError) -> ErrorCode:
    """Why a message is refused: a well-formed message whose only faults are non-finite numbers is
    `federation.non_finite`, one whose only faults are sample counts (negative, not an integer)
    `federation.bad_count`; anything else is `federation.protocol`. The first two leave the
    channel in step, so the TTP can leave that party's reply out (`errors.RefusedUpdate`).

    A plain union (`metric`) reports every member's faults; it is judged by the member that fits
    but for such values, if one does."""
    plain: list[ErrorCode | None] = []
    unions: dict[tuple[Any, ...], dict[str, list[ErrorCode | None]]] = {}
    for err in exc.errors(include_url=False, include_input=False):
        loc, code = tuple(err["loc"]), _content_code(err)
        member = next((i for i, part in enumerate(loc) if isinstance(part, str) and part[:1].isupper()), None)
        if member is None:
            plain.append(code)
        else:
            unions.setdefault(loc[:member], {}).setdefault(str(loc[member]), []).append(code)
    for members in unions.values():
        fitting = [codes for codes in members.values() if None not in codes]
        plain.extend(fitting[0] if fitting else [None])
    if None in plain:
        return ErrorCode.FEDERATION_PROTOCOL
    return (
        ErrorCode.FEDERATION_NON_FINITE if ErrorCode.FEDERATION_NON_FINITE in plain else ErrorCode.FEDERATION_BAD_COUNT
    )


def _content_code(err: Any) -> ErrorCode | None:
    """The code of one field's fault if it is in what a party reports (not the message's shape)."""
    if err["type"] == "finite_number":
        return ErrorCode.FEDERATION_NON_FINITE
    if err["loc"] and err["loc"][-1] in _COUNT_FIELDS:
        return ErrorCode.FEDERATION_BAD_COUNT
    return None


def _describe(exc: ValidationError, tag: str | None = None, limit: int = 3) -> str:
    """Where and what, never the offending values (they can be large, and are the peer's)."""
    errors = exc.errors(include_url=False, include_input=False)
    parts = []
    for err in errors[:limit]:
        loc = list(err["loc"])
        if tag is not None and loc[:1] == [tag]:  # the discriminated union's tag: not a field
            loc = loc[1:]
        # a plain union names the member it tried (`ClassificationParts`): not a field either
        where = [str(p) for p in loc if not (isinstance(p, str) and p[:1].isupper())]
        parts.append(f"{'.'.join(where) or 'message'}: {err['msg']}")
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(parts) + more


R = TypeVar("R", bound=BaseModel)


def reply_to(request: RequestMessage, kind: type[R], **fields: Any) -> R:
    """The reply `kind` to `request`: same run and round, its nonce echoed, a fresh nonce.

    A reply that the protocol would refuse (a diverged training's NaN loss, say) is this node's
    failure, reported as such (`worker.failed`) rather than sent for the peer to refuse.
    """
    try:
        return kind(run=request.run, round=request.round, reply_to=request.nonce, nonce=new_nonce(), **fields)
    except ValidationError as exc:
        op = kind.model_fields["op"].default
        raise SynergosError(
            f"{request.op} produced an invalid {op} reply: {_describe(exc)}", ErrorCode.WORKER_FAILED
        ) from None


def as_header(message: BaseModel) -> dict[str, Any]:
    """The control header that carries `message` (what `parse_request`/`parse_reply` read back)."""
    return message.model_dump()
