"""The deployment guide's synergos.py, verbatim apart from where the services are.

    python examples/guide_script.py [TTP_HOST TTP_PORT WORKER_1_HOST WORKER_2_HOST]

Defaults are the guide's (Director tunnelled to local port 15000, Workers on 172.19.152.154/155).
"""

import sys

from synergos import Driver

host = sys.argv[1] if len(sys.argv) > 1 else "0.0.0.0"
port = int(sys.argv[2]) if len(sys.argv) > 2 else 15000
worker_1_host = sys.argv[3] if len(sys.argv) > 3 else "172.19.152.154"
worker_2_host = sys.argv[4] if len(sys.argv) > 4 else "172.19.152.155"

driver = Driver(host=host, port=port)

# 1A. Orchestrator creates a collaboration
collab_task = driver.collaborations
collab_task.configure_mq(host="172.19.152.151", port=5672)  # configure MQ
collab_task.create("collaboration_1")

# 1B. Orchestrator creates a project
driver.projects.create(
    collab_id="collaboration_1",
    project_id="project_1",
    action="classify",
    incentives={"tier_1": [], "tier_2": [], "tier_3": []},
)

# 1C. Orchestrator creates an experiment (the guide's simple model with tabular data)
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

# 1D. Orchestrator creates a run
driver.runs.create(
    collab_id="collaboration_1",
    project_id="project_1",
    expt_id="experiment_1",
    run_id="run_1",
    rounds=2,
    epochs=1,
    base_lr=0.0005,
    max_lr=0.005,
    criterion="L1Loss",
    optimizer="SGD",
    lr_scheduler="CyclicLR",
)

# 1E. Participants register to the collaboration
driver.participants.create(
    participant_id="participant_1",
)

driver.participants.create(
    participant_id="participant_2",
)

# 1F. Participants declare the compute resource and data they are using
registration_task = driver.registrations

registration_task.add_node(
    host=worker_1_host,  # <worker-1-vm-ip>
    port=8020,
    f_port=5000,
    log_msgs=True,
    verbose=True,
)
registration_task.create(
    collab_id="collaboration_1", project_id="project_1", participant_id="participant_1", role="guest"
)

registration_task.add_node(
    host=worker_2_host,  # <worker-2-vm-ip>
    port=8020,
    f_port=5000,
    log_msgs=True,
    verbose=True,
)
registration_task.create(
    collab_id="collaboration_1", project_id="project_1", participant_id="participant_2", role="host"
)

driver.tags.create(
    collab_id="collaboration_1",
    project_id="project_1",
    participant_id="participant_1",
    train=[["train"]],  # data used in training
    evaluate=[["evaluate"]],  # data used to evaluate model performance
    predict=[["predict"]],  # data used for prediction/inference
)

driver.tags.create(
    collab_id="collaboration_1",
    project_id="project_1",
    participant_id="participant_2",
    train=[["train"]],
    evaluate=[["evaluate"]],
    predict=[["predict"]],
)

# 2A. Feature alignment
driver.alignments.create(collab_id="collaboration_1", project_id="project_1")

# 2B. Training
model_resp = driver.models.create(
    collab_id="collaboration_1", project_id="project_1", expt_id="experiment_1", run_id="run_1"
)

# 3A. Validation
driver.validations.create(collab_id="collaboration_1", project_id="project_1", expt_id="experiment_1", run_id="run_1")

# 3B. Prediction
driver.predictions.create(
    collab_id="collaboration_1",
    tags={"project_1": [["predict"]]},
    participant_id="participant_1",
    project_id="project_1",
    expt_id="experiment_1",
    run_id="run_1",
)
