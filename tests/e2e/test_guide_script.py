"""The deployment guide's script, unchanged apart from host and port, against a fresh grid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from synergos_local import datasets, topology

ROOT = Path(__file__).resolve().parents[2]
BLOCK = topology.loopback_block()
TTP, W1, W2 = f"{BLOCK}.1", f"{BLOCK}.2", f"{BLOCK}.3"


def test_guide_script_runs_unchanged(tmp_path: Path):
    roots = datasets.prepare_penguins(tmp_path)
    logs = tmp_path / "logs"
    with topology.Topology() as topo:
        topo.add(topology.ttp("ttp", TTP, 5000, tmp_path / "ttp", logs))
        topo.add(topology.worker("worker_1", W1, 5000, 8020, roots["worker_1"], tmp_path / "w1", logs))
        topo.add(topology.worker("worker_2", W2, 5000, 8020, roots["worker_2"], tmp_path / "w2", logs))
        topo.wait()
        # the script takes the user's identity from the environment, without a line changed
        result = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "guide_script.py"), TTP, "5000", W1, W2],
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "SYNERGOS_CREDENTIALS": str(topo.user())},
        )
        assert result.returncode == 0, result.stdout + result.stderr
        base = f"https://{TTP}:5000"
        http = topo.client()
        collab = http.get(f"{base}/ttp/connect/collaborations/collaboration_1").json()["data"]
        assert collab["mq"]["host"] == "172.19.152.151" and collab["mq"]["ports"]["main"] == 5672
        model = http.get(
            f"{base}/ttp/train/collaborations/collaboration_1/projects/project_1/models/experiment_1/run_1"
        ).json()["data"][0]
        assert model["rounds_completed"] == 2
        assert set(model["global"]["loss_history"]["evaluate"]) == {"0", "1"}
        validations = http.get(
            f"{base}/ttp/evaluate/collaborations/collaboration_1/projects/project_1/validations/experiment_1/run_1"
        ).json()["data"]
        assert {v["key"]["participant_id"] for v in validations} == {"participant_1", "participant_2", "aggregate"}
        predictions = http.get(
            f"{base}/ttp/evaluate/participants/participant_1/collaborations/collaboration_1/predictions"
        ).json()["data"]
        assert predictions[0]["predict"]["statistics"]["n_samples"] > 0
