"""Header alignment across parties and the auto_fix of a model's input and output sizes."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from synergos_core.alignment import align_headers, fix_model_io
from synergos_core.data import apply_spacers
from synergos_core.errors import InvalidRequest


def test_superset_and_spacers_across_parties_and_metas() -> None:
    headers = {
        "p1": {"train": {"X": ["a", "c"], "y": ["target_0", "target_1"]}, "evaluate": {"X": ["a"], "y": ["target_1"]}},
        "p2": {"train": {"X": ["b", "c", "d"], "y": ["target_1", "target_2"]}, "predict": {"X": [], "y": []}},
    }
    result = align_headers(headers)
    assert result.superset == {"X": ["a", "b", "c", "d"], "y": ["target_0", "target_1", "target_2"]}
    assert result.spacers["p1"]["train"] == {"X": [1, 3], "y": [2]}
    assert result.spacers["p1"]["evaluate"] == {"X": [1, 2, 3], "y": [0, 2]}
    assert result.spacers["p2"]["train"] == {"X": [0], "y": [0]}
    assert "predict" not in result.spacers["p2"]  # empty headers are skipped


def test_spacers_reproduce_superset_order_for_every_party() -> None:
    rng = np.random.default_rng(0)
    universe = [f"f{i:02d}" for i in range(12)]
    parties = {
        f"p{k}": sorted(rng.choice(universe, size=int(rng.integers(1, 12)), replace=False).tolist()) for k in range(5)
    }
    result = align_headers({pid: {"train": {"X": names, "y": ["target"]}} for pid, names in parties.items()})
    for pid, names in parties.items():
        # Encode each column's identity as its superset position + 1, so misplacement shows.
        row = np.array([[result.superset["X"].index(n) + 1 for n in names]], dtype=np.float32)
        aligned = apply_spacers(row, result.spacers[pid]["train"]["X"])
        expected = [i + 1 if name in names else 0 for i, name in enumerate(result.superset["X"])]
        assert aligned[0].tolist() == expected


def test_repeated_header_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        align_headers({"p": {"train": {"X": ["a", "a"], "y": []}}})


MLP = [
    {"l_type": "Linear", "structure": {"in_features": 3, "out_features": 8}, "activation": "relu", "is_input": True},
    {
        "l_type": "Linear",
        "structure": {"in_features": 8, "out_features": 5},
        "activation": "sigmoid",
        "is_input": False,
    },
]


def test_fix_binary_classifier() -> None:
    original = copy.deepcopy(MLP)
    fixed = fix_model_io(MLP, x_width=20, n_classes=2, action="classify")
    assert fixed[0]["structure"]["in_features"] == 20
    assert fixed[-1]["structure"]["out_features"] == 1
    assert fixed[-1]["activation"] == "sigmoid"
    assert fixed[1]["structure"]["in_features"] == 8  # inner sizes untouched
    assert MLP == original  # input not mutated


def test_fix_multiclass_switches_sigmoid_to_softmax() -> None:
    fixed = fix_model_io(MLP, x_width=4, n_classes=3, action="classify")
    assert fixed[-1]["structure"]["out_features"] == 3
    assert fixed[-1]["activation"] == "softmax"


def test_fix_regression_has_one_output() -> None:
    fixed = fix_model_io(MLP, x_width=4, n_classes=7, action="regress")
    assert fixed[-1]["structure"]["out_features"] == 1
    assert fixed[-1]["activation"] == "sigmoid"


def test_convolution_input_and_embedding_are_not_touched() -> None:
    cnn = [
        {"l_type": "Conv2d", "structure": {"in_channels": 1, "out_channels": 4, "kernel_size": 3}, "is_input": True},
        {"l_type": "Flatten", "structure": {}},
        {"l_type": "Linear", "structure": {"in_features": 100, "out_features": 10}, "activation": "softmax"},
    ]
    fixed = fix_model_io(cnn, x_width=784, n_classes=10, action="classify")
    assert fixed[0]["structure"] == cnn[0]["structure"]
    assert fixed[2]["structure"] == {"in_features": 100, "out_features": 10}

    emb = [
        {"l_type": "Embedding", "structure": {"num_embeddings": 50, "embedding_dim": 8}, "is_input": True},
        {"l_type": "Linear", "structure": {"in_features": 8, "out_features": 3}},
    ]
    assert fix_model_io(emb, x_width=999, n_classes=2, action="classify")[0] == emb[0]


def test_recurrent_input_uses_input_size_and_is_input_marker_wins() -> None:
    model = [
        {"l_type": "Dropout", "structure": {"p": 0.1}},
        {"l_type": "LSTM", "structure": {"input_size": 2, "hidden_size": 16}, "is_input": True},
        {"l_type": "Linear", "structure": {"in_features": 16, "out_features": 2}},
    ]
    fixed = fix_model_io(model, x_width=30, n_classes=4, action="classify")
    assert fixed[1]["structure"]["input_size"] == 30
    assert fixed[0]["structure"] == {"p": 0.1}
    assert fixed[2]["structure"]["out_features"] == 4
