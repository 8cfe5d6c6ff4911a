"""A cluster TTP: consumes jobs from the Synergos MQ, runs each on its grid (node K of every
participant), publishes the outcome, and keeps no metadata of its own."""
from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import httpx

from synergos_core.alignment import fix_model_io
from synergos_core.errors import SynergosError
from synergos_core.preprocessing import PreprocessingOptions
from synergos_core.settings import TTPSettings

from . import operations
from .grid import GridNode

log = logging.getLogger(__name__)


class JobRunner:
    """Turns one job into the operations a basic TTP would run, on this TTP's grid."""

    def __init__(self, settings: TTPSettings) -> None:
        self.settings = settings
        self.done = 0
        self.current: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"mode": "cluster", "grid": self.settings.grid, "jobs_done": self.done, "current": self.current}

    def __call__(self, job: dict) -> dict:
        keys = job["keys"]
        with self._lock:
            self.current = {"job_id": job["job_id"], "process": job["process"], "keys": keys}
        log.info("job %s: %s %s", job["job_id"], job["process"], "/".join(keys.values()))
        try:
            return asyncio.run(self._run(job))
        finally:
            with self._lock:
                self.current = None
                self.done += 1

    def _nodes(self, job: dict) -> list[GridNode]:
        grids = job["grids"]
        if not grids:
            raise ValueError("job has no grid")
        grid = grids[self.settings.grid % len(grids)]  # fewer grids than TTPs: share the nodes
        participants = job["parameters"].get("participants")
        return [GridNode(**node) for node in grid if not participants or node["participant_id"] in participants]

    async def _run(self, job: dict) -> dict:
        params, keys = job["parameters"], job["keys"]
        nodes = self._nodes(job)
        c, p = keys["collab_id"], keys["project_id"]
        limits = self.settings.federation
        async with httpx.AsyncClient(timeout=httpx.Timeout(self.settings.http_timeout_s, connect=5.0)) as http:
            if job["process"] == "preprocess":
                alignment, polled = await operations.align(http, nodes, c, p, params["action"])
                options = PreprocessingOptions.resolve(params.get("preprocessing"))
                experiments = {}
                if params.get("auto_fix", True):
                    width, classes = len(alignment.superset["X"]), len(alignment.superset["y"])
                    experiments = {e: fix_model_io(model, width, classes, params["action"])
                                   for e, model in params.get("experiments", {}).items()}
                return {"alignments": operations.alignment_records(alignment, polled, options),
                        "experiments": experiments}
            run_keys = (c, p, keys["expt_id"], keys["run_id"])
            if job["process"] == "train":
                return await operations.train_run(http, limits, run_keys, nodes, params["action"], params["model"],
                                                  params["hyperparameters"], self.settings.outputs_dir)
            meta = params.get("meta", "evaluate")
            if meta == "predict":
                for node in nodes:
                    node.alignment["predict"] = await operations.predict_spacers(
                        http, node, c, p, params["action"], params["superset"])
            inference = await operations.infer_run(http, limits, run_keys, nodes, params["action"], params["model"],
                                                 params["hyperparameters"], self.settings.outputs_dir, meta)
            return {"meta": meta, "results": inference.results, "aggregate": inference.aggregate(meta),
                    "spacers": {n.participant_id: n.alignment.get("predict") for n in nodes}}


def permanent(exc: BaseException) -> bool:
    """Bad input never gets better by retrying; a node that is down might."""
    return isinstance(exc, SynergosError) and exc.status < 500
