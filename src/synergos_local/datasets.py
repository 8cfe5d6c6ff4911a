"""Example parties' data in the Worker dataset layout, from datasets that ship with the packages
(palmerpenguins, scikit-learn): nothing is downloaded."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

METAS = ("train", "evaluate", "predict")


def write_tabular(directory: Path, frame: pd.DataFrame, schema: dict[str, str]) -> None:
    """One dataset: data.csv, schema.json and metadata.json in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    frame.to_csv(directory / "data.csv", index=False)
    (directory / "schema.json").write_text(json.dumps(schema, indent=2))
    (directory / "metadata.json").write_text(json.dumps({"datatype": "tabular", "operations": {}}, indent=2))


def split_metas(frame: pd.DataFrame, seed: int, fractions: tuple[float, float] = (0.7, 0.15)) -> dict[str, pd.DataFrame]:
    order = np.random.default_rng(seed).permutation(len(frame))
    a = int(len(frame) * fractions[0])
    b = a + int(len(frame) * fractions[1])
    parts = (order[:a], order[a:b], order[b:])
    return {meta: frame.iloc[idx].reset_index(drop=True) for meta, idx in zip(METAS, parts)}


def write_party(root: Path, name: str, frame: pd.DataFrame, schema: dict[str, str], seed: int) -> Path:
    for meta, part in split_metas(frame, seed).items():
        write_tabular(root / name / meta, part, schema)
    return root


PENGUIN_SCHEMA = {"island": "category", "bill_length_mm": "float64", "bill_depth_mm": "float64",
                  "flipper_length_mm": "float64", "body_mass_g": "float64", "sex": "category",
                  "year": "int64", "target": "category"}


def prepare_penguins(workspace: Path) -> dict[str, Path]:
    """Two parties split by island, so each lacks categories the other has: party 1 (Biscoe and
    Torgersen) never saw a Chinstrap penguin nor Dream island; party 2 (Dream) never saw a Gentoo."""
    from palmerpenguins import load_penguins

    frame = load_penguins().rename(columns={"species": "target"})
    parties = {
        "worker_1": frame[frame["island"].isin(["Biscoe", "Torgersen"])],
        "worker_2": frame[frame["island"] == "Dream"],
    }
    roots = {}
    for i, (worker, part) in enumerate(parties.items()):
        root = workspace / worker / "data"
        write_party(root, "penguins", part.reset_index(drop=True), PENGUIN_SCHEMA, seed=i)
        roots[worker] = root
    return roots


def prepare_sklearn(workspace: Path, name: str, parties: int = 2, seed: int = 0) -> dict[str, Path]:
    """An IID split of a scikit-learn bundled dataset: breast_cancer, wine, iris, digits or diabetes."""
    from sklearn import datasets

    loader = getattr(datasets, f"load_{name}")
    bunch = loader(as_frame=True)
    frame = bunch.frame.rename(columns={bunch.target.name: "target"})
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    schema = {c: "float64" for c in frame.columns}
    schema["target"] = "float64" if name == "diabetes" else "int64"
    order = np.random.default_rng(seed).permutation(len(frame))
    roots = {}
    for i, chunk in enumerate(np.array_split(order, parties)):
        worker = f"worker_{i + 1}"
        root = workspace / worker / "data"
        write_party(root, name, frame.iloc[chunk].reset_index(drop=True), schema, seed=seed + i)
        roots[worker] = root
    return roots
