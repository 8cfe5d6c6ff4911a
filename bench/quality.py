"""Model quality: federated training on a real grid next to central training on the pooled data.

Three local datasets, each split NON-IID across three parties:

* breast_cancer (scikit-learn): by tertiles of `mean radius`, so the parties' feature ranges and
  class balances differ strongly (the smallest tumours are nearly all benign, the largest malignant);
* diabetes (scikit-learn, raw units, regression of disease progression): by tertiles of `bmi`,
  the strongest predictor, so each party sees a narrow slice of it and of the target;
* penguins (palmerpenguins): by island, so each party lacks species and islands others have
  (Torgersen has Adelie only, Dream no Gentoo, Biscoe no Chinstrap); NaNs kept in the features.

The federated side is the real platform: a basic-mode TTP and one Worker process per party on
loopback (`synergos_local.topology`), driven through the Driver SDK. The central side trains in
this process with plain torch on the pooled train data, preprocessed independently with
scikit-learn, from the same initial weights (the platform's auto-fixed layer list, built with the
run's seed), with the same recipe and the same number of optimizer steps.

    .venv/bin/python bench/quality.py                       # all three datasets, ~25 s on 2 cores
    .venv/bin/python bench/quality.py --datasets diabetes --epochs 1 --rounds 100

Prints ONE JSON line on stdout; progress goes to stderr. bench/README.md explains every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

SEED = 42
PARTIES = 3
COLLAB = "quality"
REST, WS = 5000, 8020
CLASSIFY_TARGET = 0.02  # accuracy
REGRESS_TARGET = 0.05  # R2
# each party's rows: 60 % train, 30 % evaluate (what both sides are scored on), 10 % predict;
# a larger evaluate split than write_party's 15 % makes one misclassified row cost less accuracy
FRACTIONS = (0.6, 0.3)

# One recipe per dataset, used verbatim on both sides. Full batch (batch_size=None), so a party's
# epoch is one optimizer step and central training takes rounds * epochs steps on the pooled data.
# `in_features` / `out_features` are what the user writes; auto_fix resizes them to the aligned data.
RECIPES: dict[str, dict] = {
    "breast_cancer": {
        "action": "classify",
        "model": [
            {
                "l_type": "Linear",
                "structure": {"in_features": 30, "out_features": 16},
                "activation": "relu",
                "is_input": True,
            },
            {
                "l_type": "Linear",
                "structure": {"in_features": 16, "out_features": 1},
                "activation": "sigmoid",
                "is_input": False,
            },
        ],
        "hp": {"optimizer": "SGD", "lr": 0.5, "criterion": "BCELoss", "rounds": 20, "epochs": 5},
    },
    "diabetes": {
        "action": "regress",
        "model": [
            {
                "l_type": "Linear",
                "structure": {"in_features": 10, "out_features": 1},
                "activation": None,
                "is_input": True,
            },
        ],
        "hp": {"optimizer": "SGD", "lr": 0.1, "criterion": "MSELoss", "rounds": 20, "epochs": 5},
    },
    "penguins": {
        "action": "classify",
        "model": [
            {
                "l_type": "Linear",
                "structure": {"in_features": 10, "out_features": 16},
                "activation": "relu",
                "is_input": True,
            },
            {
                "l_type": "Linear",
                "structure": {"in_features": 16, "out_features": 3},
                "activation": "log_softmax",
                "is_input": False,
            },
        ],
        "hp": {"optimizer": "SGD", "lr": 0.5, "criterion": "NLLLoss", "rounds": 20, "epochs": 5},
    },
}
COMMON_HP = {"algorithm": "FedAvg", "mu": 0.0, "lr_scheduler": "none", "patience": 0, "batch_size": None, "seed": SEED}


def say(*parts: object) -> None:
    print("[quality]", *parts, file=sys.stderr, flush=True)


# ---- the parties' data: raw frames split non-IID, written in the Worker layout ----


def _sklearn_frame(name: str) -> pd.DataFrame:
    from sklearn import datasets

    loader = getattr(datasets, f"load_{name}")
    bunch = loader(as_frame=True, scaled=False) if name == "diabetes" else loader(as_frame=True)
    frame = bunch.frame.rename(columns={bunch.target.name: "target"})
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    return frame


def _by_tertiles(frame: pd.DataFrame, column: str) -> list[pd.DataFrame]:
    third = pd.qcut(frame[column], PARTIES, labels=False, duplicates="drop")
    return [frame[third == i].reset_index(drop=True) for i in range(PARTIES)]


def split_parties(name: str) -> tuple[list[pd.DataFrame], dict[str, str], str]:
    """(one raw frame per party, schema, how it was split)."""
    if name == "breast_cancer":
        frame = _sklearn_frame(name)
        schema = {c: "float64" for c in frame.columns} | {"target": "int64"}
        return _by_tertiles(frame, "mean_radius"), schema, "mean_radius tertiles (party 1 smallest)"
    if name == "diabetes":
        frame = _sklearn_frame(name)
        schema = {c: "float64" for c in frame.columns}
        return _by_tertiles(frame, "bmi"), schema, "bmi tertiles (party 1 lowest)"
    if name == "penguins":
        from palmerpenguins import load_penguins

        from synergos_local.datasets import PENGUIN_SCHEMA

        frame = load_penguins().rename(columns={"species": "target"})
        frame = frame[frame["target"].notna()].reset_index(drop=True)  # features keep their NaNs
        islands = ["Biscoe", "Dream", "Torgersen"]
        return (
            [frame[frame["island"] == i].reset_index(drop=True) for i in islands],
            dict(PENGUIN_SCHEMA),
            "island (Biscoe, Dream, Torgersen)",
        )
    raise ValueError(name)


def prepare(workspace: Path, name: str) -> dict:
    """Write each party's train/evaluate/predict split; return the splits as written (read back)."""
    from synergos_local.datasets import split_metas, write_tabular

    frames, schema, split = split_parties(name)
    for i, frame in enumerate(frames, start=1):
        for meta, part in split_metas(frame, seed=SEED + i, fractions=FRACTIONS).items():
            write_tabular(workspace / f"worker_{i}" / "data" / name / meta, part, schema)
    numeric = [c for c, t in schema.items() if c != "target" and t in ("int32", "int64", "float64")]
    categorical = [c for c, t in schema.items() if c != "target" and c not in numeric]

    def read(i: int, meta: str) -> pd.DataFrame:
        frame = pd.read_csv(workspace / f"worker_{i}" / "data" / name / meta / "data.csv")
        for c in categorical:
            frame[c] = frame[c].astype(object).where(frame[c].notna(), np.nan)
        return frame

    metas = {meta: [read(i, meta) for i in range(1, len(frames) + 1)] for meta in ("train", "evaluate")}
    party_rows = [len(f) for f in metas["train"]]
    balance = None
    if RECIPES[name]["action"] == "classify":
        balance = [{str(k): int(v) for k, v in sorted(f["target"].value_counts().items())} for f in metas["train"]]
    return {
        "split": split,
        "schema": schema,
        "numeric": numeric,
        "categorical": categorical,
        "train": pd.concat(metas["train"], ignore_index=True),
        "evaluate": pd.concat(metas["evaluate"], ignore_index=True),
        "party_train_rows": party_rows,
        "party_train_classes": balance,
    }


