"""The federation protocol's messages: each survives the wire as itself, is parsed by its op into
its own model, and anything malformed (unknown op, missing or mistyped field, a NaN loss) is
refused as `federation.protocol` before either end acts on it."""

from __future__ import annotations

import asyncio
import math
from collections import deque

import pytest
import torch
from pydantic import BaseModel

from synergos_core.errors import FederationError, SynergosError
from synergos_core.federation import broadcast_state, recv_into, recv_tensors, send_message, send_state, send_tensors
from synergos_core.protocol import (
    PROTOCOL_VERSION,
    Assessment,
    ClassificationParts,
    Close,
    Closed,
    Error,
    Evaluate,
    GktEvaluate,
    GktExport,
    GktExtractor,
    GktFeatures,
    GktTrain,
    Infer,
    Loss,
    Metrics,
    Op,
    RegressionParts,
    ReplyMessage,
    RequestMessage,
    Train,
    Update,
    as_header,
    new_nonce,
    parse_reply,
    parse_request,
    reply_to,
    version_mismatch,
)
from synergos_core.wire import Layout, decode_control, encode_control

RUN = "c/p/e/r"
TRAINING = {"n_samples": 40, "train_loss": 0.25, "epoch_losses": [0.5, 0.25], "compute_s": 0.01, "lrs": [0.1, 0.05]}
ASSESSMENT = {
    "train_loss": 0.3,
    "train_samples": 40,
    "eval_loss": 0.4,
    "eval_samples": 10,
    "metric": {"n": 10, "correct": 7},
}


def _envelope(round_index: int = 3) -> dict:
    return {"run": RUN, "round": round_index, "nonce": new_nonce()}


def _requests() -> list[RequestMessage]:
    return [
        Train(**_envelope(), epochs=5, evaluate=True, shards=2),
        Evaluate(**_envelope(), meta="evaluate", assess=True),
        Infer(**_envelope(0), meta="predict", shards=1),
        Close(**_envelope()),
        GktTrain(**_envelope(), epochs=2),
        GktTrain(**_envelope(), epochs=2, shards=1, layout=[("server_out", "F32", [40, 3])]),
        GktEvaluate(**_envelope(), meta="evaluate", assess=False, shards=1),
        GktExport(**_envelope()),
    ]


def _replies() -> list[ReplyMessage]:
    request = Train(**_envelope(), epochs=1)
    regression = {**ASSESSMENT, "metric": {"n": 10, "sse": 2.5, "sum_y": 30.0, "sum_y2": 120.0}}
    return [
        reply_to(request, Update, **TRAINING, assessment=ASSESSMENT, shards=1),
        reply_to(request, Update, **TRAINING),
        reply_to(request, Loss, loss=0.5, n_samples=10, assessment=regression),
        reply_to(request, Loss, loss=None, n_samples=0),
        reply_to(
            request,
            Metrics,
            meta="evaluate",
            statistics={"accuracy": [0.7, 0.7], "TP": [3, 4]},
            n_samples=10,
            res_path="c/p/e/r/evaluate",
            parts={"n": 10, "correct": 7},
        ),
        reply_to(request, Metrics, meta="predict", statistics=None, n_samples=0, res_path=None),
        reply_to(request, Closed),
        reply_to(
            request,
            GktFeatures,
            **TRAINING,
            shards=2,
            layout=[("features", "F32", [40, 8]), ("local_out", "F32", [40, 3])],
        ),
        reply_to(request, GktExtractor, shards=1, layout=[("layers.0.weight", "F32", [8, 4])]),
        Error(**_envelope(), reply_to=request.nonce, code="worker.failed", detail="train failed"),
        Error(**_envelope(0), code="federation.protocol", detail="control frame is not JSON"),
    ]


def _over_the_wire(message: BaseModel) -> dict:
    return decode_control(encode_control(as_header(message)))


@pytest.mark.parametrize("message", _requests(), ids=lambda m: m.op)
def test_every_request_round_trips_as_its_own_model(message):
    parsed = parse_request(_over_the_wire(message))
    assert type(parsed) is type(message) and parsed == message


@pytest.mark.parametrize("message", _replies(), ids=lambda m: m.op)
def test_every_reply_round_trips_as_its_own_model(message):
    parsed = parse_reply(_over_the_wire(message))
    assert type(parsed) is type(message) and parsed == message


def test_parsed_fields_are_typed_not_dicts():
    update = parse_reply(_over_the_wire(_replies()[0]))
    assert isinstance(update, Update) and isinstance(update.assessment, Assessment)
    assert update.assessment.metric == ClassificationParts(n=10, correct=7)
    loss = parse_reply(_over_the_wire(_replies()[2]))
    assert isinstance(loss, Loss) and isinstance(loss.assessment.metric, RegressionParts)


def test_every_op_is_named_once_and_belongs_to_one_message():
    models = [*RequestMessage.__args__, *ReplyMessage.__args__]
    ops = [m.model_fields["op"].default for m in models]
    assert sorted(ops) == sorted(Op) and len(set(ops)) == len(ops)


