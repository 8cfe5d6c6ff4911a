"""Experiment model specs -> torch modules, and run recipes -> optimizer, scheduler and criterion.

Every name a user sends (layer, activation, loss, optimizer, scheduler) is looked up in an
allow-list built from torch's own modules; nothing is ever resolved with a free `getattr`.
Validation builds on torch's `meta` device, so checking a 100 M parameter model costs nothing.
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ErrorCode, InvalidRequest
from .schemas import DistillationOptions, RunHyperparameters

log = logging.getLogger(__name__)

_CONTAINERS = {"Module", "Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict", "Container"}
REFUSED_LOSSES = {
    "MarginRankingLoss",
    "CosineEmbeddingLoss",
    "TripletMarginLoss",
    "CTCLoss",
    "TripletMarginWithDistanceLoss",
}
_RECURRENT = (nn.RNNBase, nn.RNNCellBase)
MAX_PARAMETERS = 1_000_000_000


def _classes(module: Any, base: type) -> dict[str, type]:
    return {
        name: obj
        for name, obj in vars(module).items()
        if not name.startswith("_") and inspect.isclass(obj) and issubclass(obj, base)
    }


# losses that own trainable weights (they are output layers, not criteria)
_WEIGHTED_LOSSES = {"AdaptiveLogSoftmaxWithLoss", "LinearCrossEntropyLoss"}
LOSSES: dict[str, type] = {
    n: c
    for n, c in _classes(nn, nn.Module).items()
    if n.endswith("Loss") and n not in REFUSED_LOSSES | _WEIGHTED_LOSSES
}
LAYERS: dict[str, type] = {
    n: c for n, c in _classes(nn, nn.Module).items() if n not in _CONTAINERS and not n.endswith("Loss")
}
ACTIVATIONS: dict[str, Callable[..., Any]] = {
    n: f
    for n, f in vars(F).items()
    if not n.startswith("_")
    and callable(f)
    and not inspect.isclass(f)
    and not inspect.ismodule(f)
    and (inspect.isfunction(f) or inspect.isbuiltin(f))
}
OPTIMIZERS: dict[str, type] = {
    n: c for n, c in _classes(torch.optim, torch.optim.Optimizer).items() if n != "Optimizer"
}
_SCHED_BASES = (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
SCHEDULERS: dict[str, type] = {
    n: c
    for n, c in vars(torch.optim.lr_scheduler).items()
    if not n.startswith("_") and inspect.isclass(c) and issubclass(c, _SCHED_BASES) and n not in {"LRScheduler"}
}
_DIM_ACTIVATIONS = {"softmax", "log_softmax", "softmin", "gumbel_softmax", "normalize", "glu"}


def _invalid(detail: str, code: str, path: str) -> InvalidRequest:
    return InvalidRequest(detail, code, fields=[{"path": path, "message": detail, "type": code}])


# ---- how a model expresses its outputs ----

# final layers that are activations in their own right (FedGKT writes each activation as a layer)
_KIND_LAYERS = {"Sigmoid": "sigmoid", "Softmax": "softmax", "LogSoftmax": "log_softmax"}
# layers that reshape without changing what the values mean
_SHAPE_LAYERS = {"Flatten", "Unflatten", "Identity"}
UNKNOWN_KIND = "unknown"  # "not told": distinct from None, which means raw scores


def _kind(layers: Iterable[tuple[str | None, str | None]]) -> str | None:
    for l_type, activation in reversed(list(layers)):
        if activation:
            return activation
        if l_type in _KIND_LAYERS:
            return _KIND_LAYERS[l_type]
        if l_type not in _SHAPE_LAYERS:
            return None
    return None


def output_kind(spec: Iterable[Any]) -> str | None:
    """How the model's outputs are expressed: the final activation ("sigmoid", "softmax",
    "log_softmax", ...) or None for raw scores. Derived from the layer list alone."""
    return _kind((l_type, activation) for l_type, _, activation in map(_layer_fields, spec))


class SynergosModel(nn.Module):
    """A model written as a layer list: each layer, then its activation, in order.

    Recurrent layers return tuples; the first element (the output sequence) flows on.
    `output_kind` says how its outputs are expressed (see `output_kind()`).
    """

    def __init__(self, layers: list[nn.Module], activations: list[str | None]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.activations = list(activations)
        self.output_kind = _kind(
            (type(layer).__name__, a) for layer, a in zip(self.layers, self.activations, strict=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.layers[0], (nn.Embedding, nn.EmbeddingBag)) and x.is_floating_point():
            x = x.long()  # token ids or counts arrive as floats; embeddings index with integers
        return self.run(x)

    def run(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Layers `start` to `stop` only (FedGKT splits the model between parties and server)."""
        for layer, activation in list(zip(self.layers, self.activations, strict=False))[start:stop]:
            x = layer(x)
            if isinstance(x, tuple):
                x = x[0]
            if activation:
                x = self.apply_activation(activation, x)
        return x

    @staticmethod
    def apply_activation(name: str, x: torch.Tensor) -> torch.Tensor:
        fn = ACTIVATIONS[name]
        out: torch.Tensor = fn(x, dim=1) if name in _DIM_ACTIVATIONS else fn(x)
        return out


