"""Learning-rate schedules as torch defines them, continued across rounds.

A Worker keeps its optimizer and lr scheduler for the whole run: per-batch schedulers (CyclicLR,
OneCycleLR, CosineAnnealingWarmRestarts with fractional epochs) step after every optimizer step,
the others once per epoch (ReduceLROnPlateau on the epoch's loss). Every trainer's lr at each step
is compared with torch's own scheduler on a plain optimizer over a dummy parameter."""

from __future__ import annotations

import torch
from torch.optim import lr_scheduler as S

from synergos_core.gkt import GKTTrainer, ServerModel, train_server
from synergos_core.model import SCHEDULERS, build_model, scheduler_steps_per_batch, validate_run
from synergos_core.training import LocalTrainer, Split

N, BATCH = 40, 8  # five batches per epoch
STEPS_PER_EPOCH = 5
ROUNDS, EPOCHS = 3, 3
_X = torch.rand(N, 6, generator=torch.Generator().manual_seed(0))
_Y = (_X[:, 0] > 0.5).long()
_MLP = [
    {"l_type": "Linear", "structure": {"in_features": 6, "out_features": 4}, "activation": "relu"},
    {"l_type": "Linear", "structure": {"in_features": 4, "out_features": 1}, "activation": "sigmoid"},
]
_SPLIT_MODEL = [
    {"l_type": "Linear", "structure": {"in_features": 6, "out_features": 5}},
    {"l_type": "ReLU", "structure": {}},
    {"l_type": "Linear", "structure": {"in_features": 5, "out_features": 1}},
    {"l_type": "Sigmoid", "structure": {}},
]


def _hp(**kw) -> dict:
    return {
        "optimizer": "SGD",
        "criterion": "BCELoss",
        "lr": 0.05,
        "batch_size": BATCH,
        "rounds": ROUNDS,
        "epochs": EPOCHS,
        "patience": 0,
        **kw,
    }


def _trainer(**kw) -> LocalTrainer:
    return LocalTrainer(_MLP, _hp(**kw), "classify", {"train": Split(_X, _Y)})


def _reference(
    make,
    steps: int,
    epoch_losses: list[float] | None = None,
    per_batch: bool = True,
    steps_per_epoch: int = STEPS_PER_EPOCH,
    lr: float = 0.05,
    step=None,
) -> list[float]:
    """torch's scheduler on a plain SGD over a dummy parameter: the lr at each of `steps` steps."""
    dummy = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([dummy], lr=lr)
    scheduler = make(optimizer)
    lrs = []
    for i in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if per_batch:
            step(scheduler, i) if step else scheduler.step()
        elif (i + 1) % steps_per_epoch == 0:
            epoch = (i + 1) // steps_per_epoch - 1
            scheduler.step(epoch_losses[epoch]) if epoch_losses is not None else scheduler.step()
    return lrs


def _write_global_weights(trainer: LocalTrainer, r: int) -> None:
    """What the TTP's broadcast does on the Worker: new values written into the same tensors."""
    with torch.no_grad():
        for value in trainer.state.values():
            value.copy_(value * 0.5 + 0.01 * r)


def _three_rounds(trainer: LocalTrainer, epochs: int = EPOCHS) -> tuple[list[float], list[dict]]:
    lrs, results = [], []
    for r in range(ROUNDS):
        if r:
            _write_global_weights(trainer, r)
        results.append(trainer.train(epochs, r))
        lrs += trainer.lr_trace
    return lrs, results


def test_the_per_batch_schedulers_are_those_torch_steps_per_batch():
    dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert scheduler_steps_per_batch(S.CyclicLR(dummy, 0.01, 0.1))
    assert scheduler_steps_per_batch(S.OneCycleLR(dummy, 0.1, total_steps=10))
    assert scheduler_steps_per_batch(S.CosineAnnealingWarmRestarts(dummy, 2))
    assert not scheduler_steps_per_batch(S.StepLR(dummy, 1))
    assert not scheduler_steps_per_batch(S.ReduceLROnPlateau(dummy))
    assert not scheduler_steps_per_batch(None)
    per_batch = {n for n, c in SCHEDULERS.items() if c in (S.CyclicLR, S.OneCycleLR, S.CosineAnnealingWarmRestarts)}
    assert per_batch == {"CyclicLR", "OneCycleLR", "CosineAnnealingWarmRestarts"}


