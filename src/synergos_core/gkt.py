"""FedGKT (group knowledge transfer): a split model trained by knowledge distillation.

The experiment's layer list (activations as their own layers) is cut at `L`: each party keeps
the first `L` layers as its own feature extractor plus a small local head, and the TTP trains the
remaining layers (the server model) on the features the parties extract. Each round a party
trains extractor and head on its labels, softened towards the server's predictions for its
samples (`alpha`, `temperature`), then sends its features and its own predictions; the server
learns from those predictions by distillation for `server_epochs` and sends back its own. Labels
never leave a party. The final model of a party is its extractor followed by the server model.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ErrorCode, InvalidRequest
from .model import Schedule, SynergosModel, compute_loss, output_kind
from .schemas import RunHyperparameters
from .training import LocalTrainer, lr_summary, run_steps_per_epoch
from .wire import Layout

_EPS = 1e-6


def split_index(spec: list[dict[str, Any]], hp: RunHyperparameters | dict[str, Any]) -> int:
    """How many layers stay with the parties (`L`, default half the model, at least one each side)."""
    count = len(spec)
    if count < 2:
        raise InvalidRequest(
            "FedGKT needs at least two layers to split between parties and server", ErrorCode.RUN_INVALID_COMBINATION
        )
    split = RunHyperparameters.of(hp).distillation.L or max(1, count // 2)
    if not 1 <= split < count:
        raise InvalidRequest(f"L must be between 1 and {count - 1} for this {count}-layer model", ErrorCode.RUN_INVALID)
    return split


def server_keys(model: SynergosModel, split: int) -> list[str]:
    return [k for k in model.state_dict() if int(k.split(".")[1]) >= split]


def extractor_keys(model: SynergosModel, split: int) -> list[str]:
    return [k for k in model.state_dict() if int(k.split(".")[1]) < split]


def run_layers(model: SynergosModel, x: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
    return model.run(x, start, stop)


def to_logits(out: torch.Tensor, kind: str | None) -> torch.Tensor:
    """Scores comparable across models, whatever their final activation."""
    if out.dim() == 1:
        out = out.unsqueeze(1)
    if kind == "sigmoid" or (kind is None and out.shape[1] == 1):
        p = out.clamp(_EPS, 1 - _EPS) if kind == "sigmoid" else torch.sigmoid(out)
        return torch.cat([torch.log1p(-p), torch.log(p)], dim=1)
    if kind == "softmax":
        return out.clamp_min(_EPS).log()
    return out  # log-probabilities or raw scores


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, kind: str | None, temperature: float
) -> torch.Tensor:
    t = float(temperature)
    s_logits, t_logits = to_logits(student, kind) / t, to_logits(teacher, kind).detach() / t
    return F.kl_div(F.log_softmax(s_logits, 1), F.softmax(t_logits, 1), reduction="batchmean") * t * t


class LocalHead(nn.Module):
    """The party's small classifier on its extracted features, ending like the full model."""

    def __init__(self, features: int, outputs: int, kind: str | None) -> None:
        super().__init__()
        self.linear = nn.Linear(features, outputs)
        self.kind = kind

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.linear(h.flatten(1))
        if self.kind == "sigmoid":
            return torch.sigmoid(out)
        if self.kind == "softmax":
            return F.softmax(out, 1)
        if self.kind == "log_softmax":
            return F.log_softmax(out, 1)
        return out  # type: ignore[no-any-return]  # nn.Linear's forward is untyped


class _ServerLayers(nn.Module):
    """The layers after the split, used as a party's head when they hold no weights."""

    def __init__(self, model: SynergosModel, split: int) -> None:
        super().__init__()
        # kept outside this module's tree: the server layers are not the party's head weights
        object.__setattr__(self, "_server", model)
        self._split = split

    @property
    def _model(self) -> SynergosModel:
        server: SynergosModel = self.__dict__["_server"]
        return server

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return run_layers(self._model, h, self._split)


