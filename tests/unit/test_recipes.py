"""Run recipes: the original's binary recipes (NLLLoss / CrossEntropyLoss on one sigmoid output)
train as two-class models, and recipes that cannot be right are refused or warned about."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_breast_cancer
from torch import nn

from synergos_core.alignment import fix_model_io
from synergos_core.errors import InvalidRequest
from synergos_core.gkt import GKTTrainer, ServerModel, train_server
from synergos_core.metrics import classification_statistics
from synergos_core.model import build_model, check_combination, compute_loss, output_kind
from synergos_core.training import LocalTrainer, Split, to_probabilities

ROOT = Path(__file__).resolve().parents[2]


def _mlp(out: int, activation: str | None, width: int = 30) -> list[dict]:
    return [
        {
            "l_type": "Linear",
            "is_input": True,
            "activation": "relu",
            "structure": {"in_features": width, "out_features": 8},
        },
        {"l_type": "Linear", "activation": activation, "structure": {"in_features": 8, "out_features": out}},
    ]


@pytest.fixture(scope="module")
def cancer() -> dict[str, Split]:
    X, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    X, y = X[order], y[order]
    X = (X - X[:400].mean(0)) / X[:400].std(0)
    X, y = torch.tensor(X, dtype=torch.float32), torch.tensor(y)
    return {"train": Split(X[:400], y[:400]), "evaluate": Split(X[400:], y[400:])}


def _train(spec: list[dict], criterion: str, data: dict[str, Split]) -> tuple[LocalTrainer, list[float]]:
    hp = {
        "algorithm": "FedAvg",  # plain local training: no proximal term
        "criterion": criterion,
        "optimizer": "SGD",
        "lr": 0.1,
        "lr_scheduler": "none",
        "rounds": 1,
        "epochs": 40,
        "patience": 0,
    }
    check_combination(spec, hp, "classify", 2)
    trainer = LocalTrainer(spec, hp, "classify", data)
    return trainer, trainer.train(40, 0)["epoch_losses"]


def _accuracy(trainer: LocalTrainer) -> float:
    labels, scores = trainer.infer("evaluate")
    return classification_statistics(labels, scores)["overall_accuracy"]


# ---- (a) the two-class losses of one output ----


def test_nll_of_one_minus_p_and_p_is_bce_of_p():
    p = torch.rand(64, 1, generator=torch.Generator().manual_seed(1)) * 0.98 + 0.01
    y = (torch.rand(64, generator=torch.Generator().manual_seed(2)) > 0.5).long()
    bce = nn.BCELoss()(p, y.float().unsqueeze(1))
    assert torch.allclose(F.nll_loss(torch.cat([torch.log1p(-p), torch.log(p)], 1), y), bce)
    assert torch.allclose(compute_loss(nn.NLLLoss(), "NLLLoss", p, y, "classify", kind="sigmoid"), bce)
    # CrossEntropyLoss on a sigmoid output reads it the same way
    assert torch.allclose(
        compute_loss(nn.CrossEntropyLoss(), "CrossEntropyLoss", p, y, "classify", kind="sigmoid"), bce
    )
    # and the gradients agree
    a, b = p.clone().requires_grad_(), p.clone().requires_grad_()
    compute_loss(nn.NLLLoss(), "NLLLoss", a, y, "classify", kind="sigmoid").backward()
    nn.BCELoss()(b, y.float().unsqueeze(1)).backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_one_output_at_0_or_1_stays_finite_and_still_learns():
    p = torch.tensor([[0.0], [1.0], [1.0]], requires_grad=True)
    loss = compute_loss(nn.NLLLoss(), "NLLLoss", p, torch.tensor([1, 0, 1]), "classify", kind="sigmoid")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(p.grad).all()
    assert p.grad[0, 0] < 0 and p.grad[1, 0] > 0  # the wrong answers are pushed the right way


def test_cross_entropy_on_one_raw_output_is_bce_with_logits():
    z = torch.randn(64, 1, generator=torch.Generator().manual_seed(3)) * 4
    y = (torch.rand(64, generator=torch.Generator().manual_seed(4)) > 0.5).long()
    expected = nn.BCEWithLogitsLoss()(z, y.float().unsqueeze(1))
    assert torch.allclose(
        compute_loss(nn.CrossEntropyLoss(), "CrossEntropyLoss", z, y, "classify", kind=None), expected
    )


def test_one_output_without_its_kind_is_refused_not_guessed():
    with pytest.raises(ValueError, match="output_kind"):
        compute_loss(nn.NLLLoss(), "NLLLoss", torch.rand(4, 1), torch.tensor([0, 1, 1, 0]), "classify")


@pytest.mark.parametrize("criterion", ["NLLLoss", "CrossEntropyLoss"])
def test_one_sigmoid_output_trains_as_with_bce(cancer, criterion):
    spec = _mlp(1, "sigmoid")
    bce, bce_losses = _train(spec, "BCELoss", cancer)
    other, losses = _train(spec, criterion, cancer)
    assert np.allclose(losses, bce_losses, rtol=1e-4)
    assert losses[-1] < losses[0] / 2
    assert _accuracy(other) == _accuracy(bce) > 0.9
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(other.state.values(), bce.state.values(), strict=False))


def test_one_raw_output_with_cross_entropy_trains_as_with_bce_with_logits(cancer):
    spec = _mlp(1, None)
    logits, logit_losses = _train(spec, "BCEWithLogitsLoss", cancer)
    ce, losses = _train(spec, "CrossEntropyLoss", cancer)
    assert np.allclose(losses, logit_losses, rtol=1e-4)
    assert _accuracy(ce) == _accuracy(logits) > 0.9


# ---- (c) validation and prediction of those models ----


def test_probabilities_of_a_binary_nll_model_are_one_column_as_for_bce(cancer):
    spec = _mlp(1, "sigmoid")
    nll, _ = _train(spec, "NLLLoss", cancer)
    bce, _ = _train(spec, "BCELoss", cancer)
    out = nll.model(cancer["evaluate"].X).detach()
    probs = to_probabilities(out, "NLLLoss", kind=nll.model.output_kind)
    assert probs.shape == (len(cancer["evaluate"]), 1) and ((probs >= 0) & (probs <= 1)).all()
    assert torch.equal(probs, out)
    labels, scores = nll.infer("evaluate")
    assert scores.shape == (len(labels), 1)
    assert classification_statistics(labels, scores) == classification_statistics(*bce.infer("evaluate"))
    raw = torch.tensor([[-2.0], [0.0], [3.0]])
    assert torch.allclose(to_probabilities(raw, "CrossEntropyLoss", kind=None), torch.sigmoid(raw))


def test_probabilities_of_distributions_are_those_distributions():
    p = torch.softmax(torch.randn(5, 3), 1)
    assert torch.equal(to_probabilities(p, "CrossEntropyLoss", kind="softmax"), p)
    assert torch.allclose(to_probabilities(p.log(), "NLLLoss", kind="log_softmax"), p)


def test_output_kind_reads_the_final_activation_or_layer():
    assert output_kind(_mlp(1, "sigmoid")) == "sigmoid"
    assert output_kind(_mlp(2, None)) is None
    gkt = [
        {"l_type": "Linear", "structure": {"in_features": 3, "out_features": 2}},
        {"l_type": "LogSoftmax", "structure": {"dim": 1}},
    ]
    assert output_kind(gkt) == "log_softmax" == build_model(gkt).output_kind
    flat = [
        {"l_type": "Linear", "structure": {"in_features": 3, "out_features": 1}, "activation": "sigmoid"},
        {"l_type": "Flatten", "structure": {}},
    ]
    assert output_kind(flat) == "sigmoid" == build_model(flat).output_kind


# ---- FedGKT with the same recipes ----

_GKT = [
    {"l_type": "Linear", "structure": {"in_features": 30, "out_features": 8}},
    {"l_type": "ReLU", "structure": {}},
    {"l_type": "Linear", "structure": {"in_features": 8, "out_features": 1}},
    {"l_type": "Sigmoid", "structure": {}},
]


@pytest.mark.parametrize(
    "criterion, spec", [("NLLLoss", _GKT), ("CrossEntropyLoss", _GKT), ("CrossEntropyLoss", _GKT[:-1])]
)
def test_fedgkt_trains_a_one_output_two_class_recipe(cancer, criterion, spec):
    hp = {
        "algorithm": "FedGKT",
        "criterion": criterion,
        "lr": 0.1,
        "lr_scheduler": "none",
        "L": 2,
        "rounds": 2,
        "epochs": 10,
        "server_epochs": 5,
    }
    check_combination(spec, hp, "classify", 2)
    trainer = GKTTrainer(spec, hp, "classify", cancer)
    server = ServerModel(build_model(spec, seed=42), 2)
    teacher = None
    for _ in range(2):
        result = trainer.train_gkt(10, teacher)
        assert np.isfinite(result["epoch_losses"]).all()
        assert np.isfinite(train_server(server, [(result["features"], result["local_out"])], hp, output_kind(spec)))
        with torch.no_grad():
            teacher = server(result["features"])
    loss, n = trainer.evaluate("evaluate")
    assert np.isfinite(loss) and n == len(cancer["evaluate"])
    assert trainer.infer("evaluate")[1].shape == (n, 1)


# ---- (b) recipes that cannot be right ----


def _refusal(spec: list[dict], criterion: str, n_classes: int | None) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        check_combination(spec, {"criterion": criterion}, "classify", n_classes)
    return info.value


@pytest.mark.parametrize(
    "spec",
    [
        _mlp(3, "softmax"),
        _mlp(3, None) + [{"l_type": "Softmax", "structure": {"dim": 1}}],
    ],
)
@pytest.mark.parametrize("n_classes", [None, 3])
def test_softmax_with_nll_is_refused_naming_the_fix(spec, n_classes):
    error = _refusal(spec, "NLLLoss", n_classes)
    assert error.code == "run.invalid_combination" and error.fields[0]["path"] == "criterion"
    assert "log_softmax" in error.detail and "CrossEntropyLoss" in error.detail and "auto_fix" in error.detail


def test_log_softmax_with_nll_is_accepted_quietly(caplog):
    with caplog.at_level(logging.WARNING, logger="synergos_core.model"):
        check_combination(_mlp(3, "log_softmax"), {"criterion": "NLLLoss"}, "classify", 3)
        check_combination(_mlp(3, None), {"criterion": "CrossEntropyLoss"}, "classify", 3)
        check_combination(_mlp(1, "sigmoid"), {"criterion": "NLLLoss"}, "classify", 2)
        check_combination(_mlp(1, "sigmoid"), {"criterion": "CrossEntropyLoss"}, "classify", 2)
        check_combination(_mlp(1, None), {"criterion": "CrossEntropyLoss"}, "classify", 2)
    assert not caplog.records


def test_nll_with_one_output_for_three_classes_is_still_refused():
    error = _refusal(_mlp(1, "sigmoid"), "NLLLoss", 3)
    assert error.code == "run.invalid_combination" and "one output per class" in error.detail
    _refusal(_mlp(1, None), "CrossEntropyLoss", 3)
    _refusal(_mlp(1, "sigmoid"), "MultiMarginLoss", 2)


@pytest.mark.parametrize(
    "activation, criterion",
    [
        (None, "NLLLoss"),
        ("log_softmax", "NLLLoss"),
        ("softmax", "CrossEntropyLoss"),
        ("log_softmax", "CrossEntropyLoss"),
    ],
)
def test_one_output_that_is_not_p_or_a_logit_is_refused(activation, criterion):
    error = _refusal(_mlp(1, activation), criterion, 2)
    assert error.code == "run.invalid_combination" and "sigmoid" in error.detail


def test_one_output_is_judged_only_once_the_classes_are_known():
    # auto_fix may still give a placeholder output one column per class
    check_combination(_mlp(1, "log_softmax"), {"criterion": "NLLLoss"}, "classify", None)


@pytest.mark.parametrize(
    "spec, criterion, words",
    [
        (_mlp(3, "softmax"), "CrossEntropyLoss", "double softmax"),
        (_mlp(3, "softmax"), "KLDivLoss", "log-probabilities"),
        (_mlp(3, None), "NLLLoss", "log_softmax"),
        (_mlp(1, "sigmoid"), "BCEWithLogitsLoss", "own sigmoid"),
    ],
)
def test_dubious_recipes_are_logged_not_refused(caplog, spec, criterion, words):
    with caplog.at_level(logging.WARNING, logger="synergos_core.model"):
        check_combination(spec, {"criterion": criterion}, "classify", None)
    assert any(words in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_auto_fixed_multiclass_nll_recipe_is_refused_with_the_auto_fix_hint():
    fixed = fix_model_io(_mlp(1, "sigmoid", width=4), x_width=4, n_classes=3, action="classify")
    assert fixed[-1]["activation"] == "softmax"
    assert "auto_fix" in _refusal(fixed, "NLLLoss", 3).detail
    written = fix_model_io(_mlp(1, "log_softmax", width=4), x_width=4, n_classes=3, action="classify")
    check_combination(written, {"criterion": "NLLLoss"}, "classify", 3)


def test_no_bundled_example_pairs_softmax_with_nll():
    for path in [*(ROOT / "examples").rglob("*.py"), *(ROOT / "src" / "synergos_local").rglob("*.py")]:
        text = path.read_text()
        if "NLLLoss" in text:
            assert not re.search(
                r"""["']activation["']:\s*["']softmax["']|["']l_type["']:\s*["']Softmax["']""", text
            ), path