def test_cyclic_lr_steps_after_every_batch_and_continues_across_rounds():
    trainer = _trainer(lr_scheduler="CyclicLR", base_lr=0.01, max_lr=0.1, step_size_up=4)  # FedProx, mu=0.1
    first_param = next(trainer.model.parameters())
    lrs, results = _three_rounds(trainer)
    total = ROUNDS * EPOCHS * STEPS_PER_EPOCH
    expected = _reference(lambda o: S.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=4), total)
    assert len(lrs) == total
    assert lrs == expected
    assert min(lrs) == 0.01 and max(lrs) > 0.09  # the cycle moves: lr and max_lr matter
    assert results[-1]["lrs"] == [trainer.lr_trace[0], trainer.lr_trace[-1]]
    # the optimizer is the one built in the first round, still over the model's own parameters,
    # which hold the global weights written into them
    optimizer = trainer.schedule.optimizer
    assert optimizer.param_groups[0]["params"][0] is first_param
    assert trainer.schedule.scheduler.last_epoch == total


def test_the_state_after_r_rounds_is_that_of_uninterrupted_local_training():
    hp = {"lr_scheduler": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 3, "algorithm": "FedAvg"}
    federated, alone = _trainer(**hp), _trainer(**hp)
    for r in range(ROUNDS):
        federated.train(EPOCHS, r)
    alone.train(ROUNDS * EPOCHS, 0)
    for name, value in alone.state.items():
        assert torch.equal(federated.state[name], value), name
    buffers = [s["momentum_buffer"] for s in federated.schedule.optimizer.state.values()]
    assert buffers and all(b is not None for b in buffers)  # CyclicLR cycles SGD's momentum, kept too


def test_an_epoch_scheduler_steps_once_per_epoch_across_rounds():
    trainer = _trainer(lr_scheduler="StepLR", step_size=2, gamma=0.5)
    lrs, _ = _three_rounds(trainer)
    expected = _reference(
        lambda o: S.StepLR(o, step_size=2, gamma=0.5), ROUNDS * EPOCHS * STEPS_PER_EPOCH, per_batch=False
    )
    assert lrs == expected
    assert lrs[-1] == 0.05 * 0.5**4  # 9 epochs: halved after epochs 2, 4, 6 and 8, not reset each round
    trainer = _trainer(lr_scheduler="ExponentialLR", gamma=0.9)
    lrs, _ = _three_rounds(trainer)
    assert lrs == _reference(lambda o: S.ExponentialLR(o, gamma=0.9), len(lrs), per_batch=False)


def test_reduce_on_plateau_steps_once_per_epoch_on_the_local_loss():
    # an improvement must beat the best loss by 10: after the first epoch, every epoch is a plateau
    trainer = _trainer(lr_scheduler="ReduceLROnPlateau", factor=0.5, threshold=10.0, threshold_mode="abs", epochs=5)
    lrs, results = _three_rounds(trainer, 5)
    losses = [loss for result in results for loss in result["epoch_losses"]]
    assert len(losses) == 15 and trainer.schedule.scheduler.last_epoch == 15  # one step per epoch
    expected = _reference(
        lambda o: S.ReduceLROnPlateau(o, factor=0.5, threshold=10.0, threshold_mode="abs"),
        len(lrs),
        epoch_losses=losses,
        per_batch=False,
    )
    assert lrs == expected
    # torch's default patience (10; the run's own `patience` is early stopping): the lr halves
    # after the 11th epoch without improvement, i.e. from epoch 13 of the run, in round 3
    dropped = 12 * STEPS_PER_EPOCH
    assert lrs[:dropped] == [0.05] * dropped and lrs[dropped:] == [0.025] * (len(lrs) - dropped)