def test_reply_to_echoes_the_request_with_a_fresh_nonce():
    request = Evaluate(**_envelope(7), meta="evaluate")
    reply = reply_to(request, Loss, loss=0.1, n_samples=3)
    assert (reply.run, reply.round, reply.reply_to) == (request.run, request.round, request.nonce)
    assert reply.nonce != request.nonce and len(reply.nonce) >= 16


def test_a_reply_the_protocol_would_refuse_is_the_nodes_failure_not_sent():
    request = Train(**_envelope(), epochs=1)
    with pytest.raises(SynergosError) as info:
        reply_to(request, Update, **{**TRAINING, "train_loss": math.nan})
    assert info.value.code == "worker.failed" and "train_loss" in info.value.detail
    assert "finite" in info.value.detail


@pytest.mark.parametrize("op", ["trian", "", "pickle", "update"])
def test_unknown_op_is_refused_naming_it(op):
    header = {**as_header(Close(**_envelope())), "op": op}
    with pytest.raises(FederationError) as info:
        parse_request(header)
    assert info.value.code == "federation.protocol" and repr(op) in info.value.detail
    assert f"protocol {PROTOCOL_VERSION}" in info.value.detail


def test_a_request_is_not_a_reply_and_a_non_string_op_is_refused():
    with pytest.raises(FederationError, match="not a reply"):
        parse_reply(as_header(Train(**_envelope(), epochs=1)))
    with pytest.raises(FederationError, match="not a request"):
        parse_request({**as_header(Close(**_envelope())), "op": ["train"]})


def _train_header() -> dict:
    return as_header(Train(**_envelope(), epochs=3, evaluate=False, shards=1))


@pytest.mark.parametrize(
    "change, field",
    [
        ({"epochs": "3"}, "epochs"),  # no coercion from strings
        ({"epochs": 3.0}, "epochs"),  # nor from floats
        ({"epochs": True}, "epochs"),  # nor from booleans
        ({"epochs": 0}, "epochs"),  # at least one epoch
        ({"evaluate": 1}, "evaluate"),
        ({"shards": -1}, "shards"),
        ({"round": -1}, "round"),
        ({"nonce": "short"}, "nonce"),
        ({"nonce": None}, "nonce"),
        ({"run": 7}, "run"),
        ({"mu": 0.1}, "mu"),  # no field the protocol does not name
    ],
)
def test_malformed_request_fields_are_refused(change, field):
    with pytest.raises(FederationError) as info:
        parse_request(decode_control(encode_control({**_train_header(), **change})))
    assert info.value.code == "federation.protocol" and field in info.value.detail
    assert info.value.detail.startswith("malformed train request")


@pytest.mark.parametrize("missing", ["run", "round", "nonce", "epochs"])
def test_missing_fields_are_refused(missing):
    header = {k: v for k, v in _train_header().items() if k != missing}
    with pytest.raises(FederationError, match=f"{missing}: Field required") as info:
        parse_request(header)
    assert info.value.code == "federation.protocol"


def test_unknown_meta_is_refused():
    header = {**as_header(Infer(**_envelope(), meta="evaluate")), "meta": "../etc"}
    with pytest.raises(FederationError, match="meta") as info:
        parse_request(header)
    assert info.value.code == "federation.protocol"


def _update_header() -> dict:
    return as_header(_replies()[0])


NON_FINITE, BAD_COUNT, PROTOCOL = "federation.non_finite", "federation.bad_count", "federation.protocol"


@pytest.mark.parametrize(
    "path, value, code",
    [
        (("train_loss",), math.nan, NON_FINITE),
        (("train_loss",), math.inf, NON_FINITE),
        (("epoch_losses",), [0.5, math.nan], NON_FINITE),
        (("compute_s",), -1.0, PROTOCOL),
        (("n_samples",), -3, BAD_COUNT),
        (("n_samples",), 40.0, BAD_COUNT),
        (("lrs",), [math.inf], NON_FINITE),
        (("assessment", "eval_loss"), math.nan, NON_FINITE),
        (("assessment", "train_samples"), -1, BAD_COUNT),
        (("assessment", "metric"), {"n": 10}, PROTOCOL),
        (("assessment", "metric"), {"n": 10, "correct": 7, "extra": 1}, PROTOCOL),
        (("assessment", "metric"), {"n": 10, "sse": math.nan, "sum_y": 1.0, "sum_y2": 1.0}, NON_FINITE),
        (("assessment", "metric"), {"n": 10, "sse": math.nan, "sum_y": 1.0}, PROTOCOL),
        (("assessment", "metric"), {"n": 10, "correct": 11.5}, PROTOCOL),
        (("reply_to",), None, PROTOCOL),
        (("shards",), "1", PROTOCOL),
    ],
)
def test_malformed_or_non_finite_update_is_refused_with_its_reason(path, value, code):
    header = _update_header()
    target = header
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    # through the codec: json writes NaN and Infinity, so the protocol must be the one to refuse them;
    # a message whose only fault is a non-finite number or a bad count is refused for that reason (the
    # TTP can then leave the party out of the round), anything else is a broken message
    with pytest.raises(FederationError) as info:
        parse_reply(decode_control(encode_control(header)))
    assert info.value.code == code and ".".join(path[:1]) in info.value.detail


