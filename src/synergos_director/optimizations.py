"""Hyper-parameter optimization with Ray Tune: the search space is sampled into runs named
`optim_run_<uuid4>`; each trial queues its training and validation through the Director's own
REST API, waits for them to be archived, and reports the chosen metric back to Tune, so searchers
that learn from results (Optuna) do. As many trials run at once as there are grids."""
from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from typing import Any

from synergos_core.errors import InvalidRequest
from synergos_core.model import accepted_hyperparameters, check_known_hyperparameters

log = logging.getLogger("synergos_director")
SAMPLERS = ("choice", "uniform", "loguniform", "randint")
MINIMISED = {"MSE", "MAE", "loss", "FPRs", "FNRs", "FDRs"}


def _candidates(space: dict[str, Any], name: str, default: Any) -> list[Any]:
    value = space.get(name, default)
    if isinstance(value, dict) and value.get("_type") == "choice" and isinstance(value.get("_value"), list):
        return list(value["_value"])
    return [value]


def check_search_space(space: dict[str, Any]) -> None:
    """422 for a malformed sampler, or a name no trial's optimizer, scheduler, criterion or Synergos
    option would accept (it would be silently ignored by every trial)."""
    accepted: set[str] = set()
    for optimizer in _candidates(space, "optimizer", "SGD"):
        for scheduler in _candidates(space, "lr_scheduler", "CyclicLR"):
            for criterion in _candidates(space, "criterion", "BCELoss"):
                accepted |= accepted_hyperparameters({"optimizer": optimizer, "lr_scheduler": scheduler,
                                                      "criterion": criterion})
    unknown = {name: None for name in space if name not in accepted}
    if unknown:
        check_known_hyperparameters({**unknown, "optimizer": "SGD"}, ignore=accepted)
    for name, value in space.items():
        if isinstance(value, dict) and "_type" in value:
            kind, args = value.get("_type"), value.get("_value")
            if kind not in SAMPLERS:
                raise InvalidRequest(f"search_space.{name}: _type {kind!r} is not one of {', '.join(SAMPLERS)}",
                                     "optimization.invalid")
            if not isinstance(args, list) or not args or (kind != "choice" and len(args) != 2):
                raise InvalidRequest(f"search_space.{name}: _value must be a list of choices, or [low, high]",
                                     "optimization.invalid")


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


def run_trial(config: dict[str, Any], ctx: dict[str, Any]) -> None:
    """One trial, inside a Ray worker: queue training and validation, wait, report the metric."""
    from ray import tune

    from synergos_driver import Driver

    driver = Driver(host=ctx["host"], port=ctx["port"], show_progress=False, timeout=60.0)
    c, p, e = ctx["collab_id"], ctx["project_id"], ctx["expt_id"]
    run_id = f"optim_run_{uuid.uuid4()}"
    driver.runs.create(collab_id=c, project_id=p, expt_id=e, run_id=run_id,
                       optimization_id=ctx["optimization_id"], **config)
    driver.models.create(collab_id=c, project_id=p, expt_id=e, run_id=run_id)
    _wait(driver, c, p, e, run_id, "training", ctx["timeout_s"])
    driver.validations.create(collab_id=c, project_id=p, expt_id=e, run_id=run_id)
    _wait(driver, c, p, e, run_id, "validation", ctx["timeout_s"])
    record = driver.validations.read(collab_id=c, project_id=p, expt_id=e, run_id=run_id,
                                     participant_id="aggregate")["data"][0]
    value = metric_value(record["evaluate"]["statistics"], ctx["metric"])
    tune.report({ctx["metric"]: value, "run_id": run_id})


