"""A text run: bag-of-words sentiment on generated reviews, each party with a partly different
vocabulary, aligned word by word like tabular headers (tags `reviews/train`, ...).

    python -m synergos_local.demo --example text        # prepares the data and starts the grid
"""

from __future__ import annotations

import argparse

from synergos import Driver

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--host", default="127.0.0.153")
parser.add_argument("--port", type=int, default=5000)
parser.add_argument("--worker", action="append")
args = parser.parse_args()
workers = args.worker or ["127.0.0.154", "127.0.0.155"]
c, p, e, r = "collaboration_text", "reviews", "bag_of_words", "run_1"

driver = Driver(host=args.host, port=args.port)
driver.collaborations.create(c)
driver.projects.create(collab_id=c, project_id=p, action="classify")
driver.experiments.create(
    collab_id=c,
    project_id=p,
    expt_id=e,
    model=[
        {
            "activation": "relu",
            "is_input": True,
            "l_type": "Linear",
            "structure": {"in_features": 1, "out_features": 16},
        },
        {"activation": None, "is_input": False, "l_type": "Dropout", "structure": {"p": 0.1}},
        {
            "activation": "sigmoid",
            "is_input": False,
            "l_type": "Linear",
            "structure": {"in_features": 16, "out_features": 1},
        },
    ],
)
driver.runs.create(
    collab_id=c,
    project_id=p,
    expt_id=e,
    run_id=r,
    rounds=4,
    epochs=20,
    lr=0.3,
    criterion="BCELoss",
    optimizer="SGD",
    lr_scheduler="none",
)
for i, host in enumerate(workers, start=1):
    driver.participants.create(participant_id=f"shop_{i}")
    registration_task = driver.registrations  # holds the nodes until create()
    registration_task.add_node(host=host, port=8020, f_port=5000)
    registration_task.create(collab_id=c, project_id=p, participant_id=f"shop_{i}", role="guest")
    driver.tags.create(
        collab_id=c,
        project_id=p,
        participant_id=f"shop_{i}",
        train=[["reviews", "train"]],
        evaluate=[["reviews", "evaluate"]],
        predict=[["reviews", "predict"]],
    )
alignment = driver.alignments.create(collab_id=c, project_id=p)["data"]
print(f"aligned vocabulary: {len(alignment[0]['superset']['X'])} words")
driver.models.create(collab_id=c, project_id=p, expt_id=e, run_id=r)
for record in driver.validations.create(collab_id=c, project_id=p, expt_id=e, run_id=r)["data"]:
    stats = record["evaluate"]["statistics"]
    print(
        f"{record['key']['participant_id']:>10}: overall accuracy {stats['overall_accuracy']:.3f} "
        f"on {stats['n_samples']} reviews"
    )