# ---- the federated side: the real platform through the Driver ----


def register(driver, name: str, action: str, hosts: list[str]) -> None:
    driver.projects.create(
        collab_id=COLLAB, project_id=name, action=action, incentives={"tier_1": [], "tier_2": [], "tier_3": []}
    )
    for i, host in enumerate(hosts, start=1):
        pid = f"party_{i}"
        task = driver.registrations
        task.add_node(host=host, port=WS, f_port=REST)
        task.create(collab_id=COLLAB, project_id=name, participant_id=pid, role="host" if i == 1 else "guest")
        driver.tags.create(
            collab_id=COLLAB,
            project_id=name,
            participant_id=pid,
            train=[[name, "train"]],
            evaluate=[[name, "evaluate"]],
            predict=[[name, "predict"]],
        )


def federated(driver, name: str, recipe: dict, hp: dict) -> dict:
    action = recipe["action"]
    expt, run = "expt", "run"
    driver.experiments.create(collab_id=COLLAB, project_id=name, expt_id=expt, model=recipe["model"])
    driver.runs.create(collab_id=COLLAB, project_id=name, expt_id=expt, run_id=run, **hp)
    alignments = driver.alignments.create(collab_id=COLLAB, project_id=name)["data"]
    started = time.perf_counter()
    models = driver.models.create(collab_id=COLLAB, project_id=name, expt_id=expt, run_id=run)["data"]
    train_s = time.perf_counter() - started
    validations = driver.validations.create(collab_id=COLLAB, project_id=name, expt_id=expt, run_id=run)["data"]
    layers = driver.experiments.read(collab_id=COLLAB, project_id=name, expt_id=expt)["data"]["model"]
    by_party = {v["key"]["participant_id"]: v["evaluate"]["statistics"] for v in validations}
    history = models[0]["global"]["loss_history"]
    metric_key = "evaluate_accuracy" if action == "classify" else "evaluate_r2"
    last = max(history[metric_key], key=int)
    return {
        "layers": layers,
        "superset": alignments[0]["superset"],
        "by_party": by_party,
        "history_metric": float(history[metric_key][last]),
        "train_loss": float(history["train"][last]),
        "history_rounds": int(last) + 1,
        "train_s": train_s,
    }