def _layer_fields(layer: Any) -> tuple[Any, dict[str, Any], Any]:
    if hasattr(layer, "model_dump"):
        layer = layer.model_dump()
    if not isinstance(layer, dict):
        raise InvalidRequest(
            "each layer is an object {l_type, structure, activation, is_input}", ErrorCode.MODEL_INVALID
        )
    return layer.get("l_type"), dict(layer.get("structure") or {}), layer.get("activation")


def build_layers(spec: Iterable[Any], device: str | torch.device | None = None) -> SynergosModel:
    """Build a model from its layer list; an unknown or ill-formed layer is a 422 naming it."""
    layers: list[nn.Module] = []
    activations: list[str | None] = []
    spec = list(spec)
    if not spec:
        raise _invalid("the model needs at least one layer", ErrorCode.MODEL_EMPTY, "model")
    for i, layer in enumerate(spec):
        l_type, structure, activation = _layer_fields(layer)
        if l_type not in LAYERS:
            raise _invalid(
                f"unknown layer type {l_type!r} (model[{i}]); use a torch.nn layer class name",
                ErrorCode.MODEL_UNKNOWN_LAYER,
                f"model.{i}.l_type",
            )
        if activation is not None and activation not in ACTIVATIONS:
            raise _invalid(
                f"unknown activation {activation!r} (model[{i}]); use a torch.nn.functional name",
                ErrorCode.MODEL_UNKNOWN_ACTIVATION,
                f"model.{i}.activation",
            )
        try:
            with torch.device(device or "cpu"):
                module = LAYERS[l_type](**structure)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise _invalid(
                f"layer {l_type} (model[{i}]) rejects its structure {structure}: {exc}",
                ErrorCode.MODEL_INVALID_STRUCTURE,
                f"model.{i}.structure",
            ) from None
        layers.append(module)
        activations.append(activation)
    return SynergosModel(layers, activations)


def validate_model_spec(spec: Iterable[Any]) -> int:
    """Check a layer list without allocating weights; returns its parameter count."""
    model = build_layers(spec, device="meta")
    count = sum(p.numel() for p in model.parameters())
    if count > MAX_PARAMETERS:
        raise _invalid(
            f"model has {count} parameters; the limit is {MAX_PARAMETERS}", ErrorCode.MODEL_TOO_LARGE, "model"
        )
    return count


_SEEDED = threading.Lock()


def build_model(spec: Iterable[Any], seed: int | None = None) -> SynergosModel:
    """Build with weights drawn from `seed`, so every party and the TTP start from the same model."""
    if seed is None:
        return build_layers(spec)
    with _SEEDED, torch.random.fork_rng(devices=[]):  # seeding is global state: keep builds apart
        torch.manual_seed(seed)
        return build_layers(spec)


