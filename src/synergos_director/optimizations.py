"""Hyper-parameter optimization with Ray Tune: the search space is sampled into runs named
`optim_run_<uuid4>`; each trial's training and validation are planned and queued like any other
(the Director's own `submit_training`/`submit_validation`, in-process), the trial waits for the
archive to close them, and reports the chosen metric back to Tune, so searchers that learn from
results (Optuna) do. As many trials run at once as there are grids.

Ray runs each trial's function in a worker process of its own (on another machine, when the
Director joins a Ray cluster), never in the Director's: a trial cannot call the Director. So a
trial only asks, through a `TrialDesk` (a Ray actor the optimization owns), for its sampled
configuration to be tried, and waits for the answer; the Director takes each request off the
desk and runs the trial itself (`Optimization.try_config`). No REST call, no Driver.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import ValidationError

from synergos_contract import planning
from synergos_contract.jobs import failure_reason
from synergos_contract.schemas import OptimizationRequest, invalid_body
from synergos_core.errors import ErrorCode, InvalidRequest
from synergos_core.model import accepted_hyperparameters, refuse_unknown
from synergos_core.records import AGGREGATE, OptimizationSummary
from synergos_core.schemas import RunHyperparameters

if TYPE_CHECKING:
    from .orchestrator import QueueOrchestrator

log = logging.getLogger("synergos_director")
SAMPLERS = ("choice", "uniform", "loguniform", "randint")
MINIMISED = {"MSE", "MAE", "loss", "FPRs", "FNRs", "FDRs"}
TRIAL_TIMEOUT_S = 3600.0  # for each of a trial's jobs
_DEFAULTS = RunHyperparameters()


def _candidates(space: dict[str, Any], name: str, default: Any) -> list[Any]:
    value = space.get(name, default)
    if isinstance(value, dict) and value.get("_type") == "choice" and isinstance(value.get("_value"), list):
        return list(value["_value"])
    return [value]


def check_search_space(space: dict[str, Any]) -> None:
    """422 for a malformed sampler, or a name no trial's optimizer, scheduler, criterion or Synergos
    option would accept (it would be silently ignored by every trial)."""
    accepted: set[str] = set()
    for optimizer in _candidates(space, "optimizer", _DEFAULTS.optimizer):
        for scheduler in _candidates(space, "lr_scheduler", _DEFAULTS.lr_scheduler):
            for criterion in _candidates(space, "criterion", _DEFAULTS.criterion):
                accepted |= accepted_hyperparameters(
                    {"optimizer": optimizer, "lr_scheduler": scheduler, "criterion": criterion}
                )
    refuse_unknown(space, accepted)
    for name, value in space.items():
        if isinstance(value, dict) and "_type" in value:
            kind, args = value.get("_type"), value.get("_value")
            if kind not in SAMPLERS:
                raise InvalidRequest(
                    f"search_space.{name}: _type {kind!r} is not one of {', '.join(SAMPLERS)}",
                    ErrorCode.OPTIMIZATION_INVALID,
                )
            if not isinstance(args, list) or not args or (kind != "choice" and len(args) != 2):
                raise InvalidRequest(
                    f"search_space.{name}: _value must be a list of choices, or [low, high]",
                    ErrorCode.OPTIMIZATION_INVALID,
                )


def to_tune_space(space: dict[str, Any]) -> dict[str, Any]:
    from ray import tune

    out = {}
    for name, value in space.items():
        if isinstance(value, dict) and "_type" in value:
            kind, args = value["_type"], value["_value"]
            out[name] = tune.choice(args) if kind == "choice" else getattr(tune, kind)(*args)
        else:
            out[name] = value  # fixed values pass through
    return out


def metric_value(statistics: dict[str, Any], metric: str) -> float:
    value = statistics.get(metric)
    if isinstance(value, list):
        value = sum(value) / len(value) if value else 0.0
    if not isinstance(value, (int, float)):
        raise KeyError(f"metric {metric!r} is not among the validation statistics")
    return float(value)


class TrialDesk:
    """The one thing a trial (in a Ray worker) and the Director share, as a Ray actor: a trial
    `ask`s for a configuration to be tried and waits; the Director takes the requests (`next`) and
    `answer`s each with `{metric: value, "run_id": …}` or `{"error": …}`."""

    def __init__(self) -> None:
        self._asked: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._answers: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def ask(self, trial_id: str, config: dict[str, Any]) -> dict[str, Any]:
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._answers[trial_id] = answer
        await self._asked.put((trial_id, config))
        try:
            return await answer
        finally:
            self._answers.pop(trial_id, None)

    async def next(self, wait_s: float) -> tuple[str, dict[str, Any]] | None:
        try:
            return await asyncio.wait_for(self._asked.get(), wait_s)
        except TimeoutError:
            return None

    async def answer(self, trial_id: str, outcome: dict[str, Any]) -> None:
        answer = self._answers.get(trial_id)
        if answer is not None and not answer.done():
            answer.set_result(outcome)


def run_trial(config: dict[str, Any], desk: Any) -> None:
    """One trial, inside a Ray worker: ask the Director to try `config`, report what it measured."""
    import ray
    from ray import tune

    outcome = ray.get(desk.ask.remote(uuid.uuid4().hex, dict(config)))
    if "error" in outcome:
        raise RuntimeError(outcome["error"])
    tune.report(outcome)


class Optimization:
    """One optimization request, run by Ray Tune on a thread of the Director."""

    def __init__(
        self,
        director: QueueOrchestrator,
        collab_id: str,
        project_id: str,
        expt_id: str,
        request: OptimizationRequest,
        grids: int,
    ) -> None:
        check_search_space(request.search_space)
        project = director.store.get_project(collab_id, project_id)
        self.director = director
        self.keys = (collab_id, project_id, expt_id)
        self.optimization_id = f"optim_{uuid.uuid4().hex[:12]}"
        self.metric = request.metric or ("accuracy" if project.action == "classify" else "R2")
        self.mode: Literal["max", "min"] = request.optimize_mode or ("min" if self.metric in MINIMISED else "max")
        self.tuner = request.tuner or "BasicVariantGenerator"
        if self.tuner not in {"BasicVariantGenerator", "OptunaSearch", "optuna", "random"}:
            raise InvalidRequest(
                f"tuner {self.tuner!r}: use BasicVariantGenerator (default) or OptunaSearch",
                ErrorCode.OPTIMIZATION_INVALID,
            )
        self.n_samples = request.n_samples  # the original Driver's max_trial_num when n_samples is not given
        self.concurrency = request.trial_concurrency or max(grids, 1)
        self.space = request.search_space
        self.state: Literal["queued", "running", "completed", "failed"] = "queued"
        self.error: str | None = None

    def summary(self) -> OptimizationSummary:
        return OptimizationSummary(
            optimization_id=self.optimization_id,
            state=self.state,
            metric=self.metric,
            optimize_mode=self.mode,
            tuner=self.tuner,
            n_samples=self.n_samples,
            trial_concurrency=self.concurrency,
            error=self.error,
        )

    def run(self) -> None:
        """Run to the end on the calling thread (the optimization runner's)."""
        try:
            self._tune()
            self.state = "completed"
        except Exception as exc:  # the request already returned: record why, for reads
            log.exception("optimization %s failed", self.optimization_id)
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"

    # -- one trial, in the Director --
    def try_config(self, config: dict[str, Any], timeout_s: float = TRIAL_TIMEOUT_S) -> dict[str, Any]:
        """Create the trial's run from `config`, train and validate it as any run is (planned and
        queued by the Director, in-process), and measure it: `{metric: value, "run_id": …}`."""
        c, p, e = self.keys
        director = self.director
        run_id = f"optim_run_{uuid.uuid4()}"
        try:
            hyperparameters = RunHyperparameters.model_validate(config)
        except ValidationError as exc:
            raise invalid_body(exc, "the sampled configuration is not a run: ") from None
        planning.accept_run(director.store, c, p, e, run_id, hyperparameters, optimization_id=self.optimization_id)
        for kind, submit in (("training", director.submit_training), ("validation", director.submit_validation)):
            job = submit(c, p, e, run_id)[-1]  # an alignment the training needs comes first
            status, detail = director.wait(job.job_id, timeout_s)
            if status != "completed":
                raise RuntimeError(f"{kind} of {run_id} failed: {detail}")
        aggregate = director.store.list_validations(c, p, e, run_id, AGGREGATE)
        if not aggregate or aggregate[0].evaluate is None:
            raise RuntimeError(f"validation of {run_id} produced no aggregate statistics")
        return {self.metric: metric_value(aggregate[0].evaluate.statistics, self.metric), "run_id": run_id}

    def _serve(self, desk: Any, stop: threading.Event) -> None:
        """Take the trials' requests off the desk and try each on a thread of its own."""
        import ray

        while not stop.is_set():
            try:
                asked = ray.get(desk.next.remote(1.0), timeout=60)
            except Exception:
                if not stop.is_set():
                    log.exception("optimization %s: the trial desk did not answer", self.optimization_id)
                    stop.wait(1.0)
                continue
            if asked is not None:
                trial_id, config = asked
                threading.Thread(
                    target=self._answer, args=(desk, trial_id, config), daemon=True, name=f"trial-{trial_id[:8]}"
                ).start()

    def _answer(self, desk: Any, trial_id: str, config: dict[str, Any]) -> None:
        try:
            outcome = self.try_config(config)
        except Exception as exc:  # noqa: BLE001 (the trial fails with the reason; the Director goes on)
            outcome = {"error": failure_reason(exc)}
            log.warning("optimization %s: a trial failed: %s", self.optimization_id, outcome["error"])
        desk.answer.remote(trial_id, outcome)

    def _tune(self) -> None:
        import ray
        from ray import tune

        self.state = "running"
        settings = self.director.settings
        search_alg = None
        if self.tuner in {"OptunaSearch", "optuna"}:
            from ray.tune.search.optuna import OptunaSearch

            search_alg = OptunaSearch()
        log.info(
            "optimization %s: %d trials of %s by %s, %d at a time, %s %s",
            self.optimization_id,
            self.n_samples,
            "/".join(self.keys),
            self.tuner,
            self.concurrency,
            self.mode,
            self.metric,
        )
        space = to_tune_space(self.space)
        outputs = cast(Path, settings.outputs_dir)  # set by the CLI (resolve_dirs)
        storage = (outputs / self.keys[0] / self.keys[1] / self.keys[2] / "optimizations").resolve()
        desk: Any = ray.remote(num_cpus=0)(TrialDesk).remote()
        stop = threading.Event()
        server = threading.Thread(
            target=self._serve, args=(desk, stop), daemon=True, name=f"trials-{self.optimization_id}"
        )
        server.start()
        try:
            tuner = tune.Tuner(
                tune.with_resources(tune.with_parameters(run_trial, desk=desk), {"cpu": 0.25}),
                param_space=space,
                tune_config=tune.TuneConfig(
                    metric=self.metric,
                    mode=self.mode,
                    num_samples=self.n_samples,
                    max_concurrent_trials=self.concurrency,
                    search_alg=search_alg,
                ),
                run_config=tune.RunConfig(name=self.optimization_id, storage_path=str(storage), verbose=0),
            )
            results = tuner.fit()
        finally:
            stop.set()
            server.join(timeout=10)
            ray.kill(desk)
        best = results.get_best_result(metric=self.metric, mode=self.mode) if len(results) else None
        if best is not None and best.metrics and best.metrics.get("run_id"):
            log.info(
                "optimization %s: best %s = %s (%s), registered as champion",
                self.optimization_id,
                self.metric,
                best.metrics.get(self.metric),
                best.metrics.get("run_id"),
            )
            mlflow = self.director.mlflow
            mlflow.tracker.set_champion(
                mlflow.uri(self.director.store.get_collaboration(self.keys[0]).details()),
                *self.keys,
                best.metrics["run_id"],
            )


class OptimizationRunner:
    """One long-lived thread that owns Ray and runs optimizations one after another.

    Ray's own processes die with the thread that started them, so Ray is started once, on a
    thread that lives as long as the Director."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self._queue: queue.Queue[Optimization | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="optimizations")
        self._thread.start()

    def submit(self, optimization: Optimization) -> None:
        self._queue.put(optimization)

    def close(self) -> None:
        self._queue.put(None)

    def _loop(self) -> None:
        import ray

        started = False
        while (optimization := self._queue.get()) is not None:
            if not started:
                try:
                    ray.init(
                        address=self.settings.ray_address,
                        num_cpus=self.settings.ray_cpus or 2,
                        include_dashboard=False,
                        ignore_reinit_error=True,
                        log_to_driver=False,
                        configure_logging=False,
                    )
                    started = True
                except Exception as exc:
                    log.exception("Ray could not start")
                    optimization.state, optimization.error = "failed", f"Ray could not start: {exc}"
                    continue
            optimization.run()
        if started:
            ray.shutdown()
