"""An image run: the deployment guide's CNN on scikit-learn digits saved as 32x32 grayscale PNG
files, split between two parties (tags `digits/train`, `digits/evaluate`, `digits/predict`).

    python -m synergos_local.demo --example images      # prepares the data and starts the grid
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
c, p, e, r = "collaboration_images", "digits", "cnn", "run_1"

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
            "l_type": "Conv2d",
            "structure": {"in_channels": 1, "out_channels": 4, "kernel_size": 3, "stride": 1, "padding": 1},
        },
        {"activation": None, "is_input": False, "l_type": "MaxPool2d", "structure": {"kernel_size": 2}},
        {"activation": None, "is_input": False, "l_type": "Flatten", "structure": {}},
        {
            "activation": "log_softmax",
            "is_input": False,
            "l_type": "Linear",
            "structure": {"bias": True, "in_features": 4 * 16 * 16, "out_features": 10},
        },
    ],
)
driver.runs.create(
    collab_id=c,
    project_id=p,
    expt_id=e,
    run_id=r,
    rounds=4,
    epochs=5,
    lr=0.2,
    batch_size=64,
    criterion="NLLLoss",
    optimizer="SGD",
    lr_scheduler="none",
)
for i, host in enumerate(workers, start=1):
    driver.participants.create(participant_id=f"hospital_{i}")
    registration_task = driver.registrations  # holds the nodes until create()
    registration_task.add_node(host=host, port=8020, f_port=5000)
    registration_task.create(collab_id=c, project_id=p, participant_id=f"hospital_{i}", role="guest")
    driver.tags.create(
        collab_id=c,
        project_id=p,
        participant_id=f"hospital_{i}",
        train=[["digits", "train"]],
        evaluate=[["digits", "evaluate"]],
        predict=[["digits", "predict"]],
    )
driver.alignments.create(collab_id=c, project_id=p, auto_fix=False)
driver.models.create(collab_id=c, project_id=p, expt_id=e, run_id=r)
for record in driver.validations.create(collab_id=c, project_id=p, expt_id=e, run_id=r)["data"]:
    stats = record["evaluate"]["statistics"]
    print(
        f"{record['key']['participant_id']:>12}: overall accuracy {stats['overall_accuracy']:.3f} "
        f"on {stats['n_samples']} images"
    )
