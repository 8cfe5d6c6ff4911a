"""Preprocessing shared across parties: statistics combined exactly, every split scaled the same way."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from synergos_core.data import prepare_tabular, tabular_statistics
from synergos_core.preprocessing import Preprocessing, PreprocessingOptions, Statistics, combine, plan

SCHEMA = {"x": "float64", "z": "float64", "colour": "category", "target": "float64"}


def party(seed: int, n: int, shift: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, 1.0, n)
    frame = pd.DataFrame(
        {
            "x": x,
            "z": rng.uniform(0, 1, n),
            "colour": rng.choice(["red", "blue"] if shift else ["red", "green"], n),
            "target": 3 * x + rng.normal(0, 0.1, n),
        }
    )
    frame.loc[::7, "z"] = np.nan
    return frame


def test_combined_statistics_equal_the_pooled_data() -> None:
    a, b = party(1, 40, 0.0), party(2, 60, 1e6)  # far apart: a naive sum of squares would cancel
    pooled = combine([tabular_statistics([a], "regress", SCHEMA), tabular_statistics([b], "regress", SCHEMA)])
    both = pd.concat([a, b])
    for col in ("x", "z"):
        values = both[col].dropna().to_numpy()
        stats = pooled.numeric[col]
        assert stats.count == len(values)
        assert stats.mean == pytest.approx(values.mean(), rel=1e-12)
        assert stats.std == pytest.approx(values.std(), rel=1e-9)
        assert (stats.min, stats.max) == (values.min(), values.max())
    assert pooled.categorical["colour"] == both["colour"].value_counts().sort_index().to_dict()
    assert pooled.target is not None and pooled.target.mean == pytest.approx(both["target"].mean(), rel=1e-12)
    assert pooled.rows == 100


def test_statistics_hold_aggregates_only() -> None:
    a = party(3, 25, 0.0)
    dumped = tabular_statistics([a], "regress", SCHEMA).model_dump_json()
    middle = sorted(a["x"])[12]
    assert repr(middle) not in dumped and f"{middle:.6f}" not in dumped


@pytest.mark.parametrize("scaling,scaler", [("standard", StandardScaler), ("minmax", MinMaxScaler)])
def test_every_split_scaled_with_the_pooled_train_statistics(scaling: str, scaler: type) -> None:
    a, b = party(4, 30, 0.0), party(5, 50, 100.0)
    parties = {"a": tabular_statistics([a], "regress", SCHEMA), "b": tabular_statistics([b], "regress", SCHEMA)}
    plans = plan(PreprocessingOptions(scaling=scaling), parties)  # type: ignore[arg-type]
    reference = scaler().fit(pd.concat([a, b])[["x"]].to_numpy())
    held_out = party(6, 9, 50.0)
    prepared = prepare_tabular([held_out], "regress", SCHEMA, plans["a"])
    expected = reference.transform(held_out[["x"]].to_numpy())[:, 0]
    np.testing.assert_allclose(prepared.X[:, prepared.x_headers.index("x")], expected, rtol=1e-5, atol=1e-6)


def test_one_row_is_prepared_as_inside_its_batch() -> None:
    a, b = party(7, 30, 0.0), party(8, 30, 5.0)
    plans = plan(
        PreprocessingOptions(),
        {"a": tabular_statistics([a], "regress", SCHEMA), "b": tabular_statistics([b], "regress", SCHEMA)},
    )
    batch = prepare_tabular([b], "regress", SCHEMA, plans["b"])
    for row in (0, 7, 13):  # 0 and 7 have a missing z, imputed with the pooled mean
        one = prepare_tabular([b.iloc[[row]]], "regress", SCHEMA, plans["b"])
        for j, header in enumerate(one.x_headers):
            assert one.X[0, j] == batch.X[row, batch.x_headers.index(header)]
        assert one.y[0, 0] == batch.y[row, 0]


def test_local_statistics_are_the_partys_own_and_the_target_pooled() -> None:
    a, b = party(9, 30, 0.0), party(10, 30, 100.0)
    parties = {"a": tabular_statistics([a], "regress", SCHEMA), "b": tabular_statistics([b], "regress", SCHEMA)}
    plans = plan(PreprocessingOptions(statistics="local"), parties)
    prepared = prepare_tabular([b], "regress", SCHEMA, plans["b"])
    x = prepared.X[:, prepared.x_headers.index("x")]
    assert x.mean() == pytest.approx(0.0, abs=1e-5) and x.std() == pytest.approx(1.0, rel=1e-4)
    pooled_target = pd.concat([a, b])["target"]
    assert prepared.target_shift == pytest.approx(pooled_target.mean())
    assert prepared.target_scale == pytest.approx(pooled_target.std(ddof=0))


def test_missing_category_takes_the_pooled_most_frequent() -> None:
    a = pd.DataFrame({"colour": ["blue"] * 5 + ["red"], "x": range(6), "target": range(6)})
    b = pd.DataFrame({"colour": ["red", "red", None], "x": range(3), "target": range(3)})
    schema = {"colour": "category", "x": "float64", "target": "float64"}
    plans = plan(
        PreprocessingOptions(),
        {"a": tabular_statistics([a], "regress", schema), "b": tabular_statistics([b], "regress", schema)},
    )
    prepared = prepare_tabular([b], "regress", schema, plans["b"])
    # blue (5 in all) outnumbers red (3): B's missing colour is blue although B never saw one
    assert prepared.x_headers == ["colour_blue", "colour_red", "x"]
    np.testing.assert_array_equal(prepared.X[:, 0], [0, 0, 1])


def test_none_scaling_keeps_values_and_target_in_units() -> None:
    a = party(11, 20, 3.0)
    stats = tabular_statistics([a], "regress", SCHEMA)
    prepared = prepare_tabular(
        [a], "regress", SCHEMA, Preprocessing(scaling="none", target_scaling="none", statistics=stats)
    )
    np.testing.assert_allclose(prepared.X[:, prepared.x_headers.index("x")], a["x"], rtol=1e-6)
    np.testing.assert_allclose(prepared.y[:, 0], a["target"], rtol=1e-6)


def test_options_resolve_from_project_then_request() -> None:
    project = {"project_id": "p", "action": "regress", "scaling": "minmax"}
    assert PreprocessingOptions.resolve(project, None).scaling == "minmax"
    chosen = PreprocessingOptions.resolve(project, {"scaling": "none", "target_scaling": False})
    assert (chosen.scaling, chosen.statistics, chosen.target_scaling) == ("none", "global", "none")
    with pytest.raises(ValidationError):
        PreprocessingOptions.resolve({"scaling": "robust"})


def test_reported_statistics_are_checked() -> None:
    with pytest.raises(ValidationError):
        Statistics.model_validate({"rows": 3, "numeric": {"x": {"count": 3, "sum": float("nan")}}})
    with pytest.raises(ValidationError):
        Statistics.model_validate({"rows": 3, "numeric": {"x": {"count": -1}}})
    with pytest.raises(ValidationError):
        Statistics.model_validate({"rows": 3, "categorical": {"c": {"a": -4}}})
