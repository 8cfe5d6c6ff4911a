"""Feature alignment across parties (TTP side) and the model I/O fix that follows it.

Every party reports its sorted feature and target headers per meta. The superset is the sorted
union over all parties and metas (train, evaluate and predict must share one layout because one
model sees them all). A party's spacers are the superset positions it lacks; the Worker inserts
zero columns there (`data.apply_spacers`), so every party presents identical columns.

Headers are sorted on every party, so the alignment of the original's pairwise
Needleman-Wunsch merge reduces to set membership against the sorted union.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from .errors import ErrorCode, InvalidRequest

HeaderSets = dict[str, dict[str, dict[str, list[str]]]]
Spacers = dict[str, dict[str, dict[str, list[int]]]]

AXES: tuple[str, ...] = ("X", "y")
# Layers whose first-size argument is `input_size`; the rest of torch.nn names it `in_features`.
RECURRENT_LAYERS = frozenset({"RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"})


@dataclass
class Alignment:
    """The aligned layout: `superset` {"X": [...], "y": [...]} and per-party, per-meta spacers."""

    superset: dict[str, list[str]] = field(default_factory=lambda: {"X": [], "y": []})
    spacers: Spacers = field(default_factory=dict)


def _header_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(h, str) for h in value):
        raise InvalidRequest(f"headers of {where} must be a list of names", code=ErrorCode.ALIGNMENT_INVALID)
    if len(set(value)) != len(value):
        # A repeated header would make one party's columns shift against the superset.
        raise InvalidRequest(f"headers of {where} repeat a name", code=ErrorCode.ALIGNMENT_INVALID)
    return value


def align_headers(headers: HeaderSets) -> Alignment:
    """Build the sorted superset of headers and each party's spacer indices.

    `headers` is {participant_id: {meta: {"X": [...], "y": [...]}}}; a meta whose X and y
    headers are both empty or missing is skipped. For a matrix whose columns are a party's
    sorted headers, `apply_spacers(matrix, spacers[pid][meta][axis])` yields the superset's
    columns in superset order.
    """
    if not isinstance(headers, dict):
        raise InvalidRequest("headers must map participants to metas", code=ErrorCode.ALIGNMENT_INVALID)
    present: dict[str, dict[str, dict[str, set[str]]]] = {}
    union: dict[str, set[str]] = {axis: set() for axis in AXES}
    for participant, metas in headers.items():
        if not isinstance(metas, dict):
            raise InvalidRequest(
                f"headers of {participant!r} must map metas to headers", code=ErrorCode.ALIGNMENT_INVALID
            )
        for meta, axes in metas.items():
            if not axes:
                continue
            if not isinstance(axes, dict):
                raise InvalidRequest(
                    f"headers of {participant!r}/{meta!r} must be {{'X': [...], 'y': [...]}}",
                    code=ErrorCode.ALIGNMENT_INVALID,
                )
            lists = {axis: _header_list(axes.get(axis), f"{participant!r}/{meta!r}/{axis}") for axis in AXES}
            if not any(lists.values()):
                continue
            present.setdefault(participant, {})[meta] = {axis: set(names) for axis, names in lists.items()}
            for axis in AXES:
                union[axis].update(lists[axis])

    superset = {axis: sorted(union[axis]) for axis in AXES}
    spacers: Spacers = {
        participant: {
            meta: {axis: [i for i, name in enumerate(superset[axis]) if name not in own[axis]] for axis in AXES}
            for meta, own in metas.items()
        }
        for participant, metas in present.items()
    }
    return Alignment(superset=superset, spacers=spacers)


def _output_size(n_classes: int, action: str) -> int:
    # Two classes are one sigmoid output (BCE); k > 2 classes are k outputs.
    return 1 if action == "regress" or n_classes <= 2 else n_classes


def fix_model_io(model: list[dict[str, Any]], x_width: int, n_classes: int, action: str) -> list[dict[str, Any]]:
    """Return a copy of `model` whose input and output sizes fit the aligned data (auto_fix).

    Input: the first layer marked `is_input` (else the first layer) gets `in_features` =
    `x_width` (`input_size` for RNN/LSTM/GRU); convolutions (`in_channels`) and Embedding are
    left alone. Output: the last layer with `out_features` gets 1 for regression or ≤2 classes,
    else `n_classes`, and for k > 2 classes a final "sigmoid" becomes "softmax". Inner sizes
    (e.g. after Flatten) are never touched. The input list is not mutated.
    """
    if action not in ("classify", "regress"):
        raise InvalidRequest("action must be 'classify' or 'regress'", code=ErrorCode.REQUEST_INVALID)
    if not isinstance(x_width, int) or x_width < 1:
        raise InvalidRequest("the aligned data has no feature column", code=ErrorCode.ALIGNMENT_INVALID)
    if action == "classify" and (not isinstance(n_classes, int) or n_classes < 1):
        raise InvalidRequest("the aligned data has no class", code=ErrorCode.ALIGNMENT_INVALID)
    fixed = copy.deepcopy(model)
    if not fixed:
        return fixed
    for layer in fixed:
        if not isinstance(layer, dict):
            raise InvalidRequest("every layer must be an object", code=ErrorCode.REQUEST_INVALID)
        if not isinstance(layer.get("structure") or {}, dict):
            raise InvalidRequest("a layer's structure must be an object", code=ErrorCode.REQUEST_INVALID)
        layer["structure"] = dict(layer.get("structure") or {})

    first = next((layer for layer in fixed if layer.get("is_input")), fixed[0])
    l_type, structure = first.get("l_type"), first["structure"]
    if l_type in RECURRENT_LAYERS:
        structure["input_size"] = x_width
    elif l_type == "Embedding" or "in_channels" in structure:
        pass  # vocabulary sizes and channel counts are not feature widths
    elif "in_features" in structure or l_type == "Linear":
        structure["in_features"] = x_width

    last = next(
        (layer for layer in reversed(fixed) if "out_features" in layer["structure"] or layer.get("l_type") == "Linear"),
        None,
    )
    if last is not None:
        last["structure"]["out_features"] = _output_size(n_classes, action)
        if action == "classify" and n_classes > 2 and last.get("activation") == "sigmoid":
            # Independent sigmoids do not form a distribution over k exclusive classes.
            last["activation"] = "softmax"
    if action == "classify" and n_classes > 2 and fixed[-1].get("l_type") == "Sigmoid":
        fixed[-1] = {**fixed[-1], "l_type": "Softmax", "structure": {"dim": 1}}  # the same, as its own layer
    return fixed
