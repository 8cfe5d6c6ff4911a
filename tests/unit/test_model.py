"""Layer lists become torch models; every name a user sends is checked against torch's own lists."""

import numpy as np
import pytest
import torch

from synergos_core.aggregation import EarlyStopping, fold_slices, sample_weights
from synergos_core.errors import FederationError, InvalidRequest
from synergos_core.model import (
    LOSSES,
    build_criterion,
    build_model,
    build_optimizer,
    build_scheduler,
    format_target,
    validate_model_spec,
    validate_run,
)
from synergos_core.wire import Layout, decode_shard, encode_state

GUIDE_TABULAR = [
    {
        "activation": "sigmoid",
        "is_input": True,
        "l_type": "Linear",
        "structure": {"bias": True, "in_features": 18, "out_features": 1},
    }
]
GUIDE_CNN = [
    {
        "activation": "relu",
        "is_input": True,
        "l_type": "Conv2d",
        "structure": {"in_channels": 1, "out_channels": 4, "kernel_size": 3, "stride": 1, "padding": 1},
    },
    {"activation": None, "is_input": False, "l_type": "Flatten", "structure": {}},
    {
        "activation": "sigmoid",
        "is_input": False,
        "l_type": "Linear",
        "structure": {"bias": True, "in_features": 4 * 32 * 32, "out_features": 1},
    },
]


def test_guide_models_build_and_run():
    out = build_model(GUIDE_TABULAR, seed=1)(torch.rand(5, 18))
    assert out.shape == (5, 1) and ((out > 0) & (out < 1)).all()
    assert build_model(GUIDE_CNN)(torch.rand(2, 1, 32, 32)).shape == (2, 1)


def test_same_seed_same_weights():
    a, b = build_model(GUIDE_TABULAR, seed=7), build_model(GUIDE_TABULAR, seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=False))


def test_recurrent_layers_pass_their_output_sequence_on():
    model = build_model(
        [
            {"l_type": "Embedding", "structure": {"num_embeddings": 20, "embedding_dim": 4}},
            {"l_type": "LSTM", "structure": {"input_size": 4, "hidden_size": 3, "batch_first": True}},
            {"l_type": "Flatten", "structure": {}},
            {"l_type": "Linear", "structure": {"in_features": 15, "out_features": 2}, "activation": "softmax"},
        ]
    )
    out = model(torch.randint(0, 20, (6, 5)))
    assert out.shape == (6, 2) and torch.allclose(out.sum(1), torch.ones(6))


@pytest.mark.parametrize(
    "layer, code, path",
    [
        ({"l_type": "Linearr", "structure": {}}, "model.unknown_layer", "model.0.l_type"),
        (
            {"l_type": "Linear", "structure": {"in_features": 2, "out_features": 1}, "activation": "os.system"},
            "model.unknown_activation",
            "model.0.activation",
        ),
        ({"l_type": "Linear", "structure": {"in_featurez": 2}}, "model.invalid_structure", "model.0.structure"),
        ({"l_type": "Module", "structure": {}}, "model.unknown_layer", "model.0.l_type"),
    ],
)
def test_bad_layers_are_refused_naming_the_problem(layer, code, path):
    with pytest.raises(InvalidRequest) as info:
        validate_model_spec([layer])
    assert info.value.code == code and info.value.fields[0]["path"] == path
    assert str(layer.get("activation") if "activation" in code else layer["l_type"]) in info.value.detail


def test_huge_model_is_checked_without_allocating():
    with pytest.raises(InvalidRequest, match="parameters"):
        validate_model_spec([{"l_type": "Linear", "structure": {"in_features": 100_000, "out_features": 100_000}}])


@pytest.mark.parametrize(
    "hp, code",
    [
        ({"optimizer": "SGDD", "criterion": "BCELoss", "lr_scheduler": None}, "run.unknown_optimizer"),
        ({"optimizer": "SGD", "criterion": "BCELosss", "lr_scheduler": None}, "run.unknown_criterion"),
        ({"optimizer": "SGD", "criterion": "CTCLoss", "lr_scheduler": None}, "run.unsupported_criterion"),
        ({"optimizer": "SGD", "criterion": "BCELoss", "lr_scheduler": "Cyclic"}, "run.unknown_scheduler"),
        ({"optimizer": "SGD", "criterion": "BCELoss", "lr_scheduler": "CyclicLR"}, "run.invalid_scheduler"),
    ],
)
def test_bad_run_recipes_are_refused(hp, code):
    with pytest.raises(InvalidRequest) as info:
        validate_run({"lr": 0.01, **hp})
    assert info.value.code == code