# ---- the central side: scikit-learn preprocessing, plain torch ----


def central(data: dict, recipe: dict, hp: dict, layers: list[dict], superset: dict) -> dict:
    import torch
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from synergos_core.model import build_model

    train, evaluate = data["train"], data["evaluate"]
    numeric, categorical = data["numeric"], data["categorical"]
    seen = pd.concat([train, evaluate], ignore_index=True)
    transformers = [
        ("num", Pipeline([("impute", SimpleImputer(strategy="mean")), ("scale", StandardScaler())]), numeric)
    ]
    if categorical:
        # every category seen anywhere in the pooled train + evaluate data: the platform's superset width
        categories = [sorted(seen[c].dropna().astype(str).unique()) for c in categorical]
        transformers.append(
            (
                "cat",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="most_frequent")),
                        ("onehot", OneHotEncoder(categories=categories, handle_unknown="ignore")),
                    ]
                ),
                categorical,
            )
        )
    pre = ColumnTransformer(transformers, sparse_threshold=0.0, verbose_feature_names_out=False)

    def features(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame[numeric + categorical].copy()
        for c in categorical:
            out[c] = out[c].map(lambda v: v if pd.isna(v) else str(v)).astype(object)
        return out

    X_train = pre.fit_transform(features(train)).astype(np.float32)
    X_eval = pre.transform(features(evaluate)).astype(np.float32)
    width = int(layers[0]["structure"]["in_features"])
    if X_train.shape[1] != width or width != len(superset["X"]):
        raise AssertionError(
            f"central feature width {X_train.shape[1]} differs from the platform's "
            f"{width} (superset {len(superset['X'])}): the two would not start from the same weights"
        )
    # columns sorted by name (`island_Dream` for a category), so that each initial weight meets the
    # same feature on both sides; the names are derived here and only compared with the platform's
    names = [str(n) for n in pre.get_feature_names_out()]
    order = sorted(range(len(names)), key=lambda j: names[j])
    X_train, X_eval = X_train[:, order], X_eval[:, order]
    if [names[j] for j in order] != list(superset["X"]):
        raise AssertionError(f"central features {sorted(names)} are not the platform's {superset['X']}")

    action = recipe["action"]
    if action == "classify":
        classes = sorted(seen["target"].astype(str).unique())
        if len(classes) != len(superset["y"]):
            raise AssertionError(f"{len(classes)} classes centrally, {len(superset['y'])} on the platform")
        index = {c: i for i, c in enumerate(classes)}
        y_train = np.array(train["target"].astype(str).map(index), dtype=np.int64)
        y_eval = np.array(evaluate["target"].astype(str).map(index), dtype=np.int64)
    else:
        mean, std = float(train["target"].mean()), float(train["target"].std(ddof=0))
        y_train = (train["target"].to_numpy(dtype="float64") - mean) / std
        y_eval = evaluate["target"].to_numpy(dtype="float64")

    model = build_model(layers, seed=hp["seed"])  # the platform's initial global weights
    Xt = torch.from_numpy(X_train)
    criterion = getattr(torch.nn, hp["criterion"])()
    if hp["criterion"] == "BCELoss" or hp["criterion"] == "MSELoss":
        yt = torch.as_tensor(y_train, dtype=torch.float32).reshape(-1, 1)
    else:
        yt = torch.as_tensor(y_train, dtype=torch.long)
    optimizer = getattr(torch.optim, hp["optimizer"])(model.parameters(), lr=hp["lr"])
    steps = hp["rounds"] * hp["epochs"]  # full batch: one step per epoch
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        criterion(model(Xt), yt).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        train_loss = float(criterion(model(Xt), yt))  # the final model's, as the platform's history has it
        out = model(torch.from_numpy(X_eval)).numpy()
    if action == "classify":
        predicted = (out[:, 0] > 0.5).astype(int) if out.shape[1] == 1 else out.argmax(axis=1)
        value = float(accuracy_score(y_eval, predicted))
    else:
        value = float(r2_score(y_eval, out[:, 0].astype("float64") * std + mean))
    return {"value": value, "width": int(X_train.shape[1]), "steps": steps, "train_loss": train_loss}


def pooled_r2(by_party: dict, evaluate: pd.DataFrame) -> float:
    """R2 over the pooled evaluate data from the parties' own MSE and counts (their validation
    records) and the evaluate targets this script wrote: a check on the history's figure."""
    parties = {k: v for k, v in by_party.items() if k != "aggregate"}
    sse = sum(v["MSE"] * v["n_samples"] for v in parties.values())
    y = evaluate["target"].to_numpy(dtype="float64")
    if sum(v["n_samples"] for v in parties.values()) != len(y):
        raise AssertionError("the validation records do not cover the pooled evaluate data")
    return float(1.0 - sse / np.sum((y - y.mean()) ** 2))


def describe(layers: list[dict]) -> str:
    """`Linear(30->16)/relu -> Linear(16->1)/sigmoid`"""
    parts = []
    for layer in layers:
        structure = layer.get("structure") or {}
        activation = layer.get("activation")
        parts.append(
            f"{layer['l_type']}({structure.get('in_features')}->{structure.get('out_features')})"
            + (f"/{activation}" if activation else "")
        )
    return " -> ".join(parts)


def compare(driver, name: str, data: dict, hosts: list[str], args: argparse.Namespace) -> dict:
    """One dataset: the federated run, then central training from the same weights; its report entry."""
    recipe = RECIPES[name]
    hp = {**COMMON_HP, **recipe["hp"]}
    if args.rounds:
        hp["rounds"] = args.rounds
    if args.epochs:
        hp["epochs"] = args.epochs
    started = time.perf_counter()
    say(f"{name}: federated, {hp['rounds']} rounds x {hp['epochs']} epochs")
    register(driver, name, recipe["action"], hosts)
    fed = federated(driver, name, recipe, hp)
    say(f"{name}: central, {hp['rounds'] * hp['epochs']} full-batch steps")
    cen = central(data, recipe, hp, fed["layers"], fed["superset"])
    agg = fed["by_party"]["aggregate"]
    if recipe["action"] == "classify":
        metric, target = "accuracy", CLASSIFY_TARGET
        value = float(agg["overall_accuracy"])  # correct / all evaluate rows: the pooled accuracy
        extra = {"history_accuracy": round(fed["history_metric"], 4)}
    else:
        metric, target = "R2", REGRESS_TARGET
        value = float(agg["R2"])  # the aggregate record's R2 is that of the pooled evaluate rows
        extra = {
            "history_R2": round(fed["history_metric"], 4),
            "recomputed_R2": round(pooled_r2(fed["by_party"], data["evaluate"]), 4),
            "party_R2": [round(float(fed["by_party"][f"party_{i}"]["R2"]), 4) for i in range(1, PARTIES + 1)],
        }
    gap = cen["value"] - value
    say(
        f"{name}: federated {metric} {value:.4f}, central {cen['value']:.4f}, gap {gap:+.4f} "
        f"(target {target}) {'met' if gap <= target else 'NOT met'}"
    )
    entry = {"split": data["split"], "parties": PARTIES, "party_train_rows": data["party_train_rows"]}
    if data["party_train_classes"]:
        entry["party_train_classes"] = data["party_train_classes"]
    return entry | {
        "n_train": len(data["train"]),
        "n_evaluate": len(data["evaluate"]),
        "metric": metric,
        "federated": round(value, 4),
        "central": round(cen["value"], 4),
        "gap": round(gap, 4),
        "target": target,
        "met": bool(gap <= target),
        **extra,
        "federated_train_loss": round(fed["train_loss"], 5),
        "central_train_loss": round(cen["train_loss"], 5),
        "rounds": hp["rounds"],
        "epochs": hp["epochs"],
        "rounds_completed": fed["history_rounds"],
        "central_steps": cen["steps"],
        "recipe": {
            "model": describe(fed["layers"]),
            "optimizer": hp["optimizer"],
            "lr": hp["lr"],
            "criterion": hp["criterion"],
            "batch": "full",
            "algorithm": hp["algorithm"],
            "seed": hp["seed"],
        },
        "width": cen["width"],
        "federated_train_s": round(fed["train_s"], 2),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


# ---- main ----


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--rounds", type=int, help="override every recipe's rounds")
    parser.add_argument("--epochs", type=int, help="override every recipe's local epochs per round")
    parser.add_argument("--workdir", type=Path, help="keep data and service logs here (default: a temp dir)")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the services (in their own sessions) are stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

    from importlib.metadata import version

    from synergos import Driver
    from synergos_local import topology

    began = time.perf_counter()
    temp = None
    if args.workdir is None:
        temp = tempfile.mkdtemp(prefix="synergos_quality_")
        workspace = Path(temp)
    else:
        workspace = args.workdir
        workspace.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    try:
        say(f"workspace {workspace}")
        data = {name: prepare(workspace, name) for name in args.datasets}
        block = topology.loopback_block()
        ttp_host = f"{block}.1"
        hosts = [f"{block}.{i + 1}" for i in range(1, PARTIES + 1)]
        logs = workspace / "logs"
        with topology.Topology() as topo:  # every process is stopped on exit, even on failure
            say(f"starting a TTP on {ttp_host} and {PARTIES} workers on {hosts[0]}-{hosts[-1]}")
            topo.add(topology.ttp("ttp", ttp_host, REST, workspace / "ttp", logs))
            for i, host in enumerate(hosts, start=1):
                root = workspace / f"worker_{i}"
                topo.add(topology.worker(f"worker_{i}", host, REST, WS, root / "data", root / "outputs", logs))
            topo.wait(120)
            driver = Driver(host=ttp_host, port=REST, show_progress=False)
            driver.collaborations.create(COLLAB)
            for i in range(1, PARTIES + 1):
                driver.participants.create(participant_id=f"party_{i}")
            for name in args.datasets:
                results[name] = compare(driver, name, data[name], hosts, args)
            for service in topo.services:
                if service.process.poll() is not None:
                    raise RuntimeError(f"{service.name} exited:\n{service.tail()}")
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    report = {
        "benchmark": "quality",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": version("torch"),
            "sklearn": version("scikit-learn"),
        },
        "datasets": results,
        "all_met": all(r["met"] for r in results.values()),
        "elapsed_s": round(time.perf_counter() - began, 1),
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