def test_a_non_finite_number_beside_a_broken_field_is_a_protocol_error():
    header = {**_update_header(), "train_loss": math.nan, "shards": "1"}
    with pytest.raises(FederationError) as info:
        parse_reply(decode_control(encode_control(header)))
    assert info.value.code == PROTOCOL


def test_nan_loss_is_refused():
    loss = as_header(reply_to(Evaluate(**_envelope(), meta="evaluate"), Loss, loss=0.5, n_samples=4))
    with pytest.raises(FederationError, match="loss: Input should be a finite number") as info:
        parse_reply(decode_control(encode_control({**loss, "loss": float("nan")})))
    assert info.value.code == NON_FINITE


def test_malformed_tensor_manifest_is_refused():
    header = as_header(_replies()[7])
    for layout in ([["features", "F32", ["40", 8]]], [["features", "F32"]], [["features", "F32", [-1]]], "features"):
        with pytest.raises(FederationError, match="layout") as info:
            parse_reply({**header, "layout": layout})
        assert info.value.code == "federation.protocol"


def test_error_detail_never_echoes_the_peers_values():
    secret = "x" * 100 + "SECRET"
    with pytest.raises(FederationError) as info:
        parse_request({**_train_header(), "epochs": secret})
    assert "SECRET" not in info.value.detail


def test_version_mismatch_names_both_versions():
    other = PROTOCOL_VERSION + 1
    assert version_mismatch(str(other), peer="Worker") == (
        f"federation protocol {other} is not supported; this Worker speaks {PROTOCOL_VERSION}"
    )
    assert f"this TTP speaks {PROTOCOL_VERSION}" in version_mismatch(None, peer="TTP")


# -- the codec still fills in what tensor frames follow a message --


class _Pipe:
    """Both ends of a channel in one: frames sent are the frames received, in order."""

    def __init__(self) -> None:
        self.frames: deque[bytes] = deque()

    async def send(self, frame: bytes) -> None:
        self.frames.append(frame)

    async def recv(self) -> bytes:
        return self.frames.popleft()


def test_send_state_announces_its_shards_and_the_receiver_reads_them_typed():
    state = {"w": torch.arange(3000, dtype=torch.float32), "b": torch.ones(7)}
    pipe = _Pipe()

    async def exchange() -> tuple[RequestMessage, dict[str, torch.Tensor]]:
        await send_state(pipe, Train(**_envelope(), epochs=1), state, shard_bytes=1024)
        request = parse_request(decode_control(await pipe.recv()))
        target = {k: torch.zeros_like(v) for k, v in state.items()}
        await recv_into(pipe, request.shards, Layout.of(state), target, timeout=1)
        return request, target

    request, received = asyncio.run(exchange())
    assert isinstance(request, Train) and request.shards > 5 and not pipe.frames
    assert all(torch.equal(received[k], state[k]) for k in state)


def test_broadcast_gives_each_peer_its_own_message():
    state = {"w": torch.ones(10)}
    pipes = [_Pipe(), _Pipe()]
    sent = [Evaluate(**_envelope(), meta="evaluate") for _ in pipes]
    asyncio.run(broadcast_state(list(zip(pipes, sent, strict=True)), state, shard_bytes=1024))
    for pipe, message in zip(pipes, sent, strict=True):
        parsed = parse_request(decode_control(pipe.frames[0]))
        assert parsed.nonce == message.nonce and parsed.shards == 1 == len(pipe.frames) - 1


def test_send_tensors_announces_a_manifest_the_receiver_checks():
    tensors = {"features": torch.randn(40, 8), "local_out": torch.randn(40, 3)}
    reply = reply_to(GktTrain(**_envelope(), epochs=1), GktFeatures, **TRAINING)
    pipe = _Pipe()

    async def exchange() -> dict[str, torch.Tensor]:
        await send_tensors(pipe, reply, tensors, shard_bytes=512)
        parsed = parse_reply(decode_control(await pipe.recv()))
        assert isinstance(parsed, GktFeatures) and parsed.layout is not None
        return await recv_tensors(pipe, parsed, {"features", "local_out"}, max_bytes=1 << 20, timeout=1)

    received = asyncio.run(exchange())
    assert all(torch.equal(received[k], tensors[k]) for k in tensors)

    async def refused() -> None:
        await send_tensors(pipe, reply, tensors, shard_bytes=512)
        parsed = parse_reply(decode_control(await pipe.recv()))
        await recv_tensors(pipe, parsed, {"features"}, max_bytes=1 << 20, timeout=1)

    with pytest.raises(FederationError, match="not allowed"):
        asyncio.run(refused())


def test_a_message_without_tensors_cannot_announce_any():
    with pytest.raises(TypeError):
        asyncio.run(send_state(_Pipe(), Close(**_envelope()), {"w": torch.ones(1)}, 1024))
    pipe = _Pipe()
    asyncio.run(send_message(pipe, GktExport(**_envelope())))
    assert "shards" not in decode_control(pipe.frames[0])