def test_constructor_arguments_are_taken_by_name_from_the_run():
    model = build_model(GUIDE_TABULAR)
    hp = {"lr": 0.01, "momentum": 0.5, "base_lr": 0.0005, "max_lr": 0.005, "reduction": "sum"}
    opt = build_optimizer("SGD", model.parameters(), hp)
    assert opt.defaults["momentum"] == 0.5
    sched = build_scheduler("CyclicLR", opt, hp)
    assert sched.base_lrs == [0.0005]
    assert build_criterion("L1Loss", hp).reduction == "sum"
    lam = build_scheduler("LambdaLR", build_optimizer("SGD", model.parameters(), {"lr": 1.0}), {"lr_decay": 0.5})
    lam.optimizer.step()
    lam.step()
    assert lam.get_last_lr()[0] == pytest.approx(1 / 1.5)


@pytest.mark.parametrize("criterion", sorted(LOSSES))
def test_every_supported_loss_gets_a_target_it_accepts(criterion):
    crit = build_criterion(criterion, {})
    y = torch.tensor([0, 1, 2, 1])
    out = torch.rand(4, 3, requires_grad=True)
    if criterion == "NLLLoss":
        out = torch.log_softmax(out, 1)
    if criterion == "GaussianNLLLoss":
        loss = crit(out, format_target(y, out, criterion, "classify"), torch.ones(4, 3))
    else:
        loss = crit(out, format_target(y, out, criterion, "classify"))
    assert torch.isfinite(loss)


def test_fold_is_the_sample_weighted_mean_and_rejects_nan():
    a = {"w": torch.full((1000,), 1.0)}
    b = {"w": torch.full((1000,), 4.0)}
    layout = Layout.of(a)
    target = {"w": torch.zeros(1000)}
    weights = sample_weights({"p1": 30, "p2": 10})
    for fa, fb in zip(encode_state(a, 1024), encode_state(b, 1024), strict=False):
        fold_slices(
            target, [("p1", weights["p1"], decode_shard(fa, layout)), ("p2", weights["p2"], decode_shard(fb, layout))]
        )
    assert torch.allclose(target["w"], torch.full((1000,), 1.75))
    bad = {"w": torch.full((1000,), float("nan"))}
    with pytest.raises(FederationError, match="p2 sent non-finite"):
        fold_slices(
            target,
            [
                ("p1", 0.5, decode_shard(next(encode_state(a, 1 << 20)), layout)),
                ("p2", 0.5, decode_shard(next(encode_state(bad, 1 << 20)), layout)),
            ],
        )


def test_early_stopping_waits_for_patience():
    stopper = EarlyStopping(patience=2, delta=0.0)
    assert [stopper.step(x) for x in (1.0, 0.9, 0.95, 0.91, 0.92)] == [False, False, False, True, True]
    assert not EarlyStopping(0, 0).step(5.0)


from synergos_core.model import OPTIMIZERS, SCHEDULERS, check_combination  # noqa: E402
from synergos_core.training import LocalTrainer, Split  # noqa: E402

_X = torch.rand(64, 6, generator=torch.Generator().manual_seed(0))
_Y = (_X[:, 0] > 0.5).long()
_MLP = [
    {"l_type": "Linear", "structure": {"in_features": 6, "out_features": 4}, "activation": "relu"},
    {"l_type": "Linear", "structure": {"in_features": 4, "out_features": 1}, "activation": "sigmoid"},
]
_NO_BIAS = [
    {"l_type": "Linear", "structure": {"in_features": 6, "out_features": 4, "bias": False}, "activation": "relu"},
    {"l_type": "Linear", "structure": {"in_features": 4, "out_features": 1, "bias": False}, "activation": "sigmoid"},
]
_SCHEDULER_ARGS = {
    "CosineAnnealingLR": {"T_max": 5},
    "CosineAnnealingWarmRestarts": {"T_0": 2},
    "CyclicLR": {"base_lr": 0.01, "max_lr": 0.1},
    "ExponentialLR": {"gamma": 0.9},
    "MultiStepLR": {"milestones": [1, 2]},
    "OneCycleLR": {"max_lr": 0.1, "total_steps": 10},
    "StepLR": {"step_size": 1},
}


