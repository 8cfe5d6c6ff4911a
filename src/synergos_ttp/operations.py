"""What a TTP does on one grid: poll and align, train, validate, predict. `run_job` carries out one
job (`synergos_core.jobs`, as `synergos_contract.planning` builds it) on a grid, whichever mode
the TTP is in: a basic TTP runs the jobs of a request in-process, a cluster TTP those it takes off
the MQ; both with the same code."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from synergos_core.alignment import Alignment, align_headers, fix_model_io
from synergos_core.checkpoints import load_state, save_state
from synergos_core.errors import ErrorCode, InvalidRequest, UpstreamError
from synergos_core.metrics import aggregate_statistics, pooled_metric
from synergos_core.model import build_model
from synergos_core.preprocessing import Preprocessing, PreprocessingOptions, Statistics
from synergos_core.preprocessing import plan as plan_preprocessing
from synergos_core.schemas import RunHyperparameters
from synergos_core.settings import FederationLimits
from synergos_core.wire import Layout

from . import federated, fedgkt
from .grid import GridNode, GridRun, WorkerClient, worker_call
from .recovery import Recovery

log = logging.getLogger(__name__)
RunKeys = tuple[str, str, str, str]


async def poll_headers(
    http: WorkerClient, nodes: list[GridNode], collab_id: str, project_id: str, action: str
) -> dict[str, dict]:
    """Each node's feature headers per meta (and schemas and summaries), never its rows."""

    async def one(node: GridNode) -> dict:
        return await worker_call(
            http, node, f"/worker/poll/{collab_id}/{project_id}", {"action": action, "tags": node.tags}
        )

    results = await asyncio.gather(*(one(node) for node in nodes))
    return {node.participant_id: result for node, result in zip(nodes, results, strict=True)}


def alignment_records(
    alignment: Alignment, polled: dict[str, dict] | None = None, options: PreprocessingOptions | None = None
) -> dict[str, dict]:
    """Per participant: spacers per meta, the superset they align to, and the preprocessing
    (options and statistics, fitted on the train splits' aggregates) every split is prepared with."""
    records = {pid: {**spacers, "superset": alignment.superset} for pid, spacers in alignment.spacers.items()}
    if polled is None:
        return records
    for pid, plan in preprocessing_plans(polled, options or PreprocessingOptions()).items():
        if pid in records:
            records[pid]["preprocessing"] = plan.model_dump()
    return records


def preprocessing_plans(polled: dict[str, dict], options: PreprocessingOptions) -> dict[str, Preprocessing]:
    """The parties' reported train aggregates, checked, combined as `options` says; {} when no party
    reported any (images, texts)."""
    parties: dict[str, Statistics | None] = {}
    for pid, result in polled.items():
        raw = result.get("statistics")
        if raw is None:
            parties[pid] = None
            continue
        try:
            parties[pid] = Statistics.model_validate(raw)
        except ValidationError:
            raise UpstreamError(f"{pid} reported malformed train statistics", ErrorCode.WORKER_BAD_STATISTICS) from None
    if not any(s is not None for s in parties.values()):
        return {}
    return plan_preprocessing(options, parties)


async def align(
    http: WorkerClient, nodes: list[GridNode], collab_id: str, project_id: str, action: str
) -> tuple[Alignment, dict[str, dict]]:
    polled = await poll_headers(http, nodes, collab_id, project_id, action)
    headers = {pid: result.get("headers", {}) for pid, result in polled.items()}
    if not any(meta.get("train") for meta in headers.values()):
        raise InvalidRequest("no participant declared train data for this project", ErrorCode.ALIGNMENT_NO_DATA)
    return align_headers(headers), polled


