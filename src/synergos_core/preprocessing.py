"""Preprocessing shared across parties: aggregate statistics of the train splits, combined once.

During alignment each Worker reports, for its `train` split only, per-column aggregates: for a
numeric column its count of present values, their sum, sum of squares, sum of squared deviations
from the party's own mean (`m2`, so that variances combine without cancellation), min and max;
for a categorical column its count per category; for a regression target the same as a numeric
column. Never a row. The TTP (or the Director) combines them into the project's statistics and
hands them to every Worker at initialise, where every split (train, evaluate, predict, any later
prediction) is imputed and scaled with them, so that one raw value becomes one input everywhere.

Options, chosen per project (and per alignment):
- `scaling`: `standard` (z-score with the mean and population standard deviation, the default),
  `minmax` (to [0, 1] with the min and max) or `none` (imputation only). One-hot indicator columns
  are never scaled.
- `statistics`: `global` (the default: the parties' train splits pooled) or `local` (each party's
  own train split, applied to all of that party's splits, as in per-centre normalisation).
- `target_scaling`: for regression, the target is standardised with the pooled mean and standard
  deviation of the train targets (`standard`, the default, always pooled, so that the parties'
  outputs mean the same thing) or left as is (`none`); predictions and metrics are reported in the
  target's original units either way.

Imputation: a missing numeric value becomes the mean of the statistics used (an all-missing
column 0), a missing category the most frequent category (ties broken by name).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

Scaling = Literal["standard", "minmax", "none"]
Source = Literal["global", "local"]
TargetScaling = Literal["standard", "none"]
SCALINGS: tuple[str, ...] = ("standard", "minmax", "none")
SOURCES: tuple[str, ...] = ("global", "local")
# A party's statistics are small; many columns or categories mean a mistake or an attack.
MAX_COLUMNS = 100_000
MAX_CATEGORIES = 100_000
_TINY = 1e-12


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NumericStatistics(_Strict):
    """Aggregates of one numeric column's present values (min/max are None when count is 0)."""

    count: int = Field(ge=0)
    sum: float = 0.0
    sum_sq: float = Field(default=0.0, ge=0)
    m2: float = Field(default=0.0, ge=0)
    min: float | None = None
    max: float | None = None

    @field_validator("sum", "sum_sq", "m2", "min", "max")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("statistics must be finite numbers")
        return value

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        """Population standard deviation (ddof 0), as scikit-learn's StandardScaler uses."""
        return math.sqrt(max(self.m2, 0.0) / self.count) if self.count else 0.0


class Statistics(_Strict):
    """One train split's (or the project's) aggregates; `rows` counts the rows with a target."""

    rows: int = Field(default=0, ge=0)
    numeric: dict[str, NumericStatistics] = Field(default_factory=dict)
    categorical: dict[str, dict[str, int]] = Field(default_factory=dict)
    target: NumericStatistics | None = None

    @field_validator("numeric", "categorical")
    @classmethod
    def _bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > MAX_COLUMNS:
            raise ValueError(f"at most {MAX_COLUMNS} columns")
        return value

    @field_validator("categorical")
    @classmethod
    def _counts(cls, value: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        for counts in value.values():
            if len(counts) > MAX_CATEGORIES or any(n < 0 for n in counts.values()):
                raise ValueError(f"category counts must be at most {MAX_CATEGORIES} non-negative numbers per column")
        return value


class Preprocessing(_Strict):
    """What a Worker applies to every split of a run: the options and the statistics they use."""

    scaling: Scaling = "standard"
    source: Source = "global"
    target_scaling: TargetScalingOption = "standard"
    statistics: Statistics = Field(default_factory=Statistics)


def _target_scaling(value: Any) -> Any:
    # `target_scaling=True/False` reads naturally in a script
    if isinstance(value, bool):
        return "standard" if value else "none"
    return value


TargetScalingOption = Annotated[TargetScaling, BeforeValidator(_target_scaling)]


class PreprocessingOptions(_Strict):
    """The per-project choice (optional fields of a project and of an alignment request)."""

    scaling: Scaling = "standard"
    statistics: Source = "global"
    target_scaling: TargetScalingOption = "standard"

    @classmethod
    def resolve(cls, *layers: Mapping[str, Any] | None) -> PreprocessingOptions:
        """The defaults, overridden by each layer's non-null option fields in turn (project, request)."""
        chosen: dict[str, Any] = {}
        for layer in layers:
            chosen.update({k: v for k, v in (layer or {}).items() if k in OPTION_FIELDS and v is not None})
        return cls.model_validate(chosen)


OPTION_FIELDS: tuple[str, ...] = ("scaling", "statistics", "target_scaling")


# ---- on a Worker: the aggregates of its train split ----


def numeric_statistics(values: np.ndarray) -> NumericStatistics:
    present = values[~np.isnan(values)]
    if present.size == 0:
        return NumericStatistics(count=0)
    mean = float(present.mean())
    return NumericStatistics(
        count=int(present.size),
        sum=float(present.sum()),
        sum_sq=float(np.square(present).sum()),
        m2=float(np.square(present - mean).sum()),
        min=float(present.min()),
        max=float(present.max()),
    )


def frame_statistics(
    frame: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str], target: str | None, labels: Any
) -> Statistics:
    """Aggregates of `frame` (rows that have a target): what a party reveals of its train split.

    `labels` maps a raw category value to its name (so that 1, 1.0 and "1" agree across parties).
    """
    num = {
        col: numeric_statistics(pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype="float64"))
        for col in sorted(numeric)
    }
    cat: dict[str, dict[str, int]] = {}
    for col in sorted(categorical):
        counts = frame[col].dropna().map(labels).value_counts()
        cat[col] = {str(label): int(n) for label, n in sorted(counts.items())}
    target_stats = (
        numeric_statistics(pd.to_numeric(frame[target], errors="coerce").to_numpy(dtype="float64"))
        if target is not None
        else None
    )
    return Statistics(rows=len(frame), numeric=num, categorical=cat, target=target_stats)