class GKTTrainer(LocalTrainer):
    """A party's side of FedGKT; evaluation and inference use the full model like any run."""

    def __init__(
        self, spec: list[dict[str, Any]], hp: RunHyperparameters | dict[str, Any], action: str, data: dict[str, Any]
    ) -> None:
        super().__init__(spec, hp, action, data)
        self.split = split_index(spec, self.run)
        self.kind = output_kind(spec)
        self.server_layout = Layout.of({k: self.state[k] for k in server_keys(self.model, self.split)})
        sample = next(iter(s for s in data.values() if len(s)), None)
        if sample is None:
            raise InvalidRequest("no data to size the feature extractor", ErrorCode.DATASET_EMPTY)
        with torch.no_grad():
            features = run_layers(self.model, sample.X[:1], 0, self.split)
            outputs = self.model(sample.X[:1])
        width = outputs.shape[1] if outputs.dim() > 1 else 1
        # a server part without weights (e.g. just the final Sigmoid) cannot learn anything: the
        # party then classifies through those same layers, and its extractor is the whole model
        self.head_is_server = not any(self.state[name].numel() for name, _, _ in self.server_layout.entries)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.head = (
                _ServerLayers(self.model, self.split)
                if self.head_is_server
                else LocalHead(features[0].numel(), width, self.kind)
            )
        # the extractor's and head's optimizer and lr scheduler, kept for the whole run (see Schedule)
        self.gkt_schedule: Schedule | None = None

    def extractor_state(self) -> dict[str, torch.Tensor]:
        state = {k: self.state[k] for k in extractor_keys(self.model, self.split)}
        state.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        return state

    def train_gkt(self, epochs: int, teacher: torch.Tensor | None) -> dict[str, Any]:
        """Train extractor and head on local labels (softened towards the server when given), then
        return the features and predictions of every train sample for the server."""
        split = self.data.get("train")
        if split is None or len(split) == 0:
            raise ValueError("this participant has no train data for the run")
        started = time.perf_counter()
        run = self.run
        alpha, temperature = run.distillation.alpha, run.distillation.temperature
        n = len(split)
        batch = run.batch_size or n
        if self.gkt_schedule is None:
            params = [p for i, layer in enumerate(self.model.layers) if i < self.split for p in layer.parameters()]
            self.gkt_schedule = Schedule.build(
                run, params + list(self.head.parameters()), run_steps_per_epoch(n, batch), run.total_epochs
            )
        schedule = self.gkt_schedule
        optimizer = schedule.optimizer
        self.lr_trace = []
        losses = []
        self.model.train()
        self.head.train()
        for _ in range(epochs):
            order = torch.randperm(n, generator=self.generator)
            total = 0.0
            for start in range(0, n, batch):
                idx = order[start : start + batch]

                def closure(idx: torch.Tensor = idx) -> torch.Tensor:
                    optimizer.zero_grad(set_to_none=True)
                    out = self.head(run_layers(self.model, split.X[idx], 0, self.split))
                    loss = compute_loss(
                        self.criterion, self.criterion_name, out, split.y[idx], self.action, kind=self.kind
                    )
                    if teacher is not None and alpha:
                        loss = loss + alpha * distillation_loss(out, teacher[idx], self.kind, temperature)
                    loss.backward()
                    return loss

                loss = _optimizer_step(optimizer, closure)
                self.lr_trace.append(schedule.after_batch())
                total += float(loss.detach()) * len(idx)
            losses.append(total / n)
            schedule.after_epoch(losses[-1])
        with torch.no_grad():
            self.model.eval()
            self.head.eval()
            features = run_layers(self.model, split.X, 0, self.split).contiguous()
            local_out = self.head(features).contiguous()
        return {
            "n_samples": n,
            "epoch_losses": losses,
            "train_loss": losses[-1],
            "compute_s": time.perf_counter() - started,
            "lrs": lr_summary(self.lr_trace),
            "features": features,
            "local_out": local_out,
        }


def _optimizer_step(optimizer: torch.optim.Optimizer, closure: Any) -> torch.Tensor:
    """One optimizer step on `closure`'s loss (LBFGS re-evaluates the loss itself)."""
    if isinstance(optimizer, torch.optim.LBFGS):
        stepped: torch.Tensor = optimizer.step(closure)
        return stepped
    loss: torch.Tensor = closure()
    optimizer.step()
    return loss


class ServerModel(nn.Module):
    """The layers after the split, trained on the TTP from the parties' features."""

    def __init__(self, model: SynergosModel, split: int) -> None:
        super().__init__()
        self.model = model
        self.split = split
        # the server layers' optimizer and lr scheduler, built at the first round and kept for the
        # whole run so the schedule continues across rounds (see Schedule)
        self.schedule: Schedule | None = None
        self.lr_trace: list[float] = []  # lr at each optimizer step of the last train_server()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return run_layers(self.model, h, self.split)

    def state(self) -> dict[str, torch.Tensor]:
        full = self.model.state_dict()
        return {k: full[k] for k in server_keys(self.model, self.split)}


def train_server(
    server: ServerModel,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    hp: RunHyperparameters | dict[str, Any],
    kind: str | None,
) -> float:
    """Distil the parties' predictions into the server model; returns the last epoch's mean loss.

    Called once per round; each party's features are one batch, and the server's optimizer and
    lr scheduler live on `server` so that its schedule runs over `rounds * server_epochs` epochs."""
    params = [p for i, layer in enumerate(server.model.layers) if i >= server.split for p in layer.parameters()]
    if not params:
        return 0.0
    run = RunHyperparameters.of(hp)
    server_epochs = run.distillation.server_epochs
    if server.schedule is None:
        server.schedule = Schedule.build(run, params, len(batches), run.rounds * server_epochs)
    schedule = server.schedule
    optimizer = schedule.optimizer
    server.lr_trace = []
    temperature = run.distillation.temperature
    server.train()
    mean = 0.0
    for _ in range(server_epochs):
        total, count = 0.0, 0
        for features, teacher in batches:

            def closure(features: torch.Tensor = features, teacher: torch.Tensor = teacher) -> torch.Tensor:
                optimizer.zero_grad(set_to_none=True)
                loss = distillation_loss(server(features), teacher, kind, temperature)
                loss.backward()
                return loss

            loss = _optimizer_step(optimizer, closure)
            server.lr_trace.append(schedule.after_batch())
            total += float(loss.detach()) * len(features)
            count += len(features)
        mean = total / max(count, 1)
        schedule.after_epoch(mean)
    server.eval()
    return mean
