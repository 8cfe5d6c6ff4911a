"""Local training on a Worker: the FedAvg / FedProx client step, evaluation and inference.

The model is rebuilt from the experiment's layer list; global weights arrive over the wire
and are written straight into it. FedProx keeps a frozen copy of the global parameters for
its proximal term; FedAvg ignores `mu`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import metric_parts
from .model import (
    BINARY_INDEX_LOSSES,
    UNKNOWN_KIND,
    Schedule,
    build_criterion,
    build_model,
    compute_loss,
    proximal_terms,
)
from .schemas import RunHyperparameters
from .wire import Layout

_LOGIT_LOSSES = {"BCEWithLogitsLoss", "CrossEntropyLoss", "MultiLabelSoftMarginLoss", "SoftMarginLoss"}
_LOG_PROB_LOSSES = {"NLLLoss", "KLDivLoss", "PoissonNLLLoss", "GaussianNLLLoss"}


@dataclass
class Split:
    X: torch.Tensor
    y: torch.Tensor  # class indices (classify) or values (regress), as the model sees them
    # a regression target in original units is y * target_scale + target_shift
    target_shift: float = 0.0
    target_scale: float = 1.0

    def __len__(self) -> int:
        return int(self.X.shape[0])


def run_steps_per_epoch(n: int, batch: int) -> int:
    """Optimizer steps in one epoch over `n` samples in batches of `batch`."""
    return max(1, -(-n // max(1, batch)))


def lr_summary(trace: list[float]) -> list[float]:
    """[first, last] lr of a round, small enough for the reply header (the full trace stays here)."""
    return [trace[0], trace[-1]] if trace else []


class LocalTrainer:
    def __init__(
        self,
        spec: list[dict[str, Any]],
        hp: RunHyperparameters | dict[str, Any],
        action: str,
        data: dict[str, Split],
    ) -> None:
        self.run = RunHyperparameters.of(hp)  # typed, every default filled in
        self.hp = self.run.as_dict()  # by name, for the constructors torch's classes take arguments from
        self.action = action
        self.data = data
        self.seed = self.run.seed
        self.model = build_model(spec, seed=self.seed)
        self.state = self.model.state_dict()
        self.layout = Layout.of(self.state)
        self.criterion_name = self.run.criterion
        self.criterion = build_criterion(self.criterion_name, self.hp)
        self.generator = torch.Generator().manual_seed(self.seed)
        # optimizer and lr scheduler: built at the first train() and kept for the whole run, so the
        # schedule (and e.g. momentum) continues from round to round; the global weights are written
        # into the same parameter tensors (`self.state` shares their storage)
        self.schedule: Schedule | None = None
        self.lr_trace: list[float] = []  # lr of param group 0 at each optimizer step of the last train()

    # -- training --
    def train(self, epochs: int, round_index: int) -> dict[str, Any]:
        """Train the current weights for `epochs` on the `train` split; returns losses and counts."""
        split = self.data.get("train")
        if split is None or len(split) == 0:
            raise ValueError("this participant has no train data for the run")
        started = time.perf_counter()
        run = self.run
        mu, l1, l2 = run.proximal_mu, run.l1_lambda, run.l2_lambda
        global_params = [p.detach().clone() for p in self.model.parameters()] if mu else None
        n = len(split)
        batch = run.batch_size or n
        schedule = self._schedule()
        optimizer = schedule.optimizer
        self.lr_trace = []
        patience, delta = run.patience, run.delta
        best, stale = float("inf"), 0
        losses: list[float] = []
        self.model.train()
        for _ in range(epochs):
            order = torch.randperm(n, generator=self.generator) if batch < n else None
            total = 0.0
            for start in range(0, n, batch):
                if order is None:
                    xb, yb = split.X[start : start + batch], split.y[start : start + batch]
                else:
                    idx = order[start : start + batch]
                    xb, yb = split.X[idx], split.y[idx]

                def closure(xb: torch.Tensor = xb, yb: torch.Tensor = yb) -> torch.Tensor:
                    optimizer.zero_grad(set_to_none=True)
                    out = self.model(xb)
                    loss = compute_loss(
                        self.criterion, self.criterion_name, out, yb, self.action, kind=self.model.output_kind
                    )
                    extra = proximal_terms(self.model, global_params, mu, l1, l2)
                    if extra is not None:
                        loss = loss + extra
                    loss.backward()
                    return loss

                if isinstance(optimizer, torch.optim.LBFGS):
                    loss = optimizer.step(closure)  # LBFGS re-evaluates the loss itself
                else:
                    loss = closure()
                    optimizer.step()
                self.lr_trace.append(schedule.after_batch())
                total += float(loss.detach()) * xb.shape[0]
            epoch_loss = total / n
            losses.append(epoch_loss)
            schedule.after_epoch(epoch_loss)
            if patience:
                if epoch_loss < best - delta:
                    best, stale = epoch_loss, 0
                else:
                    stale += 1
                    if stale >= patience:
                        break
        return {
            "n_samples": n,
            "epoch_losses": losses,
            "train_loss": losses[-1],
            "compute_s": time.perf_counter() - started,
            "lrs": lr_summary(self.lr_trace),
        }

    def _schedule(self) -> Schedule:
        """The run's optimizer and scheduler, built at the first round (they need the train split)."""
        if self.schedule is None:
            split = self.data.get("train")
            if split is None or len(split) == 0:
                raise ValueError("this participant has no train data for the run")
            n = len(split)
            self.schedule = Schedule.build(
                self.run,
                self.model.parameters(),
                run_steps_per_epoch(n, self.run.batch_size or n),
                self.run.total_epochs,
            )
        return self.schedule

    # -- what a resumed run needs besides the global weights --
    def training_state(self) -> dict[str, Any] | None:
        """What local training carries from one round to the next besides the weights (which the
        TTP sends): the optimizer's and scheduler's state, the schedule's step counters and the
        batch-shuffling generator's state; None before the first round."""
        if self.schedule is None:
            return None
        schedule = self.schedule
        return {
            "optimizer": schedule.optimizer.state_dict(),
            "scheduler": schedule.scheduler.state_dict() if schedule.scheduler is not None else None,
            "epochs": schedule.epochs,
            "batch": schedule.batch,
            "generator": self.generator.get_state(),
        }

    def restore_training_state(self, saved: dict[str, Any]) -> None:
        """Carry on from `training_state()` as it was saved (a resumed run): the next round trains
        exactly as it would have without the interruption."""
        schedule = self._schedule()
        schedule.optimizer.load_state_dict(saved["optimizer"])
        if schedule.scheduler is not None and saved.get("scheduler") is not None:
            schedule.scheduler.load_state_dict(saved["scheduler"])
        schedule.epochs, schedule.batch = int(saved["epochs"]), int(saved["batch"])
        self.generator.set_state(saved["generator"])

    # -- evaluation --
    @torch.no_grad()
    def _outputs(self, meta: str) -> tuple[Split, torch.Tensor] | None:
        """The current weights' raw outputs on `meta` (None when there is no such data)."""
        split = self.data.get(meta)
        if split is None or len(split) == 0:
            return None
        self.model.eval()
        return split, self.model(split.X)

    def _loss(self, split: Split, out: torch.Tensor) -> float:
        loss = compute_loss(self.criterion, self.criterion_name, out, split.y, self.action, kind=self.model.output_kind)
        return float(loss)

    def _scores(self, split: Split, out: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        if self.action == "classify":
            probabilities = to_probabilities(out, self.criterion_name, kind=self.model.output_kind)
            return split.y.numpy(), probabilities.numpy()
        # predictions and labels in the target's original units
        shift, scale = split.target_shift, split.target_scale
        return (split.y.double() * scale + shift).numpy(), (out.double() * scale + shift).numpy()

    def evaluate(self, meta: str) -> tuple[float | None, int]:
        """Mean criterion loss of the current weights on `meta` (None when there is no such data)."""
        found = self._outputs(meta)
        return (None, 0) if found is None else (self._loss(*found), len(found[0]))

    def infer(self, meta: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(labels, scores) on `meta`: class probabilities for classification, values for regression."""
        found = self._outputs(meta)
        return None if found is None else self._scores(*found)

    def assess(self) -> dict[str, Any]:
        """The current (global) weights on this party's data: the losses on `train` and `evaluate`
        with their counts, and the sums from which the pooled evaluate metric is exact (one forward
        pass per split)."""
        train_loss, train_n = self.evaluate("train")
        found = self._outputs("evaluate")
        if found is None:
            eval_loss, eval_n, metric = None, 0, None
        else:
            split, out = found
            eval_loss, eval_n = self._loss(split, out), len(split)
            metric = metric_parts(*self._scores(split, out), self.action)
        return {
            "train_loss": train_loss,
            "train_samples": train_n,
            "eval_loss": eval_loss,
            "eval_samples": eval_n,
            "metric": metric,
        }


def to_probabilities(out: torch.Tensor, criterion: str, kind: str | None = UNKNOWN_KIND) -> torch.Tensor:
    """Turn model outputs into class probabilities, whatever form the criterion trained them in.

    `kind` is the model's `output_kind`. One output trained with NLLLoss or CrossEntropyLoss is a
    two-class model (see `model.binary_scores`): its P(class 1), one column as for BCELoss.
    """
    if out.dim() == 1:
        out = out.unsqueeze(1)
    if kind != UNKNOWN_KIND and out.shape[1] == 1 and criterion in BINARY_INDEX_LOSSES:
        return out.clamp(0, 1) if kind == "sigmoid" else torch.sigmoid(out)
    if kind == "softmax" and out.shape[1] > 1:
        return out  # a distribution already, whatever the criterion made of it
    if kind == "log_softmax" and out.shape[1] > 1:
        return out.exp()
    if criterion in _LOG_PROB_LOSSES and out.shape[1] > 1:
        return out.exp()
    if criterion in _LOGIT_LOSSES:
        return torch.sigmoid(out) if out.shape[1] == 1 else F.softmax(out, dim=1)
    if out.shape[1] > 1 and (out.min() < 0 or not torch.allclose(out.sum(1), torch.ones(len(out)), atol=1e-3)):
        return F.softmax(out, dim=1)
    return out.clamp(0, 1) if out.shape[1] == 1 else out