def test_one_cycle_spans_the_whole_run_when_total_steps_is_not_given():
    validate_run(_hp(lr_scheduler="OneCycleLR", max_lr=0.1))  # accepted before the data's size is known
    trainer = _trainer(lr_scheduler="OneCycleLR", max_lr=0.1)
    lrs, _ = _three_rounds(trainer)
    total = ROUNDS * EPOCHS * STEPS_PER_EPOCH
    assert trainer.schedule.scheduler.total_steps == total  # rounds * epochs * batches per epoch
    assert lrs == _reference(lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=total), total)
    assert max(lrs) > 0.099 and lrs[-1] < 0.1 / 25  # warmed up to max_lr, then annealed within the run


def test_one_cycle_with_too_few_total_steps_keeps_its_last_lr_instead_of_failing():
    trainer = _trainer(lr_scheduler="OneCycleLR", max_lr=0.1, total_steps=20)
    lrs, _ = _three_rounds(trainer)
    expected = _reference(lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=20), 20)
    dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.05)
    ref = S.OneCycleLR(dummy, max_lr=0.1, total_steps=20)
    for _ in range(20):
        dummy.step()
        ref.step()
    assert lrs[:20] == expected
    assert lrs[20:] == [dummy.param_groups[0]["lr"]] * (len(lrs) - 20)


def test_warm_restarts_step_per_batch_with_fractional_epochs():
    trainer = _trainer(lr_scheduler="CosineAnnealingWarmRestarts", T_0=2, T_mult=2, eta_min=0.001)
    lrs, _ = _three_rounds(trainer)
    total = ROUNDS * EPOCHS * STEPS_PER_EPOCH
    expected = _reference(
        lambda o: S.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=2, eta_min=0.001),
        total,
        step=lambda s, i: s.step(i // STEPS_PER_EPOCH + (i % STEPS_PER_EPOCH + 1) / STEPS_PER_EPOCH),
    )
    assert lrs == expected
    # each epoch's first batch has the lr of stepping once per epoch; T_0 counts epochs
    per_epoch = _reference(
        lambda o: S.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=2, eta_min=0.001), total, per_batch=False
    )
    for i in range(0, total, STEPS_PER_EPOCH):
        assert abs(lrs[i] - per_epoch[i]) < 1e-12, i
    assert len(set(lrs[:STEPS_PER_EPOCH])) == STEPS_PER_EPOCH  # and it moves within an epoch


def test_lbfgs_steps_a_per_batch_schedule_after_each_closure_step():
    trainer = _trainer(
        optimizer="LBFGS", lr_scheduler="CyclicLR", base_lr=0.01, max_lr=0.1, step_size_up=4, cycle_momentum=False
    )
    lrs, results = _three_rounds(trainer)
    assert all(torch.isfinite(torch.tensor(r["epoch_losses"])).all() for r in results)
    assert lrs == _reference(
        lambda o: S.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=4, cycle_momentum=False), len(lrs)
    )


def test_no_scheduler_keeps_the_lr():
    trainer = _trainer(lr_scheduler="none")
    lrs, _ = _three_rounds(trainer)
    assert lrs == [0.05] * ROUNDS * EPOCHS * STEPS_PER_EPOCH


def _gkt_trainer(**kw) -> GKTTrainer:
    return GKTTrainer(_SPLIT_MODEL, _hp(algorithm="FedGKT", L=2, **kw), "classify", {"train": Split(_X, _Y)})