@pytest.mark.parametrize("name", sorted(set(OPTIMIZERS) - {"SparseAdam"}))
def test_every_optimizer_trains(name):
    spec = _NO_BIAS if name == "Muon" else _MLP
    hp = {"optimizer": name, "criterion": "BCELoss", "lr_scheduler": "none", "lr": 0.01}
    check_combination(spec, hp, "classify", 2)
    result = LocalTrainer(spec, hp, "classify", {"train": Split(_X, _Y)}).train(3, 0)
    assert all(np.isfinite(result["epoch_losses"]))


def test_optimizers_that_cannot_serve_a_model_are_refused_with_the_reason():
    with pytest.raises(InvalidRequest, match="2D"):
        check_combination(_MLP, {"optimizer": "Muon", "criterion": "BCELoss"}, "classify", 2)
    with pytest.raises(InvalidRequest, match="sparse"):
        check_combination(_MLP, {"optimizer": "SparseAdam", "criterion": "BCELoss"}, "classify", 2)


@pytest.mark.parametrize("name", sorted(set(SCHEDULERS) - {"ChainedScheduler", "SequentialLR"}))
def test_every_scheduler_steps_with_arguments_from_the_run(name):
    hp = {"optimizer": "SGD", "criterion": "BCELoss", "lr_scheduler": name, "lr": 0.05, **_SCHEDULER_ARGS.get(name, {})}
    validate_run(hp)
    result = LocalTrainer(_MLP, hp, "classify", {"train": Split(_X, _Y)}).train(4, 0)
    assert len(result["epoch_losses"]) == 4


@pytest.mark.parametrize("name", ["ChainedScheduler", "SequentialLR"])
def test_schedulers_of_schedulers_are_refused_with_the_reason(name):
    with pytest.raises(InvalidRequest, match="schedulers"):
        validate_run({"optimizer": "SGD", "criterion": "BCELoss", "lr_scheduler": name})


def test_batchnorm_dropout_and_recurrent_layers_train():
    conv = [
        {"l_type": "Linear", "structure": {"in_features": 6, "out_features": 8}, "activation": None},
        {"l_type": "BatchNorm1d", "structure": {"num_features": 8}, "activation": "relu"},
        {"l_type": "Dropout", "structure": {"p": 0.2}},
        {"l_type": "Linear", "structure": {"in_features": 8, "out_features": 1}, "activation": "sigmoid"},
    ]
    hp = {"criterion": "BCELoss", "lr_scheduler": "none", "lr": 0.1}
    trainer = LocalTrainer(conv, hp, "classify", {"train": Split(_X, _Y)})
    losses = trainer.train(10, 0)["epoch_losses"]
    assert losses[-1] < losses[0]
    assert "layers.1.running_mean" in trainer.state  # BatchNorm statistics travel with the weights
    tokens = torch.randint(0, 30, (64, 5), generator=torch.Generator().manual_seed(1))
    labels = (tokens[:, 0] > 15).long()
    for cell in ("RNN", "GRU", "LSTM"):
        seq = [
            {"l_type": "Embedding", "structure": {"num_embeddings": 30, "embedding_dim": 4}},
            {"l_type": cell, "structure": {"input_size": 4, "hidden_size": 6, "batch_first": True}},
            {"l_type": "Flatten", "structure": {}},
            {"l_type": "Linear", "structure": {"in_features": 30, "out_features": 2}, "activation": None},
        ]
        trainer = LocalTrainer(
            seq,
            {
                "algorithm": "FedAvg",
                "criterion": "CrossEntropyLoss",
                "lr_scheduler": "none",
                "lr": 0.5,
                "optimizer": "Adam",
            },
            "classify",
            {"train": Split(tokens.float(), labels)},
        )
        losses = trainer.train(15, 0)["epoch_losses"]
        assert losses[-1] < losses[0], cell
