"""The Director's job journal: what a job waits for is written to its store as it is accepted, so
a restarted Director tracks its open jobs again, publishes the waiting ones whose dependency is
done, and fails those whose dependency failed. (A real restart: tests/e2e/test_cluster_durability.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from synergos_contract.store import Store
from synergos_core.errors import NotFound
from synergos_director import journal as journal_module
from synergos_director.journal import Journal, JournaledJob, rebuild
from synergos_director.ledger import Entry, Ledger

from . import test_planning
from .test_planning import C, E, P, _aligned, _run

store = test_planning.store  # the fixture: a collaboration whose project two parties joined

ALIGNMENT = ("alignment", C, P)


def _entry(job_id: str, kind: str, process: str, marks: list[tuple[str, ...]] = ()) -> Entry:  # type: ignore[assignment]
    keys = {"collab_id": C, "project_id": P, **({"expt_id": E, "run_id": "r1"} if kind != "alignment" else {})}
    return Entry(job_id, process, None, lambda: None, marks=list(marks), kind=kind, keys=keys)  # type: ignore[arg-type]


def _plan(ledger: Ledger) -> None:
    """An alignment (published), the training waiting for it, the validation for the training."""
    assert ledger.submit(_entry("align", "alignment", "preprocess", [ALIGNMENT]), [ALIGNMENT])
    ledger.published("align")
    training = ("training", C, P, E, "r1")
    assert not ledger.submit(_entry("train", "training", "train", [training]), [ALIGNMENT, training])
    assert not ledger.submit(_entry("validate", "validation", "evaluate"), [ALIGNMENT, training])


def _restored(journal: Journal) -> tuple[Ledger, list[str], list[tuple[str, str]]]:
    ledger = Ledger(journal)
    made: list[str] = []

    def make(job: JournaledJob) -> Entry:
        made.append(job.job_id)
        return _entry(job.job_id, job.kind, job.process, [tuple(m) for m in job.marks])

    ready, doomed = ledger.restore(journal.recent(500), journal.states(), make)
    assert made == [j.job_id for j in journal.recent(500) if j.open]
    return ledger, [e.job_id for e in ready], [(e.job_id, failed) for e, failed in doomed]


def test_waiting_jobs_are_journaled_with_what_they_wait_for(store: Store) -> None:
    journal = Journal(store.engine)
    _plan(Ledger(journal))
    jobs = {j.job_id: j for j in journal.recent(500)}
    assert [j.job_id for j in journal.recent(500)] == ["align", "train", "validate"]  # in submission order
    assert {k: (j.state, j.waits_for) for k, j in jobs.items()} == {
        "align": ("published", ()),
        "train": ("waiting", ("align",)),
        "validate": ("waiting", ("align", "train")),
    }
    assert jobs["train"].marks == (("training", C, P, E, "r1"),) and jobs["train"].keys["run_id"] == "r1"


def test_after_a_restart_the_open_jobs_are_tracked_again_and_run_in_order(store: Store) -> None:
    journal = Journal(store.engine)
    _plan(Ledger(journal))
    ledger, ready, doomed = _restored(journal)  # the Director restarted before the alignment completed
    assert ready == [] and doomed == []
    assert ledger.latest(ALIGNMENT) == "align"  # a new training request would wait for it too
    _, now_ready, _ = ledger.finish("align", "completed")
    assert [e.job_id for e in now_ready] == ["train"]
    assert journal.states() == {"align": "completed", "train": "waiting", "validate": "waiting"}


def test_a_dependency_that_completed_while_the_director_was_down_releases_its_dependents(store: Store) -> None:
    journal = Journal(store.engine)
    _plan(Ledger(journal))
    journal.set_state("align", "completed")  # archived, then the Director died before publishing "train"
    ledger, ready, doomed = _restored(journal)
    assert ready == ["train"] and doomed == []
    assert ledger.seen("align") and not ledger.seen("train")  # the archive will not archive it twice


def test_a_dependency_that_failed_dooms_its_dependents_after_a_restart(store: Store) -> None:
    journal = Journal(store.engine)
    _plan(Ledger(journal))
    journal.set_state("align", "failed", "no data")
    _ledger, ready, doomed = _restored(journal)
    assert ready == [] and doomed == [("train", "align"), ("validate", "align")]


def test_finished_jobs_are_shown_for_a_week_then_forgotten(store: Store) -> None:
    journal = Journal(store.engine)
    ledger = Ledger(journal)
    _plan(ledger)
    ledger.finish("align", "failed", "no data")
    old = datetime.now(UTC) - timedelta(days=8)
    with Session(store.engine) as session, session.begin():
        session.execute(
            update(journal_module._JobRow).where(journal_module._JobRow.job_id == "align").values(updated_at=old)
        )
    assert journal.get("align") is not None and journal.get("align").detail == "no data"  # type: ignore[union-attr]
    assert journal.prune() == 1 and journal.get("align") is None
    assert [j.job_id for j in journal.recent(1)] == ["train", "validate"]  # open jobs always, whatever the limit


def _journaled(kind: str, process: str, keys: dict[str, str], recipe: dict[str, Any] | None = None) -> JournaledJob:
    return JournaledJob(
        seq=1,
        job_id="j",
        kind=kind,
        process=process,
        keys={"collab_id": C, "project_id": P, **keys},
        recipe=recipe or {},
        marks=(),
        waits_for=(),
        rounds=None,
        state="waiting",
        detail=None,
        created_at=datetime.now(UTC),
    )


@pytest.mark.parametrize(
    "kind, process, keys, recipe",
    [
        ("alignment", "preprocess", {}, {"auto_fix": False, "preprocessing": {"scaling": "minmax"}}),
        ("training", "train", {"expt_id": E, "run_id": "r1"}, {}),
        ("validation", "evaluate", {"expt_id": E, "run_id": "r1"}, {}),
        ("validation", "evaluate", {"expt_id": E, "run_id": "r1", "participant_id": "u1"}, {}),
        ("prediction", "evaluate", {"expt_id": E, "run_id": "r1", "participant_id": "u2"}, {}),
    ],
)
def test_a_journaled_job_is_planned_again_from_the_store(
    store: Store,
    kind: str,
    process: str,
    keys: dict[str, str],
    recipe: dict[str, Any],
) -> None:
    _run(store, "r1", rounds=2)
    _aligned(store, ["target_1"])
    job = _journaled(kind, process, keys, recipe)
    planned = rebuild(store, job)
    assert (planned.kind, planned.process, planned.keys) == (kind, process, job.keys)
    built = planned.build()  # from the store as it is when its turn comes
    assert built["process"] == process and built["keys"] == job.keys
    if kind == "alignment":
        assert built["parameters"]["auto_fix"] is False and built["parameters"]["preprocessing"]["scaling"] == "minmax"
    if kind == "prediction":
        assert built["parameters"]["meta"] == "predict" and built["parameters"]["participants"] == ["u2"]


def test_a_job_that_cannot_be_planned_any_more_says_why(store: Store) -> None:
    with pytest.raises(NotFound, match="gone"):
        rebuild(store, _journaled("training", "train", {"expt_id": E, "run_id": "gone"}))