# ---- run recipe: constructor arguments are taken by name from the run ----

# the run's own settings; they never leak into a constructor that happens to share a name
# (HuberLoss's `delta` is not early stopping's, ReduceLROnPlateau's `patience` is not the run's)
RUN_KEYS = {
    "algorithm",
    "batch_size",
    "rounds",
    "epochs",
    "lr_decay",
    "mu",
    "l1_lambda",
    "l2_lambda",
    "optimizer",
    "criterion",
    "lr_scheduler",
    "delta",
    "patience",
    "seed",
    "is_snn",
    "precision_fractional",
    "aggregation",
    "trim_ratio",
    "byzantine",
    "min_workers",
    "keep_checkpoints",
}


def _kwargs_for(cls: type, hp: dict[str, Any], skip: set[str]) -> dict[str, Any]:
    params = inspect.signature(cls).parameters
    out = {}
    for name in params:
        if name in skip or name in RUN_KEYS or name == "self" or name not in hp or hp[name] is None:
            continue
        value = hp[name]
        if name in {"weight", "pos_weight"} and isinstance(value, list):
            value = torch.tensor(value, dtype=torch.float32)
        out[name] = value
    return out


def build_optimizer(name: str, parameters: Iterable[torch.Tensor], hp: dict[str, Any]) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise _invalid(
            f"unknown optimizer {name!r}; use a torch.optim class name", ErrorCode.RUN_UNKNOWN_OPTIMIZER, "optimizer"
        )
    cls = OPTIMIZERS[name]
    kwargs = _kwargs_for(cls, hp, {"params"})
    if hp.get("l2_lambda") and "weight_decay" in kwargs:
        kwargs["weight_decay"] = 0.0  # the L2 term is in the loss already
    try:
        optimizer: torch.optim.Optimizer = cls(parameters, **kwargs)
        return optimizer
    except (TypeError, ValueError) as exc:
        raise _invalid(
            f"optimizer {name} cannot be built from this run: {exc}", ErrorCode.RUN_INVALID_OPTIMIZER, "optimizer"
        ) from None


