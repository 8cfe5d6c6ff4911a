"""The federation codec: what goes in comes out, bounded shards, and nothing foreign gets through."""

import struct

import pytest
import torch
from safetensors.torch import load as st_load

from synergos_core.errors import FederationError
from synergos_core.federation import ReplayGuard, new_nonce
from synergos_core.protocol import Close
from synergos_core.wire import (
    Layout,
    decode_control,
    decode_shard,
    encode_control,
    encode_shard,
    encode_state,
    write_slices,
)


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(300, 70, generator=g),
        "a.bias": torch.randn(300, generator=g),
        "bn.num_batches_tracked": torch.tensor(7),
        "b.weight": torch.randn(5, 300, generator=g),
    }


def test_state_round_trips_through_small_shards_bit_for_bit():
    state = _state()
    received = {k: torch.zeros_like(v) for k, v in state.items()}
    layout = Layout.of(state)
    frames = list(encode_state(state, shard_bytes=4096))
    assert len(frames) > 20  # a 300x70 tensor had to be split across shards
    assert all(len(f) < 4096 + 1024 for f in frames)
    for frame in frames:
        write_slices(received, decode_shard(frame, layout))
    for name in state:
        assert torch.equal(received[name], state[name]), name


def test_shards_are_standard_safetensors():
    state = _state()
    pieces = Layout.of(state).plan(1 << 20)[0]
    frame = encode_shard(state, pieces)
    tensors = st_load(frame[1:])
    assert torch.equal(tensors["a.bias"], state["a.bias"].reshape(-1))


def test_unknown_tensor_or_wrong_dtype_is_refused():
    state = _state()
    layout = Layout.of({"a.weight": state["a.weight"]})
    frame = encode_shard(state, Layout.of(state).plan(1 << 20)[0])
    with pytest.raises(FederationError, match="unexpected tensor"):
        decode_shard(frame, layout)
    other = Layout.of({k: v.double() if v.is_floating_point() else v for k, v in state.items()})
    with pytest.raises(FederationError, match="dtype"):
        decode_shard(frame, other)


def test_slice_past_the_tensor_end_is_refused():
    state = {"w": torch.ones(10)}
    frame = bytearray(encode_shard({"w": torch.ones(10)}, Layout.of(state).plan(1024)[0]))
    forged = bytes(frame).replace(b'"w":"0"', b'"w":"5"')
    with pytest.raises(FederationError, match="out of bounds"):
        decode_shard(forged, Layout.of(state))


def test_truncated_or_garbage_frames_are_refused():
    state = _state()
    frame = next(encode_state(state, 1 << 20))
    with pytest.raises(FederationError):
        decode_shard(frame[:50], Layout.of(state))
    with pytest.raises(FederationError):
        decode_shard(bytes([2]) + struct.pack("<Q", 1 << 40) + b"{}", Layout.of(state))
    with pytest.raises(FederationError):
        decode_control(b"\x01not json")
    with pytest.raises(FederationError):
        decode_control(b"\x02" + b"{}")  # a tensor frame where a header was expected


def test_control_frames_are_json():
    header = {"op": "train", "round": 3, "nonce": new_nonce()}
    assert decode_control(encode_control(header)) == header


def test_replay_guard_accepts_each_nonce_once_and_no_stale_round():
    guard = ReplayGuard("c/p/e/r")
    msg = Close(run="c/p/e/r", round=2, nonce=new_nonce())
    guard.check(msg)
    with pytest.raises(FederationError, match="replay"):
        guard.check(msg)
    with pytest.raises(FederationError, match="stale"):
        guard.check(Close(run="c/p/e/r", round=1, nonce=new_nonce()))
    with pytest.raises(FederationError, match="run"):
        guard.check(Close(run="c/p/e/other", round=3, nonce=new_nonce()))
    guard.check(Close(run="c/p/e/r", round=2, nonce=new_nonce()))  # the same round again is not stale