async def predict_spacers(
    http: WorkerClient,
    node: GridNode,
    collab_id: str,
    project_id: str,
    action: str,
    superset: dict[str, list[str]],
) -> dict[str, list[int]]:
    """Where a party's predict data lacks trained features; a feature the model never saw is drift."""
    polled = await poll_headers(http, [node], collab_id, project_id, action)
    headers = polled[node.participant_id].get("headers", {}).get("predict")
    if not headers:
        raise InvalidRequest(
            f"{node.participant_id} has no predict data for {project_id!r}", ErrorCode.PREDICTION_NO_DATA
        )
    spacers = {}
    for part in ("X", "y"):
        unknown = sorted(set(headers[part]) - set(superset[part]))
        if unknown:
            raise InvalidRequest(
                f"feature drift: predict data has {len(unknown)} feature(s) the model was "
                f"not trained on, e.g. {unknown[:5]}",
                ErrorCode.PREDICTION_FEATURE_DRIFT,
            )
        have = set(headers[part])
        spacers[part] = [i for i, name in enumerate(superset[part]) if name not in have]
    return spacers


def run_dir(outputs: Path, keys: RunKeys) -> Path:
    return outputs.joinpath(*keys)


def _algorithm(hyperparameters: dict[str, Any]) -> str:
    return RunHyperparameters.model_validate(hyperparameters).algorithm  # its default, from the one place


async def train_run(
    http: WorkerClient,
    limits: FederationLimits,
    keys: RunKeys,
    nodes: list[GridNode],
    action: str,
    model: list[dict],
    hyperparameters: dict[str, Any],
    outputs: Path,
    progress: Callable[..., None] | None = None,
    recovery: Recovery | None = None,
) -> dict[str, Any]:
    """Train one run on one grid and export it (resuming from its checkpoints as `recovery` says);
    returns the Model record's details."""
    out = run_dir(outputs, keys)
    out.mkdir(parents=True, exist_ok=True)
    recovery = recovery or Recovery()
    run = RunHyperparameters.of(hyperparameters)
    if run.keep_checkpoints is not None:  # the run's own choice over the TTP's
        recovery = replace(recovery, keep=run.keep_checkpoints)
    # the parties keep their training state for as many rounds (`synergos_worker.resume`)
    hyperparameters = {**hyperparameters, "keep_checkpoints": recovery.keep}
    algorithm = fedgkt if run.algorithm == "FedGKT" else federated
    async with GridRun(keys, nodes, action, model, hyperparameters, limits, http) as grid:
        outcome = await algorithm.train(grid, out, progress, recovery)
    save_state(outcome.state, out / "global_model.safetensors")
    federated._write_json(out / "global_loss_history.json", outcome.history)
    rel = Path(*keys)
    locals_ = {}
    for pid, hist in outcome.local_history.items():
        federated._write_json(out / f"local_loss_history_{pid}.json", hist)
        locals_[pid] = {"origin": pid, "path": str(rel / f"local_model_{pid}.safetensors"), "loss_history": hist}
    return {
        "global": {
            "origin": "ttp",
            "path": str(rel / "global_model.safetensors"),
            "loss_history": outcome.history,
            "checkpoints": str(rel / "checkpoints"),
        },
        "locals": locals_,
        "rounds_completed": outcome.rounds_completed,
        "stopped_early": outcome.stopped_early,
        # the parties' replies left out of the run, by round, with the reason (none: every one counted)
        "exclusions": [exclusion.model_dump(mode="json") for exclusion in outcome.exclusions],
    }


@dataclass
class Inference:
    """Per participant: `results` ({meta: {statistics, res_path}}, what is stored) and `parts`, the
    sums from which pooled metrics are exact (used for the aggregate, not stored)."""

    results: dict[str, dict] = field(default_factory=dict)
    parts: dict[str, dict] = field(default_factory=dict)

    def aggregate(self, meta: str) -> dict | None:
        """The sample-weighted aggregate of the parties' statistics; a regression's R2 is that of the
        pooled data (a mean of the parties' own R2 would measure each against its own mean)."""
        stats = [r[meta]["statistics"] for r in self.results.values() if r.get(meta)]
        if not stats:
            return None
        combined = aggregate_statistics(stats)
        parts = [p for p in self.parts.values() if isinstance(p, dict)]
        if "R2" in combined and parts and len(parts) == len(stats):
            pooled = pooled_metric(parts, "regress")
            if pooled is not None:
                combined["R2"] = pooled
        return {meta: {"statistics": combined, "participants": sorted(self.results)}}