def build_scheduler(
    name: str | None,
    optimizer: torch.optim.Optimizer,
    hp: dict[str, Any],
    steps_per_epoch: int = 1,
    epochs: int | None = None,
) -> Any:
    """The run's lr scheduler on `optimizer`, its arguments taken by name from the run.

    `epochs` is how many epochs this optimizer trains for over the whole run (default: the run's
    `rounds * epochs`) and `steps_per_epoch` its optimizer steps per epoch: OneCycleLR without a
    `total_steps` gets `total_steps = epochs * steps_per_epoch` (a `steps_per_epoch` in the run
    replaces the measured one), the whole run's steps, since its schedule spans the run.
    """
    if not name or name.lower() == "none":  # "none" switches the scheduler off (null is the default's absence)
        return None
    if name not in SCHEDULERS:
        raise _invalid(
            f"unknown lr_scheduler {name!r}; use a torch.optim.lr_scheduler class name",
            ErrorCode.RUN_UNKNOWN_SCHEDULER,
            "lr_scheduler",
        )
    cls = SCHEDULERS[name]
    run = RunHyperparameters.of(hp)
    kwargs = _kwargs_for(cls, hp, {"optimizer", "lr_lambda", "schedulers"})
    params = inspect.signature(cls).parameters
    if "lr_lambda" in params:
        kwargs["lr_lambda"] = _FateDecay(run.lr_decay)
    if cls is torch.optim.lr_scheduler.OneCycleLR and kwargs.get("total_steps") is None:
        # torch's `epochs` is the run's own key (never passed on): derive the total from the run
        run_epochs = epochs if epochs is not None else run.total_epochs
        per_epoch = int(kwargs.pop("steps_per_epoch", None) or steps_per_epoch or 1)
        kwargs["total_steps"] = max(1, int(run_epochs) * per_epoch)
    missing = [
        p.name
        for p in params.values()
        if p.default is inspect.Parameter.empty
        and p.name not in {"self", "optimizer"}
        and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        and p.name not in kwargs
    ]
    if missing:
        raise _invalid(
            f"lr_scheduler {name} needs {', '.join(missing)} in the run",
            ErrorCode.RUN_INVALID_SCHEDULER,
            "lr_scheduler",
        )
    try:
        return cls(optimizer, **kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise _invalid(
            f"lr_scheduler {name} cannot be built from this run: {exc}", ErrorCode.RUN_INVALID_SCHEDULER, "lr_scheduler"
        ) from None


# schedulers torch defines per batch ("step should be called after a batch has been used for training");
# CosineAnnealingWarmRestarts documents both and is stepped per batch with fractional epochs
PER_BATCH_SCHEDULERS = (
    torch.optim.lr_scheduler.CyclicLR,
    torch.optim.lr_scheduler.OneCycleLR,
    torch.optim.lr_scheduler.CosineAnnealingWarmRestarts,
)


def scheduler_steps_per_batch(scheduler: Any) -> bool:
    """Whether `scheduler` steps after every optimizer step (else once per epoch)."""
    return isinstance(scheduler, PER_BATCH_SCHEDULERS)


class Schedule:
    """An optimizer and its lr scheduler, built once and kept for the whole run, so that the
    schedule (and the optimizer's own state, e.g. momentum) continues from round to round as in
    uninterrupted local training. The one place that decides when the scheduler steps:

    - CyclicLR, OneCycleLR: after every optimizer step (`after_batch`), as torch documents them;
      a OneCycleLR whose `total_steps` runs out keeps its last lr instead of failing the run;
    - CosineAnnealingWarmRestarts: after every optimizer step with the fractional epoch (torch's
      per-batch form): batch i (from 0) of epoch e trains with the lr at epoch e + i / batches, so
      `T_0` and `T_mult` count epochs and each epoch's first batch has the lr that stepping once
      per epoch would give;
    - ReduceLROnPlateau: once per epoch on that epoch's mean training loss (`after_epoch(loss)`);
    - every other scheduler: once per epoch (`after_epoch`).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler: Any, steps_per_epoch: int) -> None:
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.per_batch = scheduler_steps_per_batch(scheduler)
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.epochs = 0  # epochs completed over the whole run
        self.batch = 0  # optimizer steps in the current epoch

    @classmethod
    def build(
        cls,
        hp: RunHyperparameters | dict[str, Any],
        parameters: Iterable[torch.Tensor],
        steps_per_epoch: int,
        epochs: int | None = None,
    ) -> Schedule:
        """The run's optimizer over `parameters` and its scheduler; `epochs` is the optimizer's
        epochs over the whole run (see `build_scheduler`)."""
        run = RunHyperparameters.of(hp)
        args = run.as_dict()
        optimizer = build_optimizer(run.optimizer, parameters, args)
        scheduler = build_scheduler(run.lr_scheduler, optimizer, args, steps_per_epoch, epochs)
        return cls(optimizer, scheduler, steps_per_epoch)

    @property
    def lr(self) -> float:
        """The current learning rate of the first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def after_batch(self) -> float:
        """Call after each optimizer step; returns the lr that step used."""
        used = self.lr
        self.batch += 1
        scheduler = self.scheduler
        if self.per_batch:
            if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingWarmRestarts):
                scheduler.step(self.epochs + self.batch / self.steps_per_epoch)
            elif not (
                isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
                and scheduler.last_epoch >= scheduler.total_steps
            ):
                scheduler.step()
        return used

    def after_epoch(self, loss: float) -> None:
        """Call at the end of each epoch with its mean training loss."""
        self.epochs += 1
        self.batch = 0
        scheduler = self.scheduler
        if scheduler is None or self.per_batch:
            return
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(loss)
        else:
            scheduler.step()


