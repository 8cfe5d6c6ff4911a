"""Non-finite numbers (NaN, ±inf) at the edges: where they are refused and where they become null.

JSON has no NaN or infinity: Python's `json` writes them as bare `NaN`/`Infinity` (which no
strict reader accepts) and Starlette's responses refuse them outright (a 500). Whatever holds
numbers on their way into the metadata store or out of a REST answer passes through
`json_safe`, which replaces every non-finite float, however deeply nested, by None; the
federation refuses them where a party sends them (`protocol`, `aggregation.check_finite`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["json_safe", "has_non_finite", "tensor_is_finite"]


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float (in dicts, lists and tuples too) replaced by None.

    Containers without a non-finite number are returned as they are (no copy)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        cleaned = {k: json_safe(v) for k, v in value.items()}
        return value if all(cleaned[k] is v for k, v in value.items()) else cleaned
    if isinstance(value, (list, tuple)):
        items = [json_safe(v) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return type(value)(items) if isinstance(value, list) else tuple(items)
    return value


def has_non_finite(value: Any) -> bool:
    """True if `value` holds a non-finite float anywhere (dicts, lists, tuples)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(has_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(has_non_finite(v) for v in value)
    return False


def tensor_is_finite(tensor: torch.Tensor) -> bool:
    """True if every value of `tensor` is finite (integer and bool tensors always are).

    One reduction decides in the common case: a non-finite value makes the sum non-finite, and a
    finite sum means every value is finite. Only a non-finite sum (a NaN or an infinity, or finite
    values large enough to overflow it) is looked at value by value."""
    if not (tensor.is_floating_point() or tensor.is_complex()) or tensor.numel() == 0:
        return True
    if bool(torch.isfinite(tensor.sum())):
        return True
    return bool(torch.isfinite(tensor).all())
