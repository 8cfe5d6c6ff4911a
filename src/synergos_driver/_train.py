"""Phase 2: feature alignment, training, and hyper-parameter optimization."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import _endpoints as routes
from ._base import DEFAULT_WAIT_S, BaseTask, compact
from ._session import Envelope


class AlignmentTask(BaseTask):
    """Multiple feature alignment across the participants of a project."""

    work = "alignment"  # what a long call of this task waits for

    def create(
        self, collab_id: str, project_id: str, auto_align: bool = True, auto_fix: bool = True, **kwargs: Any
    ) -> Envelope:
        """Align every participant's features (blocks until done in basic mode; shows progress).
        With `auto_fix`, the experiments' input and output sizes are fitted to the aligned data."""
        body = {"auto_align": auto_align, "auto_fix": auto_fix, **kwargs}
        return self._post_long(
            routes.alignments(collab_id, project_id), body, collab_id=collab_id, project_id=project_id
        )

    def read(self, collab_id: str, project_id: str, *, wait: bool = False, timeout: float = DEFAULT_WAIT_S) -> Envelope:
        """The project's alignments; with `wait=True`, until they are there and its alignment job is
        done (`JobFailed` if it failed, `WaitTimeout` after `timeout` seconds)."""
        return self._read(
            routes.alignments(collab_id, project_id),
            wait=wait,
            timeout=timeout,
            what="alignments",
            kinds=frozenset({"alignment"}),
            scope={"collab_id": collab_id, "project_id": project_id},
        )


class ModelTask(BaseTask):
    """Training: every (experiment, run) in scope (project, experiment, or one run)."""

    work = "training"  # what a long call of this task waits for

    def create(
        self,
        collab_id: str,
        project_id: str,
        expt_id: str | None = None,
        run_id: str | None = None,
        auto_align: bool = True,
        dockerised: bool = True,
        verbose: bool = True,
        log_msgs: bool = True,
        **kwargs: Any,
    ) -> Envelope:
        """Train (blocks until done in basic mode; shows rounds as they complete)."""
        body = {"auto_align": auto_align, "dockerised": dockerised, "verbose": verbose, "log_msgs": log_msgs, **kwargs}
        return self._post_long(
            routes.models(collab_id, project_id, expt_id, run_id), body, collab_id=collab_id, project_id=project_id
        )

    def read(
        self,
        collab_id: str,
        project_id: str,
        expt_id: str | None = None,
        run_id: str | None = None,
        *,
        wait: bool = False,
        timeout: float = DEFAULT_WAIT_S,
    ) -> Envelope:
        """The trained models in scope; with `wait=True`, until they are there and no training of the
        scope is queued or running (`JobFailed` if it failed, `WaitTimeout` after `timeout` seconds)."""
        scope = {"collab_id": collab_id, "project_id": project_id, "expt_id": expt_id, "run_id": run_id}
        return self._read(
            routes.models(collab_id, project_id, expt_id, run_id),
            wait=wait,
            timeout=timeout,
            what="models",
            kinds=frozenset({"training"}),
            scope=scope,
        )


def _optimization_job(job: Mapping[str, Any]) -> bool:
    """The optimization's own job (if the server reports one) and its trials' trainings and
    validations, whose runs are named `optim_run_*`."""
    keys = job.get("keys") or {}
    return job.get("kind") == "optimization" or str(keys.get("run_id") or "").startswith("optim_run_")


class OptimizationTask(BaseTask):
    """Hyper-parameter search (Director only): the search space becomes `n_samples` runs."""

    work = "optimization"  # what a long call of this task waits for

    def create(
        self,
        collab_id: str,
        project_id: str,
        expt_id: str,
        search_space: Mapping[str, Any],
        tuner: str | None = None,
        metric: str | None = None,
        optimize_mode: str | None = None,
        n_samples: int = 3,
        trial_concurrency: int | None = None,
        max_exec_duration: str = "1h",
        max_trial_num: int | None = None,
        searcher: str | None = None,
        **kwargs: Any,
    ) -> Envelope:
        """Start a search. `search_space` maps each hyper-parameter to a fixed value or to
        `{"_type": "choice"|"uniform"|"loguniform"|"randint", "_value": [...]}`. The older
        spellings are accepted: `searcher` for `tuner`, `max_trial_num` for `n_samples`. By default as
        many trials run at once as the cluster has grids.
        None values are left to the server's defaults; other keyword arguments pass through."""
        if searcher is not None:
            if tuner is not None and tuner != searcher:
                raise ValueError(f"tuner={tuner!r} and searcher={searcher!r} disagree; give one of them")
            tuner = searcher
        if max_trial_num is not None:
            n_samples = max_trial_num
        body = compact(
            {
                "search_space": dict(search_space),
                "tuner": tuner,
                "metric": metric,
                "optimize_mode": optimize_mode,
                "n_samples": n_samples,
                "trial_concurrency": trial_concurrency,
                "max_exec_duration": max_exec_duration,
                **kwargs,
            }
        )
        return self._post_long(
            routes.optimizations(collab_id, project_id, expt_id), body, collab_id=collab_id, project_id=project_id
        )

    def read(
        self, collab_id: str, project_id: str, expt_id: str, *, wait: bool = False, timeout: float = DEFAULT_WAIT_S
    ) -> Envelope:
        """The optimization trials of an experiment with their validation statistics; with
        `wait=True`, until there are trials, every one validated, and none of their trainings or
        validations is queued or running (`JobFailed`, `WaitTimeout` as for models). Trials Ray has
        not started yet are not known here: read again to see later batches."""
        scope = {"collab_id": collab_id, "project_id": project_id, "expt_id": expt_id}
        return self._read(
            routes.optimizations(collab_id, project_id, expt_id),
            wait=wait,
            timeout=timeout,
            what="optimization trials",
            kinds=frozenset({"optimization", "training", "validation"}),
            scope=scope,
            ready=lambda trials: bool(trials) and all(t.get("validation") for t in trials),
            run_filter=_optimization_job,
        )

    def champion(self, collab_id: str, project_id: str, expt_id: str) -> Envelope:
        """The registered model version (in MLflow) of the best trial: `{registered_model, version, run_id}`."""
        return self._get(routes.models(collab_id, project_id, expt_id) + "/champion")