class _FateDecay:
    """lr multiplier 1 / (1 + lr_decay * epoch) for LambdaLR (a plain class: no closures to pickle)."""

    def __init__(self, decay: float) -> None:
        self.decay = decay

    def __call__(self, epoch: int) -> float:
        return 1.0 / (1.0 + self.decay * epoch)


def build_criterion(name: str, hp: dict[str, Any]) -> nn.Module:
    if name in REFUSED_LOSSES:
        raise _invalid(
            f"criterion {name} is not supported: it compares pairs or sequences, not a prediction with a target",
            ErrorCode.RUN_UNSUPPORTED_CRITERION,
            "criterion",
        )
    if name not in LOSSES:
        raise _invalid(
            f"unknown criterion {name!r}; use a torch.nn loss class name", ErrorCode.RUN_UNKNOWN_CRITERION, "criterion"
        )
    cls = LOSSES[name]
    try:
        criterion: nn.Module = cls(**_kwargs_for(cls, hp, set()))
        return criterion
    except (TypeError, ValueError) as exc:
        raise _invalid(
            f"criterion {name} cannot be built from this run: {exc}", ErrorCode.RUN_INVALID_CRITERION, "criterion"
        ) from None


# Synergos options a run may carry besides RunHyperparameters' fields: FedGKT's split and distillation
# settings, and OneCycleLR's steps per epoch (consumed when its total is derived)
SYNERGOS_OPTIONS = frozenset(DistillationOptions.model_fields) | {"steps_per_epoch"}


def _constructor_names(cls: type | None, skip: set[str]) -> set[str]:
    if cls is None:
        return set()
    return {
        name
        for name, p in inspect.signature(cls).parameters.items()
        if name not in skip and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


def accepted_hyperparameters(hp: dict[str, Any]) -> set[str]:
    """Every name this run may carry: Synergos' own options and the arguments of the constructors
    it chose (optimizer, lr scheduler, criterion)."""
    run = RunHyperparameters.of(hp)
    return (
        set(RunHyperparameters.model_fields)
        | RUN_KEYS
        | SYNERGOS_OPTIONS
        | _constructor_names(OPTIMIZERS.get(run.optimizer), {"self", "params"})
        | _constructor_names(
            SCHEDULERS.get(run.lr_scheduler) if run.lr_scheduler else None,
            {"self", "optimizer", "lr_lambda", "schedulers"},
        )
        | _constructor_names(LOSSES.get(run.criterion), {"self"})
    )


def check_known_hyperparameters(hp: dict[str, Any]) -> None:
    """422 for a name no constructor of the run and no Synergos option accepts (it would be stored and
    silently ignored), naming the closest accepted one."""
    refuse_unknown(hp, accepted_hyperparameters(hp))


def refuse_unknown(names: Iterable[str], accepted: set[str]) -> None:
    """422 naming each of `names` outside `accepted`, with the closest accepted name."""
    import difflib

    unknown = sorted(name for name in names if name not in accepted)
    if not unknown:
        return
    fields, hints = [], []
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(accepted), n=1, cutoff=0.6)
        hint = f"{name!r}: did you mean {close[0]!r}?" if close else f"{name!r}"
        hints.append(hint)
        fields.append(
            {
                "path": name,
                "message": f"no option and no constructor of this run accepts {name!r}"
                + (f"; did you mean {close[0]!r}?" if close else ""),
                "type": ErrorCode.RUN_UNKNOWN_PARAMETER,
            }
        )
    raise InvalidRequest(
        f"unknown hyper-parameter(s) {'; '.join(hints)}: no Synergos option and no argument "
        "of the run's optimizer, lr_scheduler or criterion has that name, so it would be ignored",
        ErrorCode.RUN_UNKNOWN_PARAMETER,
        fields=fields,
    )