async def infer_run(
    http: WorkerClient,
    limits: FederationLimits,
    keys: RunKeys,
    nodes: list[GridNode],
    action: str,
    model: list[dict],
    hyperparameters: dict[str, Any],
    outputs: Path,
    meta: str,
) -> Inference:
    """Run the trained global model on each node's own `meta` data; statistics per participant."""
    gkt = _algorithm(hyperparameters) == "FedGKT"  # its global model holds the server layers only
    expected = None if gkt else Layout.of(build_model(model).state_dict())
    state = load_state(run_dir(outputs, keys) / "global_model.safetensors", expected)
    async with GridRun(keys, nodes, action, model, hyperparameters, limits, http) as grid:
        if gkt:  # each party runs its own extractor
            states = fedgkt.participant_states(run_dir(outputs, keys), state, list(grid.channels))
            replies = await federated.infer_each(grid, states, meta)
        else:
            replies = await federated.infer(grid, state, meta)
    inference = Inference()
    for pid, reply in replies.items():
        if reply.get("statistics") is not None:
            inference.results[pid] = {meta: {"statistics": reply["statistics"], "res_path": reply.get("res_path")}}
            inference.parts[pid] = reply.get("parts") or {}
    return inference


# ---- one job, on one grid ----


def job_nodes(job: dict[str, Any], grid: int) -> list[GridNode]:
    """Grid `grid` of the job (fewer grids than TTPs: they share the nodes), narrowed to the
    participants the job names, if any."""
    grids = job["grids"]
    if not grids:
        raise ValueError("job has no grid")
    participants = job["parameters"].get("participants")
    return [
        GridNode(**node)
        for node in grids[grid % len(grids)]
        if not participants or node["participant_id"] in participants
    ]


async def run_job(
    http: WorkerClient,
    job: dict[str, Any],
    grid: int,
    limits: FederationLimits,
    outputs: Path,
    progress: Callable[..., None] | None = None,
    recovery: Recovery | None = None,
) -> dict[str, Any]:
    """Carry out one job on grid `grid`; returns its outcome, as `planning.archive` stores it:
    preprocess: {alignments, experiments (resized with auto_fix)}; train: the Model's details
    (`recovery`: its checkpoints, and whether it resumes from them); evaluate: {meta, results,
    aggregate, spacers}."""
    params, keys = job["parameters"], job["keys"]
    nodes = job_nodes(job, grid)
    c, p = keys["collab_id"], keys["project_id"]
    if job["process"] == "preprocess":
        alignment, polled = await align(http, nodes, c, p, params["action"])
        options = PreprocessingOptions.resolve(params.get("preprocessing"))
        experiments = {}
        if params.get("auto_fix", True):
            width, classes = len(alignment.superset["X"]), len(alignment.superset["y"])
            experiments = {
                e: fix_model_io(model, width, classes, params["action"])
                for e, model in params.get("experiments", {}).items()
            }
        return {"alignments": alignment_records(alignment, polled, options), "experiments": experiments}
    run_keys = (c, p, keys["expt_id"], keys["run_id"])
    if job["process"] == "train":
        return await train_run(
            http,
            limits,
            run_keys,
            nodes,
            params["action"],
            params["model"],
            params["hyperparameters"],
            outputs,
            progress,
            recovery,
        )
    meta = params.get("meta", "evaluate")
    if meta == "predict" and params.get("superset"):  # predict data must fit the trained layout
        for node in nodes:
            node.alignment["predict"] = await predict_spacers(http, node, c, p, params["action"], params["superset"])
    inference = await infer_run(
        http, limits, run_keys, nodes, params["action"], params["model"], params["hyperparameters"], outputs, meta
    )
    return {
        "meta": meta,
        "results": inference.results,
        "aggregate": inference.aggregate(meta),
        "spacers": {n.participant_id: n.alignment.get("predict") for n in nodes},
    }