# ---- on the TTP: the parties' aggregates combined ----


def _combine_numeric(parts: Sequence[NumericStatistics]) -> NumericStatistics:
    present = [p for p in parts if p.count]
    count = sum(p.count for p in present)
    if not count:
        return NumericStatistics(count=0)
    total = sum(p.sum for p in present)
    mean = total / count
    # Chan et al.: the pooled sum of squared deviations, exact without subtracting large squares
    m2 = sum(p.m2 + p.count * (p.mean - mean) ** 2 for p in present)
    return NumericStatistics(
        count=count,
        sum=total,
        sum_sq=sum(p.sum_sq for p in present),
        m2=m2,
        min=min(p.min for p in present if p.min is not None),
        max=max(p.max for p in present if p.max is not None),
    )


def combine(parts: Sequence[Statistics]) -> Statistics:
    """The pooled statistics of several train splits (what one party holding all rows would report)."""
    numeric: dict[str, list[NumericStatistics]] = {}
    categorical: dict[str, dict[str, int]] = {}
    targets = []
    for part in parts:
        for col, stats in part.numeric.items():
            numeric.setdefault(col, []).append(stats)
        for col, counts in part.categorical.items():
            merged = categorical.setdefault(col, {})
            for label, n in counts.items():
                merged[label] = merged.get(label, 0) + n
        if part.target is not None:
            targets.append(part.target)
    return Statistics(
        rows=sum(p.rows for p in parts),
        numeric={col: _combine_numeric(s) for col, s in sorted(numeric.items())},
        categorical={col: dict(sorted(c.items())) for col, c in sorted(categorical.items())},
        target=_combine_numeric(targets) if targets else None,
    )


def plan(options: PreprocessingOptions, parties: Mapping[str, Statistics | None]) -> dict[str, Preprocessing]:
    """Each party's preprocessing: the pooled statistics (`global`) or its own (`local`); the
    target's always pooled. A party without train data gets the pooled statistics."""
    known = [s for s in parties.values() if s is not None]
    pooled = combine(known)
    plans = {}
    for pid, own in parties.items():
        stats = (
            pooled
            if options.statistics == "global" or own is None
            else own.model_copy(update={"target": pooled.target})
        )
        plans[pid] = Preprocessing(
            scaling=options.scaling, source=options.statistics, target_scaling=options.target_scaling, statistics=stats
        )
    return plans


# ---- on a Worker: every split imputed and scaled with the same statistics ----


def impute_numeric(values: np.ndarray, stats: NumericStatistics | None) -> np.ndarray:
    fill = stats.mean if stats is not None and stats.count else 0.0
    return np.where(np.isnan(values), fill, values)


def scale_numeric(values: np.ndarray, stats: NumericStatistics | None, scaling: str) -> np.ndarray:
    """`values` (already imputed) scaled with `stats`; a constant column is only shifted (to 0)."""
    if scaling == "none" or stats is None or not stats.count:
        return values
    if scaling == "minmax":
        low, high = float(stats.min), float(stats.max)  # type: ignore[arg-type]
        span = high - low
        return (values - low) / span if span > _TINY * max(1.0, abs(low), abs(high)) else values - low
    std = stats.std
    return (values - stats.mean) / std if std > _TINY * max(1.0, abs(stats.mean)) else values - stats.mean


def category_fill(counts: Mapping[str, int] | None) -> str | None:
    """The most frequent category (ties by name), None when nothing was seen."""
    if not counts:
        return None
    return min(counts.items(), key=lambda item: (-item[1], item[0]))[0]


def target_transform(preprocessing: Preprocessing | None) -> tuple[float, float]:
    """(shift, scale) such that model target = (y - shift) / scale; (0, 1) when not scaled."""
    if preprocessing is None or preprocessing.target_scaling == "none":
        return 0.0, 1.0
    stats = preprocessing.statistics.target
    if stats is None or not stats.count:
        return 0.0, 1.0
    std = stats.std
    return stats.mean, std if std > _TINY * max(1.0, abs(stats.mean)) else 1.0