def validate_run(hp: dict[str, Any]) -> None:
    """Build the run's optimizer, scheduler and criterion on a dummy parameter; 422 if any fails or
    if the run names a hyper-parameter nothing accepts."""
    dummy = nn.Parameter(torch.zeros(1, 1))
    run = RunHyperparameters.of(hp)
    optimizer = build_optimizer(run.optimizer, [dummy], hp)
    build_scheduler(run.lr_scheduler, optimizer, hp)
    build_criterion(run.criterion, hp)
    check_known_hyperparameters(hp)  # after the names themselves are known to be right
    for key in ("lr", "mu", "l1_lambda", "l2_lambda"):
        value = hp.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            raise _invalid(f"{key} must be finite", ErrorCode.RUN_INVALID, key)


# ---- targets shaped as each loss needs ----

_INDEX_LOSSES = {"CrossEntropyLoss", "NLLLoss", "MultiMarginLoss"}
_LONG_ONEHOT_LOSSES = {"MultiLabelMarginLoss"}


def format_target(y: torch.Tensor, outputs: torch.Tensor, criterion: str, action: str) -> torch.Tensor:
    """Shape the aligned labels for `criterion`: class indices or one-hot floats for classification,
    the values themselves for regression."""
    if action != "classify":
        return y.reshape(outputs.shape).to(outputs.dtype) if y.numel() == outputs.numel() else y.to(outputs.dtype)
    indices = y.reshape(-1).long()
    width = outputs.shape[1] if outputs.dim() > 1 else 1
    if criterion in _INDEX_LOSSES:
        return indices
    if width == 1:
        target = indices.to(outputs.dtype).reshape(outputs.shape)
        if criterion == "HingeEmbeddingLoss" or criterion == "SoftMarginLoss":
            target = target * 2 - 1  # these expect labels in {-1, 1}
        return target
    onehot = F.one_hot(indices, num_classes=width)
    if criterion in _LONG_ONEHOT_LOSSES:
        # MultiLabelMarginLoss wants target class indices padded with -1
        return torch.where(onehot.bool(), indices.unsqueeze(1).expand(-1, width), torch.full_like(onehot, -1))
    if criterion in {"HingeEmbeddingLoss", "SoftMarginLoss"}:
        return (onehot * 2 - 1).to(outputs.dtype)
    return onehot.to(outputs.dtype)


BINARY_INDEX_LOSSES = {"CrossEntropyLoss", "NLLLoss"}  # also train one output as a two-class model
_PROB_EPS = 1e-7


def _is_single_output(outputs: torch.Tensor) -> bool:
    return outputs.dim() <= 2 and (outputs.dim() == 1 or outputs.shape[1] == 1)


def binary_scores(outputs: torch.Tensor, criterion: str, kind: str | None) -> torch.Tensor:
    """One output as the two-class scores NLLLoss / CrossEntropyLoss take.

    A sigmoid output is p = P(class 1): its log-probabilities [log(1-p), log(p)] (NLL of these is
    BCELoss of p; CrossEntropyLoss's own log_softmax leaves them unchanged). For CrossEntropyLoss a
    raw score z is the logit of class 1: logits [0, z] (the same as BCEWithLogitsLoss of z).
    """
    column = outputs.reshape(-1, 1)
    if kind == "sigmoid":
        # clamped in the forward pass only: a confidently wrong p still gets a gradient, as with BCELoss
        p = column + (column.clamp(_PROB_EPS, 1 - _PROB_EPS) - column).detach()
        return torch.cat([torch.log1p(-p), torch.log(p)], dim=1)
    if criterion == "CrossEntropyLoss" and kind not in {UNKNOWN_KIND, "softmax", "log_softmax"}:
        return torch.cat([torch.zeros_like(column), column], dim=1)
    if kind == UNKNOWN_KIND:
        raise ValueError(
            f"{criterion} with one output trains a two-class model, which needs the model's output "
            "kind: pass kind=<the model's output_kind>"
        )
    raise ValueError(
        f"{criterion} with one output reads it as P(class 1) (a sigmoid output), or for "
        f"CrossEntropyLoss as the logit of class 1 (no activation); this model ends with {kind}"
    )


