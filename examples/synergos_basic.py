"""The deployment guide's Phases 1-3, through the Driver, against a basic-mode TTP.

    python examples/synergos_basic.py --host 127.0.0.153 --port 5000 \
        --worker 127.0.0.154 --worker 127.0.0.155

Each participant registers one node (federation port 8020, command port 5000) and tags its
data `train`, `evaluate` and `predict` as in the guide.
"""

from __future__ import annotations

import argparse
import json

from synergos import Driver

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--host", default="127.0.0.153")
parser.add_argument("--port", type=int, default=5000)
parser.add_argument("--worker", action="append", help="worker host (repeat per participant)")
parser.add_argument("--rounds", type=int, default=10)
parser.add_argument("--epochs", type=int, default=20)
args = parser.parse_args()
workers = args.worker or ["127.0.0.154", "127.0.0.155"]

driver = Driver(host=args.host, port=args.port)

# Phase 1: registration
driver.collaborations.create("collaboration_1")
driver.projects.create(
    collab_id="collaboration_1",
    project_id="project_1",
    action="classify",
    incentives={"tier_1": [], "tier_2": [], "tier_3": []},
)
driver.experiments.create(
    collab_id="collaboration_1",
    project_id="project_1",
    expt_id="experiment_1",
    model=[
        {
            "activation": "sigmoid",
            "is_input": True,
            "l_type": "Linear",
            "structure": {"bias": True, "in_features": 18, "out_features": 1},
        }
    ],
)
driver.runs.create(
    collab_id="collaboration_1",
    project_id="project_1",
    expt_id="experiment_1",
    run_id="run_1",
    rounds=args.rounds,
    epochs=args.epochs,
    mu=0.001,
    base_lr=0.05,
    max_lr=0.5,
    step_size_up=10,
    criterion="BCELoss",
    optimizer="SGD",
    lr_scheduler="CyclicLR",
)

for i, host in enumerate(workers, start=1):
    driver.participants.create(participant_id=f"participant_{i}")
    registration_task = driver.registrations
    registration_task.add_node(host=host, port=8020, f_port=5000, log_msgs=True, verbose=True)
    registration_task.create(
        collab_id="collaboration_1",
        project_id="project_1",
        participant_id=f"participant_{i}",
        role="host" if i == 1 else "guest",
    )
    driver.tags.create(
        collab_id="collaboration_1",
        project_id="project_1",
        participant_id=f"participant_{i}",
        train=[["train"]],
        evaluate=[["evaluate"]],
        predict=[["predict"]],
    )

# Phase 2: alignment and training
driver.alignments.create(collab_id="collaboration_1", project_id="project_1")
driver.models.create(collab_id="collaboration_1", project_id="project_1", expt_id="experiment_1", run_id="run_1")

# Phase 3: validation and prediction
validations = driver.validations.create(
    collab_id="collaboration_1", project_id="project_1", expt_id="experiment_1", run_id="run_1"
)
for i in range(1, len(workers) + 1):
    driver.predictions.create(
        collab_id="collaboration_1",
        tags={"project_1": [["predict"]]},
        participant_id=f"participant_{i}",
        project_id="project_1",
        expt_id="experiment_1",
        run_id="run_1",
    )

print("\nValidation results (computed by each participant on its own evaluate data):")
for record in validations["data"]:
    stats = record["evaluate"]["statistics"]
    print(
        f"  {record['key']['participant_id']:>14}: accuracy per class "
        f"{[round(a, 3) for a in stats['accuracy']]}, overall accuracy {stats['overall_accuracy']:.3f}, "
        f"ROC-AUC {[round(a, 3) for a in stats['roc_auc_score']]}, samples {stats['n_samples']}"
    )
model = driver.models.read(collab_id="collaboration_1", project_id="project_1", expt_id="experiment_1", run_id="run_1")[
    "data"
][0]
print("\nGlobal loss history:", json.dumps(model["global"]["loss_history"]))
print("Model files (under the TTP's outputs directory):", model["global"]["path"])
