"""The names Synergos gives to MLflow objects, cleaned to what MLflow accepts.

One Synergos run is one MLflow run: experiment `"<collab>_>_<project>_>_<expt>"`, run name
= run id, tag `synergos.run_key` = `"collab/project/expt/run"` (how a run is found again),
registered model named like the experiment.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

RUN_KEY_TAG = "synergos.run_key"
FAILURE_TAG = "synergos.failure"
OP_TAG = "synergos.op"  # on a model version: the operation that created it (re-applying is a no-op)
CHAMPION_ALIAS = "champion"
KEY_FIELDS = ("collab_id", "project_id", "expt_id", "run_id")

# MLflow's own limits (mlflow.utils.validation), repeated so importing this module stays cheap
MAX_KEY_LENGTH = 250
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000

# MLflow allows alphanumerics, `_ - . / : space` in metric names; we keep `\w . -` so a name can
# never be read as a path (`a/../b`) and stays the same on every platform.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


def run_keys(keys: Mapping[str, Any]) -> dict[str, str]:
    """The four ids of a run, as strings; a KeyError names the one missing."""
    out = {}
    for field in KEY_FIELDS:
        value = keys[field]
        if value is None or str(value) == "":
            raise KeyError(field)
        out[field] = str(value)
    return out


def experiment_name(collab_id: str, project_id: str, expt_id: str) -> str:
    return f"{collab_id}_>_{project_id}_>_{expt_id}"


def registered_model_name(collab_id: str, project_id: str, expt_id: str) -> str:
    """The experiment name, minus the `/` and `:` MLflow refuses in model names."""
    return re.sub(r"[/:]", "_", experiment_name(collab_id, project_id, expt_id))


def run_key(keys: Mapping[str, str]) -> str:
    return "/".join(str(keys[f]) for f in KEY_FIELDS)


def metric_name(*parts: object) -> str:
    """Join parts with `_` and replace characters MLflow would refuse (or read as a path)."""
    name = _UNSAFE.sub("_", "_".join(str(p) for p in parts if str(p) != ""))
    if name.strip(".") == "":
        name = "_" + name
    return name[:MAX_KEY_LENGTH]


def param_key(key: object) -> str:
    return metric_name(key)


def param_value(value: object) -> str:
    return str(value)[:MAX_PARAM_LENGTH]


def tag_value(value: object) -> str:
    return str(value)[:MAX_TAG_LENGTH]


def metric_value(value: object) -> float | None:
    """A float MLflow can store, or None for a missing, non-finite (NaN, ±inf) or non-numeric value."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]  # numpy and torch scalars too; others raise below
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def quote(value: str) -> str:
    """A string literal for an MLflow search filter."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"cannot search MLflow for a value holding both quote characters: {value!r}")