def compute_loss(
    criterion: nn.Module,
    name: str,
    outputs: torch.Tensor,
    labels: torch.Tensor,
    action: str,
    *,
    kind: str | None = UNKNOWN_KIND,
) -> torch.Tensor:
    """The criterion on outputs and labels shaped for it (GaussianNLLLoss gets a unit variance).

    `kind` is the model's `output_kind`; it matters only for one output with NLLLoss or
    CrossEntropyLoss, trained as a two-class model (see `binary_scores`); without it such a model
    is refused here rather than trained on a guess.
    """
    if action == "classify" and name in BINARY_INDEX_LOSSES and _is_single_output(outputs):
        outputs = binary_scores(outputs, name, kind)
    target = format_target(labels, outputs, name, action)
    loss: torch.Tensor = (
        criterion(outputs, target, torch.ones_like(outputs))
        if name == "GaussianNLLLoss"
        else criterion(outputs, target)
    )
    return loss


def proximal_terms(
    model: nn.Module, global_params: list[torch.Tensor] | None, mu: float, l1: float, l2: float
) -> torch.Tensor | None:
    """FedProx mu/2·‖w−w_global‖² plus l1·|w|₁ plus l2/2·‖w‖², or None when all are zero."""
    if not (mu and global_params is not None) and not l1 and not l2:
        return None
    total = None
    for i, w in enumerate(model.parameters()):
        term = w.new_zeros(())
        if mu and global_params is not None:
            term = term + (mu / 2) * (w - global_params[i]).pow(2).sum()
        if l1:
            term = term + l1 * w.abs().sum()
        if l2:
            term = term + (l2 / 2) * w.pow(2).sum()
        total = term if total is None else total + term
    return total


# ---- combinations that cannot train, refused before any Worker is touched ----

_CLASS_ONLY = {"CrossEntropyLoss", "NLLLoss", "MultiMarginLoss", "MultiLabelMarginLoss", "MultiLabelSoftMarginLoss"}
_NEEDS_PROBABILITIES = {"BCELoss"}


def _output_width(spec: list[dict[str, Any]]) -> int | None:
    for layer in reversed(spec):
        structure = layer.get("structure") or {}
        for key in ("out_features", "num_classes", "hidden_size", "out_channels"):
            if key in structure:
                return int(structure[key])
    return None


_LOG_SOFTMAX_FIX = "end the model with log_softmax for NLLLoss, or output logits (no activation) with CrossEntropyLoss"


def _check_one_output(criterion: str, kind: str | None) -> None:
    """One output for a two-class task with NLLLoss or CrossEntropyLoss (trained as `binary_scores` says)."""
    if criterion == "NLLLoss" and kind != "sigmoid":
        raise _invalid(
            f"NLLLoss with one output reads it as P(class 1), so it must end with a sigmoid; the model "
            f"ends with {kind or 'no activation'}: add a sigmoid, or use CrossEntropyLoss or "
            "BCEWithLogitsLoss for a raw score (auto_fix gives the last layer one output for two classes)",
            ErrorCode.RUN_INVALID_COMBINATION,
            "criterion",
        )
    if kind in {"softmax", "log_softmax"}:
        raise _invalid(
            f"a single {kind} output is constant, so {criterion} cannot train it: end with a sigmoid "
            "(P(class 1)) or no activation (the logit of class 1) (auto_fix gives the last layer one "
            "output for two classes)",
            ErrorCode.RUN_INVALID_COMBINATION,
            "criterion",
        )


