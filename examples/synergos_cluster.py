"""The deployment guide's Synergos Cluster script: Phases 1-3 plus its hyper-parameter section,
sent to the Director. Each participant registers two nodes, one per TTP grid.

    python examples/synergos_cluster.py --host 127.0.0.152 --port 5000 --mq 127.0.0.1 \
        --worker 127.0.0.154 --worker 127.0.0.155

The Director answers at once (202) and queues the work; the TTPs take it from the MQ. Jobs issued
in sequence run in that order: training waits for alignment, validation for training.
"""

from __future__ import annotations

import argparse

from synergos import Driver

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--host", default="127.0.0.152")
parser.add_argument("--port", type=int, default=5000)
parser.add_argument("--mq", default="127.0.0.1", help="the MQ host the TTPs consume from")
parser.add_argument("--mq_port", type=int, default=5672)
parser.add_argument(
    "--worker", action="append", help="a participant's host (repeat); nodes on ports 5000/8020 and 5001/8021"
)
parser.add_argument("--n_samples", type=int, default=3)
args = parser.parse_args()
workers = args.worker or ["127.0.0.154", "127.0.0.155"]

driver = Driver(host=args.host, port=args.port)

# Phase 1: registration
collab_task = driver.collaborations
collab_task.configure_mq(host=args.mq, port=args.mq_port)
collab_task.create("collaboration_1")
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
# the guide's run, trained long enough to learn (the guide's 2 rounds of 1 epoch only show the flow)
driver.runs.create(
    collab_id="collaboration_1",
    project_id="project_1",
    expt_id="experiment_1",
    run_id="run_1",
    rounds=10,
    epochs=20,
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
    for grid in range(2):  # one node per TTP grid
        registration_task.add_node(host=host, port=8020 + grid, f_port=5000 + grid, log_msgs=True, verbose=True)
    registration_task.create(
        collab_id="collaboration_1",
        project_id="project_1",
        participant_id=f"participant_{i}",
        role="guest" if i == 1 else "host",
    )
    driver.tags.create(
        collab_id="collaboration_1",
        project_id="project_1",
        participant_id=f"participant_{i}",
        train=[["train"]],
        evaluate=[["evaluate"]],
        predict=[["predict"]],
    )

# Phase 2A: alignment
driver.alignments.create(collab_id="collaboration_1", project_id="project_1")

# Hyper-parameter optimization (the guide's search space), between 2A and 2B
search_space = {
    "algorithm": "FedProx",
    "rounds": {"_type": "choice", "_value": [1, 2]},
    "epochs": 1,
    "lr": 0.001,
    "weight_decay": 0.0,
    "lr_decay": 0.1,
    "mu": 0.1,
    "l1_lambda": 0.0,
    "l2_lambda": 0.0,
    "optimizer": "SGD",
    "criterion": "MSELoss",
    "lr_scheduler": "CyclicLR",
    "delta": 0.0,
    "patience": 10,
    "seed": 42,
    "is_snn": False,
    "precision_fractional": 5,
    "base_lr": 0.0005,
    "max_lr": 0.005,
}
driver.optimizations.create(
    collab_id="collaboration_1",
    project_id="project_1",
    expt_id="experiment_1",
    tuner=None,
    metric=None,
    optimize_mode=None,
    search_space=search_space,
    n_samples=args.n_samples,
)

# Phase 2B and 3
driver.models.create(collab_id="collaboration_1", project_id="project_1", expt_id="experiment_1", run_id="run_1")
driver.validations.create(collab_id="collaboration_1", project_id="project_1", expt_id="experiment_1", run_id="run_1")
driver.predictions.create(
    collab_id="collaboration_1",
    tags={"project_1": [["predict"]]},
    participant_id="participant_1",
    project_id="project_1",
    expt_id="experiment_1",
    run_id="run_1",
)
print("All requests queued on the Director.")
