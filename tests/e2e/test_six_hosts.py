"""The deployment guide on six hosts (network namespaces), each running its image's command."""

from __future__ import annotations

import os

from tests.rehearsal.six_hosts import rehearse


def test_the_guide_runs_across_six_hosts(tmp_path):
    assert os.geteuid() == 0, "the six-host rehearsal creates network namespaces and needs root"
    outcome = rehearse(tmp_path, tmp_path / "logs")
    kinds = sorted(j["kind"] for j in outcome["jobs"])
    assert kinds == ["alignment", "prediction", "training", "validation"]
    assert all(j["state"] == "completed" for j in outcome["jobs"]), outcome["jobs"]
    assert {v["key"]["participant_id"] for v in outcome["validations"]} == {
        "participant_1",
        "participant_2",
        "aggregate",
    }
    assert outcome["predictions"][0]["predict"]["statistics"]["n_samples"] > 0
