"""The aggregation rules against plain numpy/scipy references, and how updates are refused.

`combine` is what the federated loop runs on the parties' streamed updates (read back a slice at a
time); here the updates are in memory (`StateSource`), with a chunk far smaller than a tensor so
that the slicing is exercised too."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from synergos_core.aggregation import (
    StateSource,
    check_finite,
    combine,
    coordinate_median,
    fold_slices,
    krum_tolerance,
    sample_weights,
    trimmed_mean,
)
from synergos_core.errors import FederationError, RefusedUpdate
from synergos_core.finite import has_non_finite, json_safe, tensor_is_finite
from synergos_core.schemas import RunHyperparameters
from synergos_core.wire import Layout, decode_shard, encode_state


def _updates(n: int, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {
        f"p{i}": {
            "w": torch.randn(7, 5, generator=g),
            "b": torch.randn(5, generator=g) * 10,
            "count": torch.tensor(100 + i),  # an integer counter: never combined
        }
        for i in range(n)
    }


def _combine(updates: dict[str, dict[str, torch.Tensor]], chunk_bytes: int = 24, **rule) -> dict[str, torch.Tensor]:
    target = {name: torch.zeros_like(t) for name, t in next(iter(updates.values())).items()}
    weights = sample_weights({pid: 10 * (i + 1) for i, pid in enumerate(updates)})
    hp = RunHyperparameters.of(rule)
    chosen = combine(
        target, Layout.of(target), {p: StateSource(s) for p, s in updates.items()}, weights, hp, chunk_bytes
    )
    target["_chosen"] = chosen  # type: ignore[assignment]
    return target


def _stacked(updates: dict[str, dict[str, torch.Tensor]], name: str) -> np.ndarray:
    return np.stack([u[name].double().numpy() for u in updates.values()])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_median_is_numpys_coordinate_wise_median(n):
    updates = _updates(n)
    got = _combine(updates, aggregation="median")
    for name in ("w", "b"):
        np.testing.assert_allclose(got[name].numpy(), np.median(_stacked(updates, name), axis=0), rtol=0, atol=1e-6)
    assert int(got["count"]) == 100  # the first party's counter


@pytest.mark.parametrize("n, ratio", [(3, 0.1), (5, 0.2), (7, 0.3), (10, 0.1), (10, 0.49), (4, 0.0)])
def test_trimmed_mean_is_scipys_trim_mean(n, ratio):
    updates = _updates(n, seed=n)
    got = _combine(updates, aggregation="trimmed_mean", trim_ratio=ratio)
    for name in ("w", "b"):
        expected = stats.trim_mean(_stacked(updates, name), ratio, axis=0)
        np.testing.assert_allclose(got[name].numpy(), expected, rtol=0, atol=1e-6)


def _krum_reference(vectors: np.ndarray, f: int) -> int:
    """Blanchard et al. 2017, written out: the vector whose n - f - 2 nearest others are closest."""
    n = len(vectors)
    scores = []
    for i in range(n):
        distances = sorted(float(np.sum((vectors[i] - vectors[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(distances[: n - f - 2]))
    return int(np.argmin(scores))


@pytest.mark.parametrize("n, byzantine", [(3, None), (5, None), (5, 1), (7, 2), (8, None), (9, 0)])
def test_krum_chooses_the_update_a_direct_krum_chooses(n, byzantine):
    updates = _updates(n, seed=10 + n)
    flat = np.stack(
        [np.concatenate([u["w"].double().numpy().ravel(), u["b"].double().numpy()]) for u in updates.values()]
    )
    f = krum_tolerance(n, byzantine)
    assert f is not None and n > 2 * f + 2
    expected = list(updates)[_krum_reference(flat, f)]
    got = _combine(updates, aggregation="krum", byzantine=byzantine)
    assert got["_chosen"] == expected
    for name in ("w", "b", "count"):
        np.testing.assert_allclose(got[name].numpy(), updates[expected][name].numpy(), rtol=0, atol=1e-6)


def test_krum_ignores_a_far_outlier_and_the_default_f_is_the_largest_allowed():
    updates = _updates(5, seed=3)
    for t in updates["p2"].values():
        if t.is_floating_point():
            t.mul_(1e6)
    assert _combine(updates, aggregation="krum")["_chosen"] != "p2"
    assert [krum_tolerance(n, None) for n in (2, 3, 4, 5, 6, 7)] == [None, 0, 0, 1, 1, 2]
    assert krum_tolerance(5, 2) is None and krum_tolerance(4, 0) == 0


def test_krum_with_too_few_updates_is_a_clear_error():
    with pytest.raises(FederationError) as info:
        _combine(_updates(4), aggregation="krum", byzantine=1)
    assert info.value.code == "federation.too_few_updates" and "byzantine=1" in info.value.detail


def test_mean_through_combine_is_the_streamed_fold_bit_for_bit():
    updates = _updates(3, seed=5)
    weights = sample_weights({pid: 10 * (i + 1) for i, pid in enumerate(updates)})
    layout = Layout.of(updates["p0"])
    streamed = {name: torch.zeros_like(t) for name, t in updates["p0"].items()}
    frames = {p: list(encode_state(s, 64)) for p, s in updates.items()}
    for shard in range(len(frames["p0"])):
        fold_slices(streamed, [(p, weights[p], decode_shard(frames[p][shard], layout)) for p in updates])
    combined = _combine(updates, aggregation="mean")
    for name in ("w", "b", "count"):
        assert torch.equal(combined[name], streamed[name])
    expected = sum(weights[p] * _stacked(updates, "w")[i] for i, p in enumerate(updates))
    np.testing.assert_allclose(combined["w"].numpy(), expected, rtol=0, atol=1e-6)


def test_one_huge_party_drags_the_mean_far_but_not_the_median():
    honest = _updates(4, seed=7)
    honest_w = _stacked(honest, "w")
    spread = honest_w.max(axis=0) - honest_w.min(axis=0)
    updates = {**honest, "p9": {"w": torch.full((7, 5), 1e6), "b": torch.full((5,), 1e6), "count": torch.tensor(0)}}
    mean = _combine(updates, aggregation="mean")["w"].double().numpy()
    median = _combine(updates, aggregation="median")["w"].double().numpy()
    centre = np.median(honest_w, axis=0)
    assert np.all(np.abs(median - centre) <= spread)  # within the honest parties' spread
    assert np.all(np.abs(mean - centre) > 1000 * spread)  # dragged far away


def test_a_non_finite_update_is_refused_naming_its_sender():
    good = {"w": torch.ones(10)}
    bad = {"w": torch.ones(10)}
    bad["w"][3] = math.inf
    layout = Layout.of(good)
    target = {"w": torch.zeros(10)}
    shards = [
        ("p1", 0.5, decode_shard(next(encode_state(good, 1 << 20)), layout)),
        ("p2", 0.5, decode_shard(next(encode_state(bad, 1 << 20)), layout)),
    ]
    with pytest.raises(RefusedUpdate) as info:
        fold_slices(target, shards)
    assert info.value.participant == "p2" and info.value.code == "federation.non_finite"
    with pytest.raises(RefusedUpdate) as info:
        check_finite("p2", shards[1][2])
    assert info.value.participant == "p2"
    check_finite("p1", shards[0][2])  # a finite update passes


def test_finite_huge_values_are_not_refused_though_their_sum_overflows():
    huge = torch.full((4,), 3e38)  # float32: finite, but their sum is inf
    assert not torch.isfinite(huge.sum()) and tensor_is_finite(huge)
    assert not tensor_is_finite(torch.tensor([1.0, math.nan])) and tensor_is_finite(torch.arange(5))


def test_json_safe_nulls_every_non_finite_number_and_leaves_the_rest():
    value = {"a": [1.0, math.nan, {"b": math.inf}], "c": (2, -math.inf), "d": "NaN", "e": 3}
    assert json_safe(value) == {"a": [1.0, None, {"b": None}], "c": (2, None), "d": "NaN", "e": 3}
    finite = {"a": [1.0, 2.0], "b": {"c": 1}}
    assert json_safe(finite) is finite
    assert has_non_finite(value) and not has_non_finite(finite)


@pytest.mark.parametrize(
    "hp",
    [
        {"aggregation": "avg"},
        {"trim_ratio": 0.5},
        {"trim_ratio": -0.1},
        {"trim_ratio": math.nan},
        {"byzantine": -1},
        {"algorithm": "FedGKT", "aggregation": "median"},
        {"algorithm": "FedGKT", "aggregation": "krum"},
        {"momentum": math.nan},  # no number of a run may be non-finite, an extra one neither
        {"weight_decay": math.inf},
        {"max_lr": [0.1, math.inf]},
    ],
)
def test_impossible_or_non_finite_run_settings_are_refused(hp):
    with pytest.raises(ValueError):
        RunHyperparameters.of(hp)


def test_aggregation_defaults_live_in_the_run():
    hp = RunHyperparameters.of({})
    assert (hp.aggregation, hp.trim_ratio, hp.byzantine) == ("mean", 0.1, None)
    assert RunHyperparameters.of({"algorithm": "FedGKT"}).aggregation == "mean"


def test_statistics_helpers_match_numpy_on_odd_and_even_counts():
    stack = torch.tensor([[3.0, 1.0], [1.0, 5.0], [2.0, 9.0], [8.0, 0.0]], dtype=torch.float64)
    np.testing.assert_allclose(coordinate_median(stack).numpy(), np.median(stack.numpy(), axis=0))
    np.testing.assert_allclose(coordinate_median(stack[:3]).numpy(), np.median(stack[:3].numpy(), axis=0))
    np.testing.assert_allclose(trimmed_mean(stack, 0.25).numpy(), stats.trim_mean(stack.numpy(), 0.25, axis=0))