def _warn_if_dubious(criterion: str, kind: str | None, width: int | None) -> None:
    """Recipes torch trains but whose result is doubtful: logged, not refused."""
    several = width is None or width > 1
    if criterion == "CrossEntropyLoss" and kind == "softmax":
        log.warning(
            "CrossEntropyLoss applies its own log_softmax: on softmax outputs that is a double softmax, "
            "which trains slowly towards squashed probabilities; output logits (no activation) instead"
        )
    elif criterion == "CrossEntropyLoss" and kind == "sigmoid" and several:
        log.warning(
            "CrossEntropyLoss applies its own log_softmax: on several sigmoid outputs the probabilities "
            "are squashed; output logits (no activation) instead"
        )
    elif criterion == "NLLLoss" and kind != "log_softmax" and several:
        log.warning(
            "NLLLoss expects log-probabilities, but the model ends with %s: its loss is not a likelihood "
            "(and unbounded below on raw scores); %s",
            kind or "no activation",
            _LOG_SOFTMAX_FIX,
        )
    elif criterion == "KLDivLoss" and kind not in {"log_softmax", "logsigmoid"}:
        log.warning(
            "KLDivLoss expects log-probabilities as its input, but the model ends with %s: end it with log_softmax",
            kind or "no activation",
        )
    elif criterion == "BCEWithLogitsLoss" and kind in {"sigmoid", "softmax"}:
        log.warning(
            "BCEWithLogitsLoss applies its own sigmoid: on %s outputs that squashes them twice; output "
            "logits (no activation), or use BCELoss",
            kind,
        )


def check_combination(spec: list[dict[str, Any]], hp: dict[str, Any], action: str, n_classes: int | None) -> None:
    """Refuse a model/criterion/task combination that cannot train, saying why; warn (log) about
    one that trains but is doubtful."""
    run = RunHyperparameters.of(hp)
    criterion = run.criterion
    width, kind = _output_width(spec), output_kind(spec)
    if action == "regress" and criterion in _CLASS_ONLY:
        raise _invalid(
            f"{criterion} needs class labels, but the project is a regression",
            ErrorCode.RUN_INVALID_COMBINATION,
            "criterion",
        )
    if criterion == "NLLLoss" and kind == "softmax":
        raise _invalid(
            f"NLLLoss expects log-probabilities, but the model ends with softmax (probabilities), so its "
            f"loss would be negative and meaningless: {_LOG_SOFTMAX_FIX}. auto_fix turns a final sigmoid "
            "into softmax for more than two classes: write log_softmax yourself for NLLLoss",
            ErrorCode.RUN_INVALID_COMBINATION,
            "criterion",
        )
    if action == "classify" and width is not None and n_classes is not None:
        classes = n_classes
        if criterion in _INDEX_LOSSES and width < 2:
            if classes > 2 or criterion not in BINARY_INDEX_LOSSES:
                fix = (
                    f"set out_features={classes} or align with auto_fix"
                    if classes > 2
                    else "use BCELoss for one output"
                )
                raise _invalid(
                    f"{criterion} needs one output per class ({classes}); the last layer gives {width}: {fix}",
                    ErrorCode.RUN_INVALID_COMBINATION,
                    "criterion",
                )
            _check_one_output(criterion, kind)
        if classes > 2 and width not in (classes,):
            raise _invalid(
                f"the last layer gives {width} outputs for {classes} classes; align with auto_fix or set "
                f"out_features={classes}",
                ErrorCode.RUN_INVALID_COMBINATION,
                "model",
            )
    optimizer = run.optimizer
    meta = build_layers(spec, device="meta")
    weighted = [m for m in meta.layers if any(True for _ in m.parameters())]
    if optimizer == "SparseAdam" and not all(
        isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse for m in weighted
    ):
        raise _invalid(
            "SparseAdam needs sparse gradients everywhere: use it only with Embedding(sparse=True) layers",
            ErrorCode.RUN_INVALID_COMBINATION,
            "optimizer",
        )
    build_optimizer(optimizer, meta.parameters(), hp)  # e.g. Muon takes 2-D weights only
    if criterion in _NEEDS_PROBABILITIES and kind not in {"sigmoid", "softmax"}:
        raise _invalid(
            f"{criterion} needs probabilities: end the model with a sigmoid or softmax activation, or use "
            "BCEWithLogitsLoss",
            ErrorCode.RUN_INVALID_COMBINATION,
            "criterion",
        )
    if action == "classify":
        _warn_if_dubious(criterion, kind, width)
