"""Phase 2 and 3 work, planned once for both modes.

A request (align, train, validate, predict) becomes a list of `PlannedJob`s: what runs, in which
order (`after` names what must finish first, `marks` what the job completes), and how to build its
job (`synergos_core.jobs.make_job`: process, keys, grids, parameters) from the store as it is when
the job starts. Whatever cannot work is refused here, before any Worker is touched: an unknown id,
a project nobody joined, a recipe that cannot train (`check_combination`), a run without a model.

Two thin runners carry the plans out: the basic TTP runs each job in-process on its grid, with the
same code a cluster TTP runs for a queued job (`synergos_ttp.operations.run_job`); the Director
publishes the jobs to the MQ in dependency order. What a job produced is archived into the store
by `archive`, whichever mode ran it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from synergos_core.errors import ErrorCode, InvalidRequest, NotFound
from synergos_core.jobs import build_grids, make_job
from synergos_core.model import check_combination, validate_run
from synergos_core.preprocessing import PreprocessingOptions
from synergos_core.records import AGGREGATE, Alignment, Project, Record, Run
from synergos_core.schemas import RunHyperparameters

from .schemas import RunCreate, recheck
from .store import Store, Written

__all__ = [
    "Mark",
    "Pending",
    "PlannedJob",
    "RunTracking",
    "alignment_mark",
    "training_mark",
    "plan_alignment",
    "plan_training",
    "plan_validation",
    "plan_prediction",
    "accept_run",
    "revise_run",
    "archive",
    "training_started",
    "training_failed",
    "completion_line",
    "run_keys",
]

Mark = tuple[str, ...]
Pending = Callable[[Mark], bool]  # is a job with this mark still open? (cluster mode; basic: never)


def alignment_mark(collab_id: str, project_id: str) -> Mark:
    return ("alignment", collab_id, project_id)


def training_mark(collab_id: str, project_id: str, expt_id: str, run_id: str) -> Mark:
    return ("training", collab_id, project_id, expt_id, run_id)


def _nothing_pending(_mark: Mark) -> bool:
    return False


@dataclass(frozen=True)
class PlannedJob:
    """One job of a request, and how to build it when its turn comes."""

    process: str  # preprocess | train | evaluate (the MQ's queues)
    kind: str  # alignment | training | validation | prediction (the job board's)
    keys: dict[str, str]
    build: Callable[[], dict[str, Any]]  # the job, from the store as it is when it starts
    after: tuple[Mark, ...] = ()
    marks: tuple[Mark, ...] = ()
    rounds: int | None = None


def run_keys(keys: Mapping[str, str]) -> dict[str, str]:
    """The (collab, project, experiment, run) of a job's keys."""
    return {name: keys[name] for name in ("collab_id", "project_id", "expt_id", "run_id")}


def _classes(project: Project, alignments: list[Alignment]) -> int | None:
    """How many classes the aligned targets have (classification), if an alignment says."""
    if project.action != "classify":
        return None
    superset = next((a.superset for a in alignments if a.superset is not None), None)
    return len(superset.y) if superset is not None else None


def _registered(grid: list[dict], participant_id: str, project_id: str) -> None:
    if participant_id not in {entry["participant_id"] for entry in grid}:
        raise NotFound(
            f"participant {participant_id!r} is not registered to {project_id!r}", ErrorCode.REGISTRATION_NOT_FOUND
        )


# ---- phase 2A: alignment ----


def plan_alignment(
    store: Store, collab_id: str, project_id: str, auto_fix: bool = True, preprocessing: dict[str, Any] | None = None
) -> PlannedJob:
    """Poll every party's headers, align them, fit the preprocessing; with `auto_fix`, resize the
    project's models to the aligned data."""
    project = store.get_project(collab_id, project_id)
    options = PreprocessingOptions.resolve(project.details(), preprocessing)
    build_grids(store.project_grid(collab_id, project_id), [])  # refuse a project nobody joined, now
    keys = {"collab_id": collab_id, "project_id": project_id}

    def build() -> dict[str, Any]:
        experiments = {e.expt_id: e.layers() for e in store.list_experiments(collab_id, project_id)}
        grids = build_grids(store.project_grid(collab_id, project_id), [])
        return make_job(
            "preprocess",
            keys,
            grids,
            {
                "action": project.action,
                "auto_fix": auto_fix,
                "experiments": experiments,
                "preprocessing": options.model_dump(),
            },
        )

    mark = alignment_mark(collab_id, project_id)
    return PlannedJob("preprocess", "alignment", keys, build, after=(mark,), marks=(mark,))


