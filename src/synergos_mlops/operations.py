"""MLflow operations as plain JSON records, and how each is applied with an `MlflowClient`.

An operation is built (and its inputs normalised) when the caller enqueues it, so it can be
journaled and replayed after a restart; it is applied later by the Tracker's worker. Applying
the same operation twice leaves MLflow as applying it once: experiments are found by name,
runs by the `synergos.run_key` tag, metrics carry the timestamp taken at enqueue time (MLflow
drops exact duplicates), and a model version records the operation that created it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote as url_quote

from .naming import (
    CHAMPION_ALIAS,
    FAILURE_TAG,
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
    OP_TAG,
    RUN_KEY_TAG,
    experiment_name,
    metric_name,
    metric_value,
    param_key,
    param_value,
    quote,
    registered_model_name,
    run_key,
    run_keys,
    tag_value,
)

log = logging.getLogger("synergos_mlops.tracking")

Op = dict[str, Any]

# error codes (mlflow.protos.databricks_pb2 names) that retrying will not fix
PERMANENT_CODES = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_DOES_NOT_EXIST",
        "RESOURCE_ALREADY_EXISTS",
        "INVALID_STATE",
        "BAD_REQUEST",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "ENDPOINT_NOT_FOUND",
        "FEATURE_DISABLED",
        "NOT_IMPLEMENTED",
        "MALFORMED_REQUEST",
    }
)
# error codes that mean "the store is there but busy": wait for it like for an outage
UNAVAILABLE_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"})


class PermanentError(Exception):
    """The operation cannot succeed however often it is retried (e.g. no such run)."""


# -- building (caller's thread: cheap, never touches MLflow) -----------------------------------
def new_op(kind: str, uri: str, keys: Mapping[str, Any], **fields: Any) -> Op:
    return {
        "kind": kind,
        "id": uuid.uuid4().hex,
        "ts": int(time.time() * 1000),
        "uri": uri,
        "keys": run_keys(keys),
        **fields,
    }


def params_of(params: Mapping[str, Any] | None) -> dict[str, str]:
    return {param_key(k): param_value(v) for k, v in (params or {}).items()}


def tags_of(tags: Mapping[str, Any] | None) -> dict[str, str]:
    return {param_key(k): tag_value(v) for k, v in (tags or {}).items()}


LOSS_PHASES = frozenset({"train", "evaluate", "server"})


def training_metrics(history: Mapping[str, Any] | None, local_history: Mapping[str, Any] | None) -> list[list[Any]]:
    """`[name, value, step]` per round: `global_<phase>_loss` for the loss histories (`train`,
    `evaluate`, FedGKT's `server`), `global_<name>` for the others (e.g. `global_evaluate_accuracy`,
    `global_evaluate_r2`) and `<participant>_local_loss`."""
    out: list[list[Any]] = []
    for phase, series in (history or {}).items():
        name = metric_name("global", phase, "loss") if phase in LOSS_PHASES else metric_name("global", phase)
        out += [[name, v, step] for step, v in _rounds(series, phase)]
    for participant, series in (local_history or {}).items():
        name = metric_name(participant, "local_loss")
        out += [[name, v, step] for step, v in _rounds(series, participant)]
    return out


def validation_metrics(
    per_participant: Mapping[str, Any] | None, aggregate: Mapping[str, Any] | None
) -> list[list[Any]]:
    """`[name, value, 0]`: `<participant>_<stat>`, lists as `<participant>_<stat>_class_<i>`,
    nested dicts joined with `_`, and the aggregate as `aggregate_<stat>…`."""
    out: list[list[Any]] = []
    for participant, stats in (per_participant or {}).items():
        _flatten(out, str(participant), stats)
    if aggregate:
        _flatten(out, "aggregate", aggregate)
    return out


def _rounds(series: Any, label: object) -> Iterator[tuple[int, float]]:
    if not isinstance(series, Mapping):
        log.warning("MLflow: ignoring loss history %r: expected {round: loss}, got %s", label, type(series).__name__)
        return
    for rnd, value in series.items():
        number = metric_value(value)
        if number is None:
            continue
        try:
            step = int(rnd)
        except (TypeError, ValueError):
            try:
                step = int(float(rnd))
            except (TypeError, ValueError):
                log.warning("MLflow: ignoring loss %r of %r: round is not a number", rnd, label)
                continue
        yield step, number


def _flatten(out: list[list[Any]], prefix: str, value: Any) -> None:
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # numpy arrays and scalars
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(out, f"{prefix}_{key}", item)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _flatten(out, f"{prefix}_class_{index}", item)
    else:
        number = metric_value(value)
        if number is not None:
            out.append([metric_name(prefix), number, 0])


# -- applying (worker thread) -------------------------------------------------------------------
def apply(client: Any, op: Op) -> None:
    try:
        handler = _HANDLERS[op["kind"]]
    except KeyError:
        raise PermanentError(f"unknown operation {op.get('kind')!r}") from None
    handler(client, op)


def error_code(exc: BaseException) -> str | None:
    code = getattr(exc, "error_code", None)
    return code if isinstance(code, str) else None


def artifact_location(uri: str, experiment: str) -> str | None:
    """`file://<dir of the sqlite db>/artifacts/<experiment>` for a sqlite store; else None
    (a tracking server picks its own, proxied, location)."""
    if not uri.startswith("sqlite:///"):
        return None
    db_path = Path(uri[len("sqlite:///") :].split("?", 1)[0]).resolve()
    return "file://" + url_quote(str(db_path.parent / "artifacts" / experiment), safe="/>")


def _apply_start_run(client: Any, op: Op) -> None:
    from mlflow.entities import Param, RunTag

    run, created = _ensure_run(client, op)
    run_id = run.info.run_id
    if not created and run.info.status != "RUNNING":  # trained again
        client.update_run(run_id, status="RUNNING")
        if FAILURE_TAG in run.data.tags:
            client.delete_tag(run_id, FAILURE_TAG)
    existing = run.data.params
    params = []
    for key, value in sorted(op.get("params", {}).items()):
        if key not in existing:
            params.append(Param(key, value))
        elif existing[key] != value:
            log.warning(
                "MLflow run %s already has param %s=%r; keeping it, not %r",
                run_key(op["keys"]),
                key,
                existing[key],
                value,
            )
    _log_batch(client, run_id, params=params, tags=[RunTag(k, v) for k, v in sorted(op.get("tags", {}).items())])


def _apply_log_training(client: Any, op: Op) -> None:
    run, _ = _ensure_run(client, op)
    run_id = run.info.run_id
    _log_batch(client, run_id, metrics=_metrics(op))
    for artifact in op.get("artifacts", []):
        path = Path(artifact)
        if path.is_dir():
            client.log_artifacts(run_id, str(path), f"artifacts/{path.name}")
        elif path.is_file():
            client.log_artifact(run_id, str(path), "artifacts")
        else:
            log.warning("MLflow run %s: artifact %s no longer exists; skipped", run_key(op["keys"]), path)
    model = Path(op["model"]) if op.get("model") else None
    if model is not None and model.is_file():
        client.log_artifact(run_id, str(model), "model")
        _register_model(client, op, run, f"{run.info.artifact_uri.rstrip('/')}/model/{model.name}")
    elif model is not None:
        log.warning("MLflow run %s: model file %s no longer exists; not registered", run_key(op["keys"]), model)
    client.set_terminated(run_id, "FINISHED", end_time=op["ts"])


def _apply_fail_run(client: Any, op: Op) -> None:
    from mlflow.entities import RunTag

    run, _ = _ensure_run(client, op)
    _log_batch(client, run.info.run_id, tags=[RunTag(FAILURE_TAG, tag_value(op.get("reason", "")))])
    client.set_terminated(run.info.run_id, "FAILED", end_time=op["ts"])


def _apply_log_validation(client: Any, op: Op) -> None:
    run, created = _ensure_run(client, op)
    _log_batch(client, run.info.run_id, metrics=_metrics(op))
    if created:  # validated before its training was recorded: never leave it RUNNING
        client.set_terminated(run.info.run_id, "FINISHED", end_time=op["ts"])


def _apply_set_champion(client: Any, op: Op) -> None:
    keys = op["keys"]
    name = experiment_name(keys["collab_id"], keys["project_id"], keys["expt_id"])
    experiment = client.get_experiment_by_name(name)
    run = _find_run(client, experiment.experiment_id, run_key(keys)) if experiment else None
    if run is None:
        raise PermanentError(f"no MLflow run for {run_key(keys)}")
    model = registered_model_name(keys["collab_id"], keys["project_id"], keys["expt_id"])
    versions = client.search_model_versions(f"name={quote(model)} and run_id={quote(run.info.run_id)}")
    if not versions:
        raise PermanentError(f"no model version of {model} was registered from run {run_key(keys)}")
    latest = max(versions, key=lambda v: int(v.version))
    client.set_registered_model_alias(model, CHAMPION_ALIAS, str(latest.version))


_HANDLERS = {
    "start_run": _apply_start_run,
    "log_training": _apply_log_training,
    "fail_run": _apply_fail_run,
    "log_validation": _apply_log_validation,
    "set_champion": _apply_set_champion,
}


# -- building blocks ----------------------------------------------------------------------------
def _ensure_experiment(client: Any, uri: str, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location(uri, name))
        except Exception as exc:  # another writer created it first (reliability case 28)
            if error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def _find_run(client: Any, experiment_id: str, key: str) -> Any | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_KEY_TAG}` = {quote(key)}",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    return runs[0] if runs else None


def _ensure_run(client: Any, op: Op) -> tuple[Any, bool]:
    """The run of `op["keys"]`, created (RUNNING) if absent; and whether it was just created."""
    keys = op["keys"]
    experiment_id = _ensure_experiment(
        client, op["uri"], experiment_name(keys["collab_id"], keys["project_id"], keys["expt_id"])
    )
    key = run_key(keys)
    run = _find_run(client, experiment_id, key)
    if run is not None:
        return run, False
    tags = {RUN_KEY_TAG: key, **{f"synergos.{field}": value for field, value in keys.items()}}
    run = client.create_run(experiment_id, start_time=op["ts"], tags=tags, run_name=keys["run_id"])
    return run, True


def _register_model(client: Any, op: Op, run: Any, source: str) -> None:
    keys = op["keys"]
    name = registered_model_name(keys["collab_id"], keys["project_id"], keys["expt_id"])
    try:
        client.create_registered_model(
            name,
            description=f"Global models of Synergos experiment "
            f"{experiment_name(keys['collab_id'], keys['project_id'], keys['expt_id'])}",
        )
    except Exception as exc:
        if error_code(exc) != "RESOURCE_ALREADY_EXISTS":
            raise
    run_id = run.info.run_id
    versions = client.search_model_versions(f"name={quote(name)} and run_id={quote(run_id)}")
    if any((v.tags or {}).get(OP_TAG) == op["id"] for v in versions):
        return  # this operation registered it before a restart
    client.create_model_version(
        name, source, run_id=run_id, tags={OP_TAG: op["id"], RUN_KEY_TAG: run_key(keys)}, await_creation_for=0
    )


def _metrics(op: Op) -> list[Any]:
    from mlflow.entities import Metric

    return [Metric(name, float(value), op["ts"], int(step)) for name, value, step in op.get("metrics", [])]


def _log_batch(
    client: Any, run_id: str, *, metrics: Iterable[Any] = (), params: Iterable[Any] = (), tags: Iterable[Any] = ()
) -> None:
    for chunk in _chunks(list(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=chunk)
    for chunk in _chunks(list(params), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=chunk)
    for chunk in _chunks(list(tags), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, tags=chunk)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
