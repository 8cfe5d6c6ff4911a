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


def split_metas(
    frame: pd.DataFrame, seed: int, fractions: tuple[float, float] = (0.7, 0.15)
) -> dict[str, pd.DataFrame]:
    order = np.random.default_rng(seed).permutation(len(frame))
    a = int(len(frame) * fractions[0])
    b = a + int(len(frame) * fractions[1])
    parts = (order[:a], order[a:b], order[b:])
    return {meta: frame.iloc[idx].reset_index(drop=True) for meta, idx in zip(METAS, parts, strict=False)}


def write_party(root: Path, name: str, frame: pd.DataFrame, schema: dict[str, str], seed: int) -> Path:
    for meta, part in split_metas(frame, seed).items():
        write_tabular(root / name / meta, part, schema)
    return root


PENGUIN_SCHEMA = {
    "island": "category",
    "bill_length_mm": "float64",
    "bill_depth_mm": "float64",
    "flipper_length_mm": "float64",
    "body_mass_g": "float64",
    "sex": "category",
    "year": "int64",
    "target": "category",
}


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


# ---- images and texts ----


def _write_metadata(directory: Path, datatype: str, operations: dict) -> None:
    (directory / "metadata.json").write_text(json.dumps({"datatype": datatype, "operations": operations}, indent=2))


def write_images(directory: Path, images: np.ndarray, targets: np.ndarray, size: int = 32) -> None:
    """One image dataset: PNG files, mapping.csv (`image,target`) and metadata.json in `directory`.

    `images` is uint8 (N, h, w) grayscale; each is upscaled to size x size (bilinear)."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for i, pixels in enumerate(images):
        name = f"img_{i:05d}.png"
        image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))  # 2-D uint8 -> mode "L"
        image.resize((size, size), resample=Image.Resampling.BILINEAR).save(directory / name, compress_level=1)
        names.append(name)
    pd.DataFrame({"image": names, "target": targets}).to_csv(directory / "mapping.csv", index=False)
    _write_metadata(directory, "image", {})


def prepare_digits_images(
    workspace: Path, parties: int = 2, size: int = 32, seed: int = 0, binary: bool = False
) -> dict[str, Path]:
    """scikit-learn's 8x8 digits as size x size grayscale PNGs, an IID split between `parties`, in
    `<workspace>/worker_i/data/digits/{train,evaluate,predict}/`. `binary` keeps digits 0 and 1 only."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # 0..16 -> 0..255
    targets = bunch.target.astype(np.int64)
    if binary:
        keep = targets <= 1
        images, targets = images[keep], targets[keep]
    order = np.random.default_rng(seed).permutation(len(targets))
    roots = {}
    for i, chunk in enumerate(np.array_split(order, parties)):
        worker = f"worker_{i + 1}"
        root = workspace / worker / "data"
        index = pd.DataFrame({"row": chunk})
        for meta, part in split_metas(index, seed + i).items():
            rows = part["row"].to_numpy()
            write_images(root / "digits" / meta, images[rows], targets[rows], size=size)
        roots[worker] = root
    return roots


_REVIEW_NOUNS = (
    "movie",
    "film",
    "plot",
    "story",
    "acting",
    "cast",
    "soundtrack",
    "ending",
    "script",
    "director",
    "scenery",
    "dialogue",
    "pacing",
    "finale",
)
_REVIEW_POSITIVE = (
    "good",
    "great",
    "excellent",
    "wonderful",
    "enjoyable",
    "brilliant",
    "superb",
    "delightful",
    "charming",
    "moving",
    "gripping",
    "splendid",
    "marvelous",
    "stunning",
)
_REVIEW_NEGATIVE = (
    "bad",
    "awful",
    "terrible",
    "boring",
    "dull",
    "poor",
    "dreadful",
    "tedious",
    "clumsy",
    "bland",
    "messy",
    "shallow",
    "predictable",
    "forgettable",
)
_REVIEW_FILLER = (
    "honestly",
    "overall",
    "to be fair",
    "in my opinion",
    "frankly",
    "all in all",
    "from start to finish",
    "for the most part",
    "at times",
    "if you ask me",
    "on the whole",
    "as expected",
    "by the way",
    "after all",
)
_REVIEW_TEMPLATES = (
    "the {noun} was {word} {filler}",
    "{filler} the {noun} felt {word} and the {noun2} was {word2}",
    "really {word} {noun} {filler}",
    "i thought the {noun} was really {word}",
    "{filler} the {noun} is just {word}",
    "the {noun} and the {noun2} were both {word}",
)
_SHARED_WORDS = 6  # every party uses the first few words of each list; the rest differ by party


def _party_words(words: tuple[str, ...], party: int, extra: int = 4) -> list[str]:
    rest = words[_SHARED_WORDS:]
    start = (party * extra) % len(rest)
    own = [rest[(start + k) % len(rest)] for k in range(extra)]
    return list(words[:_SHARED_WORDS]) + own


def prepare_text_reviews(workspace: Path, parties: int = 2, seed: int = 0, rows: int = 300) -> dict[str, Path]:
    """A generated sentiment dataset (nothing downloaded): template sentences with positive or
    negative words and neutral filler, target 1 (positive) or 0 (negative), `rows` per party.
    Each party draws from a partly different vocabulary, so aligning them needs spacers. Written
    to `<workspace>/worker_i/data/reviews/{train,evaluate,predict}/` as data.csv (`text,target`)."""
    roots = {}
    for i in range(parties):
        rng = np.random.default_rng(seed + 1000 * i)
        nouns = _party_words(_REVIEW_NOUNS, i)
        positive, negative = _party_words(_REVIEW_POSITIVE, i), _party_words(_REVIEW_NEGATIVE, i)
        filler = _party_words(_REVIEW_FILLER, i)
        texts, targets = [], []
        for _ in range(rows):
            label = int(rng.integers(0, 2))
            words = positive if label else negative
            template = _REVIEW_TEMPLATES[int(rng.integers(len(_REVIEW_TEMPLATES)))]
            noun, noun2 = rng.choice(nouns, size=2, replace=False)
            word, word2 = rng.choice(words, size=2, replace=False)
            texts.append(
                template.format(
                    noun=noun, noun2=noun2, word=word, word2=word2, filler=filler[int(rng.integers(len(filler)))]
                )
            )
            targets.append(label)
        frame = pd.DataFrame({"text": texts, "target": targets})
        worker = f"worker_{i + 1}"
        root = workspace / worker / "data"
        for meta, part in split_metas(frame, seed + i).items():
            directory = root / "reviews" / meta
            directory.mkdir(parents=True, exist_ok=True)
            part.to_csv(directory / "data.csv", index=False)
            _write_metadata(directory, "text", {"max_features": 500})
        roots[worker] = root
    return roots