# ---- phase 2B: training ----


def plan_training(
    store: Store,
    collab_id: str,
    project_id: str,
    expt_id: str | None = None,
    run_id: str | None = None,
    auto_align: bool = True,
    pending: Pending = _nothing_pending,
) -> list[PlannedJob]:
    """Train every (experiment, run) in scope, after an alignment if none is stored or pending
    (`auto_align`). A recipe that cannot train is refused for the whole request."""
    project = store.get_project(collab_id, project_id)
    pairs = store.run_scope(collab_id, project_id, expt_id, run_id)
    grid = store.project_grid(collab_id, project_id)
    build_grids(grid, [])  # refuse a project nobody joined, now
    planned: list[PlannedJob] = []
    aligning = pending(alignment_mark(collab_id, project_id))
    if auto_align and not aligning and not store.list_alignments(collab_id, project_id):
        planned.append(plan_alignment(store, collab_id, project_id))
        aligning = True
    classes = None if aligning else _classes(project, store.list_alignments(collab_id, project_id))
    for expt, run in pairs:  # an alignment still to come may resize the model: checked again then
        check_combination(expt.layers(), run.hyperparameter_dict(), project.action, classes)
    for expt, run in pairs:
        keys = {"collab_id": collab_id, "project_id": project_id, "expt_id": expt.expt_id, "run_id": run.run_id}
        mark = training_mark(*keys.values())
        planned.append(
            PlannedJob(
                "train",
                "training",
                keys,
                _training_job(store, keys),
                after=(alignment_mark(collab_id, project_id), mark),
                marks=(mark,),
                rounds=run.hyperparameters.rounds,
            )
        )
    return planned


def _run_parameters(store: Store, keys: Mapping[str, str]) -> tuple[Project, list[Alignment], dict[str, Any]]:
    c, p, e, r = run_keys(keys).values()
    project = store.get_project(c, p)
    expt = store.get_experiment(c, p, e)
    run = store.get_run(c, p, e, r)
    alignments = store.list_alignments(c, p)
    params = {"action": project.action, "model": expt.layers(), "hyperparameters": run.hyperparameter_dict()}
    return project, alignments, params


def _training_job(store: Store, keys: dict[str, str]) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        project, alignments, params = _run_parameters(store, keys)
        check_combination(params["model"], params["hyperparameters"], project.action, _classes(project, alignments))
        grids = build_grids(store.project_grid(keys["collab_id"], keys["project_id"]), alignments)
        return make_job("train", keys, grids, params)

    return build


# ---- phase 3: validation and prediction ----


def plan_validation(
    store: Store,
    collab_id: str,
    project_id: str,
    expt_id: str | None = None,
    run_id: str | None = None,
    participant_id: str | None = None,
    pending: Pending = _nothing_pending,
) -> list[PlannedJob]:
    """Validate every trained (or training) run in scope on each party's evaluate data, or on one
    party's; a run with no model and none coming is refused."""
    store.get_project(collab_id, project_id)
    pairs = store.run_scope(collab_id, project_id, expt_id, run_id)
    grid = store.project_grid(collab_id, project_id)
    build_grids(grid, [])
    if participant_id is not None:
        _registered(grid, participant_id, project_id)
    planned = []
    for expt, run in pairs:
        e, r = expt.expt_id, run.run_id
        if not pending(training_mark(collab_id, project_id, e, r)) and not store.list_models(
            collab_id, project_id, e, r
        ):
            raise InvalidRequest(f"run {r!r} has no trained model yet; train it first", ErrorCode.MODEL_NOT_TRAINED)
        planned.append(
            _evaluation(store, collab_id, project_id, e, r, "evaluate", [participant_id] if participant_id else None)
        )
    return planned