def test_a_fedgkt_party_follows_its_schedule_across_rounds():
    trainer = _gkt_trainer(lr_scheduler="CyclicLR", base_lr=0.01, max_lr=0.1, step_size_up=4)
    lrs, teacher = [], None
    for _ in range(ROUNDS):
        result = trainer.train_gkt(EPOCHS, teacher)
        teacher = result["local_out"] * 0.9 + 0.05
        lrs += trainer.lr_trace
    total = ROUNDS * EPOCHS * STEPS_PER_EPOCH
    assert lrs == _reference(lambda o: S.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=4), total)
    assert result["lrs"] == [trainer.lr_trace[0], trainer.lr_trace[-1]]
    trainer = _gkt_trainer(lr_scheduler="StepLR", step_size=2, gamma=0.5)
    lrs = []
    for _ in range(ROUNDS):
        trainer.train_gkt(EPOCHS, None)
        lrs += trainer.lr_trace
    assert lrs == _reference(lambda o: S.StepLR(o, step_size=2, gamma=0.5), total, per_batch=False)


def _server_rounds(hp: dict) -> tuple[ServerModel, list[float]]:
    server = ServerModel(build_model(_SPLIT_MODEL, seed=1), 2)
    g = torch.Generator().manual_seed(3)
    batches = [
        (torch.rand(12, 5, generator=g), torch.rand(12, 1, generator=g).clamp(0.05, 0.95)),
        (torch.rand(9, 5, generator=g), torch.rand(9, 1, generator=g).clamp(0.05, 0.95)),
    ]
    lrs = []
    for _ in range(ROUNDS):
        train_server(server, batches, hp, "sigmoid")
        lrs += server.lr_trace
    return server, lrs


def test_the_fedgkt_server_follows_its_schedule_across_rounds():
    # each party's features are one batch: two per server epoch, over rounds * server_epochs epochs
    server_epochs, parties = 4, 2
    total = ROUNDS * server_epochs * parties
    hp = _hp(
        algorithm="FedGKT",
        server_epochs=server_epochs,
        lr_scheduler="CyclicLR",
        base_lr=0.01,
        max_lr=0.1,
        step_size_up=3,
    )
    server, lrs = _server_rounds(hp)
    assert lrs == _reference(lambda o: S.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=3), total)
    assert server.schedule.scheduler.last_epoch == total
    _, lrs = _server_rounds({**hp, "lr_scheduler": "ExponentialLR", "gamma": 0.8})
    assert lrs == _reference(lambda o: S.ExponentialLR(o, gamma=0.8), total, per_batch=False, steps_per_epoch=parties)
    server, lrs = _server_rounds({**hp, "lr_scheduler": "OneCycleLR", "max_lr": 0.1})
    assert server.schedule.scheduler.total_steps == total  # rounds * server_epochs * parties
    assert lrs == _reference(lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=total), total)


# ---- defaults come from the run's schema, not from the loops ----


def test_a_trainer_given_no_hyperparameters_trains_with_the_runs_documented_defaults():
    from synergos_core.schemas import RunHyperparameters

    defaults = RunHyperparameters()
    assert (defaults.algorithm, defaults.lr_scheduler, defaults.patience) == ("FedProx", "CyclicLR", 10)
    cyclic = {"base_lr": 0.001, "max_lr": 0.01}  # the default scheduler's own required arguments
    bare = LocalTrainer(_MLP, cyclic, "classify", {"train": Split(_X, _Y)})
    spelled = LocalTrainer(_MLP, {**defaults.model_dump(), **cyclic}, "classify", {"train": Split(_X, _Y)})
    a, b = bare.train(30, 0), spelled.train(30, 0)
    assert a["epoch_losses"] == b["epoch_losses"]
    assert isinstance(bare.schedule.scheduler, S.CyclicLR)  # the default scheduler, not none
    # patience 10 stops a run whose loss no longer falls; FedProx's mu keeps weights near the global ones
    assert len(a["epoch_losses"]) <= 30
    free = LocalTrainer(
        _MLP, {"algorithm": "FedAvg", "patience": 0, **cyclic}, "classify", {"train": Split(_X, _Y)}
    ).train(30, 0)
    assert free["epoch_losses"] != a["epoch_losses"]  # without the proximal term the run differs