def _wait(driver: Any, c: str, p: str, e: str, r: str, kind: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = driver._session.request("GET", "/ttp/status/jobs", params={"collab_id": c, "project_id": p})["data"]
        mine = [j for j in jobs if j["kind"] == kind and j["keys"].get("run_id") == r and j["keys"].get("expt_id") == e]
        if mine and mine[-1]["state"] == "completed":
            return
        if mine and mine[-1]["state"] == "failed":
            raise RuntimeError(f"{kind} of {r} failed: {mine[-1].get('detail')}")
        time.sleep(0.5)
    raise TimeoutError(f"{kind} of {r} did not finish within {timeout_s:.0f} s")


class Optimization:
    """One optimization request, run by Ray Tune on a thread of the Director."""

    def __init__(self, director: Any, collab_id: str, project_id: str, expt_id: str, request: dict[str, Any],
                 grids: int) -> None:
        check_search_space(request["search_space"])
        project = director.store.get_project(collab_id, project_id)
        self.director = director
        self.keys = (collab_id, project_id, expt_id)
        self.optimization_id = f"optim_{uuid.uuid4().hex[:12]}"
        self.metric = request.get("metric") or ("accuracy" if project["action"] == "classify" else "R2")
        self.mode = request.get("optimize_mode") or ("min" if self.metric in MINIMISED else "max")
        self.tuner = request.get("tuner") or "BasicVariantGenerator"
        if self.tuner not in {"BasicVariantGenerator", "OptunaSearch", "optuna", "random"}:
            raise InvalidRequest(f"tuner {self.tuner!r}: use BasicVariantGenerator (default) or OptunaSearch",
                                 "optimization.invalid")
        self.n_samples = int(request.get("n_samples") or 3)
        self.concurrency = int(request.get("trial_concurrency") or max(grids, 1))
        self.space = request["search_space"]
        self.state = "queued"
        self.error: str | None = None

    def summary(self) -> dict[str, Any]:
        return {"optimization_id": self.optimization_id, "state": self.state, "metric": self.metric,
                "optimize_mode": self.mode, "tuner": self.tuner, "n_samples": self.n_samples,
                "trial_concurrency": self.concurrency, "error": self.error}

    def run(self) -> None:
        """Run to the end on the calling thread (the optimization runner's)."""
        try:
            self._tune()
            self.state = "completed"
        except Exception as exc:  # the request already returned: record why, for reads
            log.exception("optimization %s failed", self.optimization_id)
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"

    def _tune(self) -> None:
        from ray import tune

        self.state = "running"
        settings = self.director.settings
        host = "127.0.0.1" if settings.host in {"0.0.0.0", "::"} else settings.host
        context = {"host": host, "port": settings.port, "collab_id": self.keys[0], "project_id": self.keys[1],
                   "expt_id": self.keys[2], "metric": self.metric, "optimization_id": self.optimization_id,
                   "timeout_s": 3600.0}
        search_alg = None
        if self.tuner in {"OptunaSearch", "optuna"}:
            from ray.tune.search.optuna import OptunaSearch

            search_alg = OptunaSearch()
        log.info("optimization %s: %d trials of %s by %s, %d at a time, %s %s", self.optimization_id,
                 self.n_samples, "/".join(self.keys), self.tuner, self.concurrency, self.mode, self.metric)
        space = to_tune_space(self.space)
        storage = (settings.outputs_dir / self.keys[0] / self.keys[1] / self.keys[2] / "optimizations").resolve()
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(run_trial, ctx=context), {"cpu": 0.25}),
            param_space=space,
            tune_config=tune.TuneConfig(metric=self.metric, mode=self.mode, num_samples=self.n_samples,
                                        max_concurrent_trials=self.concurrency, search_alg=search_alg),
            run_config=tune.RunConfig(name=self.optimization_id, storage_path=str(storage), verbose=0),
        )
        results = tuner.fit()
        best = results.get_best_result(metric=self.metric, mode=self.mode) if len(results) else None
        if best is not None and best.metrics and best.metrics.get("run_id"):
            log.info("optimization %s: best %s = %s (%s), registered as champion", self.optimization_id, self.metric,
                     best.metrics.get(self.metric), best.metrics.get("run_id"))
            mlflow = self.director.mlflow
            mlflow.tracker.set_champion(mlflow.uri(self.director.store.get_collaboration(self.keys[0])),
                                        *self.keys, best.metrics["run_id"])


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
                    ray.init(address=self.settings.ray_address, num_cpus=self.settings.ray_cpus or 2,
                             include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
                             configure_logging=False)
                    started = True
                except Exception as exc:
                    log.exception("Ray could not start")
                    optimization.state, optimization.error = "failed", f"Ray could not start: {exc}"
                    continue
            optimization.run()
        if started:
            ray.shutdown()