def plan_prediction(
    store: Store,
    participant_id: str,
    collab_id: str,
    tags: dict[str, list[list[str]]],
    project_id: str | None = None,
    expt_id: str | None = None,
    run_id: str | None = None,
    pending: Pending = _nothing_pending,
) -> list[PlannedJob]:
    """Predict with every trained (or training) run in scope, for each project named (or keyed in
    `tags`), on the participant's predict data; given tags replace its predict tags first."""
    projects = [project_id] if project_id else sorted(tags)
    if not projects:
        raise InvalidRequest("name a project, or give predict tags keyed by project", ErrorCode.PREDICTION_NO_PROJECT)
    planned = []
    for p in projects:
        store.get_project(collab_id, p)
        _registered(store.project_grid(collab_id, p), participant_id, p)
        if p in tags:
            store.update_tags(collab_id, p, participant_id, {"predict": tags[p]})
        for expt, run in store.run_scope(collab_id, p, expt_id, run_id):
            e, r = expt.expt_id, run.run_id
            if pending(training_mark(collab_id, p, e, r)) or store.list_models(collab_id, p, e, r):
                planned.append(_evaluation(store, collab_id, p, e, r, "predict", [participant_id]))
    return planned


def _evaluation(
    store: Store, collab_id: str, project_id: str, expt_id: str, run_id: str, meta: str, participants: list[str] | None
) -> PlannedJob:
    keys = {"collab_id": collab_id, "project_id": project_id, "expt_id": expt_id, "run_id": run_id}
    if participants:
        keys["participant_id"] = participants[0]

    def build() -> dict[str, Any]:
        _, alignments, params = _run_parameters(store, keys)
        params.update(meta=meta, participants=participants)
        if meta == "predict":  # predict data must fit the trained layout: the runner checks for drift
            own = next((a for a in alignments if participants and a.participant_id == participants[0]), None)
            params["superset"] = own.superset.model_dump() if own is not None and own.superset else None
        grids = build_grids(store.project_grid(collab_id, project_id), alignments)
        return make_job("evaluate", keys, grids, params)

    return PlannedJob(
        "evaluate",
        "validation" if meta == "evaluate" else "prediction",
        keys,
        build,
        after=(alignment_mark(collab_id, project_id), training_mark(collab_id, project_id, expt_id, run_id)),
    )


# ---- runs: what a run may be ----


def accept_run(
    store: Store,
    collab_id: str,
    project_id: str,
    expt_id: str,
    run_id: str,
    hyperparameters: RunHyperparameters,
    optimization_id: str | None = None,
) -> Written[Run]:
    """Store a run whose optimizer, scheduler and criterion build, whose every name something reads,
    and which can train the experiment's model for the project's task; else a 422, nothing stored."""
    hp = hyperparameters.model_dump(mode="json")
    validate_run(hp)
    project = store.get_project(collab_id, project_id)
    experiment = store.get_experiment(collab_id, project_id, expt_id)
    check_combination(experiment.layers(), hp, project.action, None)
    details = {**hp, **({"optimization_id": optimization_id} if optimization_id else {})}
    return store.create_run(collab_id, project_id, expt_id, run_id, details)


def revise_run(
    store: Store, collab_id: str, project_id: str, expt_id: str, run_id: str, changes: dict[str, Any]
) -> Run:
    """Merge `changes` into the run; the merged run is checked as a new one would be."""

    def validate(merged: dict[str, Any]) -> dict[str, Any]:
        optimization_id = merged.pop("optimization_id", None)
        hp = recheck(RunCreate, merged, {"run_id": run_id})
        validate_run(hp)
        return {**hp, **({"optimization_id": optimization_id} if optimization_id else {})}

    return store.update_run(collab_id, project_id, expt_id, run_id, changes, validate)


# ---- archiving what a job produced ----


