"""Job progress: whatever fails inside a job, the job ends failed with a readable reason."""

import pytest

from synergos_contract.jobs import JobBoard
from synergos_core.errors import UpstreamError


@pytest.mark.parametrize(
    "error, reason",
    [
        (
            UpstreamError("participant_1's node is unreachable", "worker.unreachable"),
            "participant_1's node is unreachable",
        ),
        # internal text stays in the log: the job shows internal.error's public text and the id
        (RuntimeError("disk full"), "the service failed unexpectedly; its log holds the details under correlation id "),
    ],
)
def test_a_failing_job_is_marked_failed_and_the_error_goes_on(error, reason):
    board = JobBoard()
    job = board.start("training", {"collab_id": "c", "project_id": "p"}, rounds=3)
    with pytest.raises(type(error)), board.failing(job):
        raise error
    (listed,) = board.list(collab_id="c")
    assert listed["state"] == "failed" and listed["detail"].startswith(reason)
    assert "disk full" not in listed["detail"]