class RunTracking(Protocol):
    """What is recorded in MLflow of a run (`synergos_mlops.records.RunRecorder`)."""

    def uri(self, collaboration: Mapping[str, Any]) -> str: ...

    def started(self, uri: str, keys: Mapping[str, str], run: Mapping[str, Any]) -> None: ...

    def trained(self, uri: str, keys: Mapping[str, str], details: Mapping[str, Any]) -> None: ...

    def failed(self, uri: str, keys: Mapping[str, str], reason: str) -> None: ...

    def validated(
        self,
        uri: str,
        keys: Mapping[str, str],
        results: Mapping[str, Any],
        aggregate: Mapping[str, Any] | None,
        meta: str = "evaluate",
    ) -> None: ...


def _uri(store: Store, tracking: RunTracking, collab_id: str) -> str:
    return tracking.uri(store.get_collaboration(collab_id).details())


def training_started(store: Store, tracking: RunTracking, keys: Mapping[str, str]) -> None:
    """Open the run's MLflow run with its hyper-parameters (and the optimization it is a trial of)."""
    run = store.get_run(*run_keys(keys).values())
    tracking.started(_uri(store, tracking, keys["collab_id"]), run_keys(keys), run.details())


def training_failed(store: Store, tracking: RunTracking, keys: Mapping[str, str], reason: str) -> None:
    tracking.failed(_uri(store, tracking, keys["collab_id"]), run_keys(keys), reason)


def archive(
    store: Store, process: str, keys: Mapping[str, str], outcome: Mapping[str, Any], tracking: RunTracking | None = None
) -> list[Record]:
    """Store what a job produced (alignments and resized models, a trained model, validations or
    predictions) and record it in MLflow; returns the records written."""
    c, p = keys["collab_id"], keys["project_id"]
    written: list[Record] = []
    if process == "preprocess":
        for pid, details in (outcome.get("alignments") or {}).items():
            written.append(store.put_alignment(c, p, pid, details))
        for expt_id, model in (outcome.get("experiments") or {}).items():
            store.set_experiment_model(c, p, expt_id, model)
        return written
    e, r = keys["expt_id"], keys["run_id"]
    if process == "train":
        written.append(store.put_model(c, p, e, r, dict(outcome)))
        if tracking is not None:
            tracking.trained(_uri(store, tracking, c), run_keys(keys), outcome)
        return written
    meta = outcome.get("meta", "evaluate")
    results = outcome.get("results") or {}
    for pid, details in results.items():
        if meta == "predict":
            _keep_predict_spacers(store, c, p, pid, (outcome.get("spacers") or {}).get(pid))
            written.append(store.put_prediction(pid, c, p, e, r, details))
        else:
            written.append(store.put_validation(c, p, e, r, pid, details))
    whole = meta == "evaluate" and outcome.get("aggregate") and "participant_id" not in keys
    if whole:
        written.append(store.put_validation(c, p, e, r, AGGREGATE, outcome["aggregate"]))
    if meta == "evaluate" and tracking is not None:
        tracking.validated(_uri(store, tracking, c), run_keys(keys), results, outcome["aggregate"] if whole else None)
    return written


def _keep_predict_spacers(
    store: Store, collab_id: str, project_id: str, participant_id: str, spacers: dict[str, Any] | None
) -> None:
    """Where the party's predict data lacks trained features, beside its other spacers."""
    if spacers is None:
        return
    current = next(
        (a for a in store.list_alignments(collab_id, project_id) if a.participant_id == participant_id), None
    )
    if current is not None:
        store.put_alignment(collab_id, project_id, participant_id, {**current.details(), "predict": spacers})


def completion_line(process: str, keys: Mapping[str, str], outcome: Mapping[str, Any]) -> str:
    """`VALIDATION COMPLETED - <project_id>/<expt_id>/<run_id>`: the line a service logs for a job done."""
    if process == "preprocess":
        return f"ALIGNMENT COMPLETED - {keys['project_id']}"
    where = f"{keys['project_id']}/{keys['expt_id']}/{keys['run_id']}"
    if process == "train":
        return f"TRAINING COMPLETED - {where}"
    return f"{'PREDICTION' if outcome.get('meta') == 'predict' else 'VALIDATION'} COMPLETED - {where}"
