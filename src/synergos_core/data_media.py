"""Image and text datasets on a Worker (datatypes `image` and `text`), loaded by `data.load_meta`.

Image dataset: `mapping.csv` (`image,target`) beside the image files. Each `image` is a plain
file name inside the dataset directory. Images are read with Pillow, converted to grayscale
(`L`) unless `operations.color` is `"RGB"`, resized to `operations.size` ([H, W], default
32x32: fixed, never derived from the data, so parties agree) and scaled to [0, 1]. X is float32
(N, C, H, W); one header per pixel position, `c<c>_h<hh>_w<ww>`, zero-padded so that the sorted
order is the C-order flattening of one image and equal sizes align without spacers.

Text dataset: `*.csv` files with a `target` column and a text column (`text`, or the only other
column). Features are a bag of words (scikit-learn CountVectorizer fitted on the texts of the
meta being loaded); the vocabulary, sorted, is the X header, so parties align words exactly as
they align tabular columns (a word a party lacks becomes a zero column). X is float32 (N, V)
counts. `operations`: `max_features` (default 1000), `lowercase` (default true), `stop_words`
("english" or null, default null), `ngram_range` ([min, max], default [1, 1]).

Unknown `operations` keys are ignored (the original passed many text-cleaning options).
Metadata holds counts and summary statistics only: never a pixel, a file name or a text.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import pandas as pd

from .data import (
    TARGET,
    Action,
    PreparedData,
    _class_label,
    _inside,
    encode_targets,
    read_metadata,
)
from .errors import ErrorCode, InvalidRequest

IMAGE_MAPPING = "mapping.csv"
IMAGE_COLUMN = "image"
TEXT_COLUMN = "text"
COLORS: dict[str, int] = {"L": 1, "RGB": 3}  # Pillow mode -> channels
DEFAULT_IMAGE_SIZE = (32, 32)
MAX_IMAGE_SIDE = 1024
# A source image larger than this is refused before decoding (decompression bombs).
MAX_SOURCE_PIXELS = 1 << 26
DEFAULT_MAX_FEATURES = 1000
MAX_FEATURES_LIMIT = 100_000
MAX_NGRAM = 5


# ---- shared helpers ----


def _operations(data_root: Path, directories: list[Path], datatype: str) -> dict[str, Any]:
    """The `operations` shared by every dataset of one meta; they must agree."""
    found = [read_metadata(data_root, d)["operations"] for d in directories]
    if any(ops != found[0] for ops in found[1:]):
        raise InvalidRequest(
            f"the {datatype} datasets selected for one meta declare different operations",
            code=ErrorCode.DATASET_INVALID,
        )
    operations: dict[str, Any] = found[0]
    return operations


def _checked_directory(data_root: Path, directory: Path) -> tuple[Path, Path]:
    root = Path(data_root).resolve()
    real = Path(directory).resolve()
    if not _inside(real, root):
        raise InvalidRequest(
            f"dataset {Path(directory).name!r} is outside the data directory", code=ErrorCode.DATASET_INVALID
        )
    return root, real


def _read_csv(path: Path, root: Path, where: str) -> pd.DataFrame:
    real = path.resolve()
    if not _inside(real, root) or not real.is_file():
        raise InvalidRequest(f"{where} is not a file inside the data directory", code=ErrorCode.DATASET_INVALID)
    try:
        # keep_default_na=False: an empty text is an empty text, not a float NaN.
        return pd.read_csv(real, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InvalidRequest(f"{where} is not a readable CSV", code=ErrorCode.DATASET_INVALID) from exc


def _typed_target(raw: pd.Series, action: Action, where: str) -> pd.Series:
    """Targets read as text: blank -> missing; numeric when every value is numeric, so that
    "1" and "1.0" name the same class as a tabular party's 1."""
    values = raw.astype(str).str.strip()
    values = values.where(values != "", np.nan)
    numeric = pd.to_numeric(values, errors="coerce")
    if bool((numeric.notna() == values.notna()).all()):
        return numeric.astype("float64")
    if action == "regress":
        raise InvalidRequest(f"{where}: regression needs a numeric target", code=ErrorCode.DATASET_INVALID)
    return values.astype(object)


def _target_summary(target: pd.Series, action: Action) -> dict[str, Any]:
    if action == "classify":
        counts = target.map(_class_label).value_counts()
        return {"count": len(target), "classes": {str(k): int(v) for k, v in sorted(counts.items())}}
    values = target.to_numpy(dtype="float64")
    return {
        "count": len(values),
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else None,
        "min": float(values.min()),
        "max": float(values.max()),
    }


def _target_type(action: Action) -> str:
    return "category" if action == "classify" else "float64"


# ---- images ----


def image_headers(channels: int, height: int, width: int) -> list[str]:
    """Pixel headers `c<c>_h<h>_w<w>`, zero-padded: sorted order == C-order of (C, H, W)."""
    cw, hw, ww = (len(str(max(n - 1, 0))) for n in (channels, height, width))
    return [
        f"c{c:0{cw}d}_h{h:0{hw}d}_w{w:0{ww}d}" for c in range(channels) for h in range(height) for w in range(width)
    ]


def image_options(operations: dict[str, Any]) -> tuple[str, tuple[int, int]]:
    """(Pillow mode, (H, W)) from `operations`: `color` "L" (default) or "RGB"; `size` [H, W]."""
    color = operations.get("color", "L")
    if isinstance(color, str) and color.upper() in COLORS:
        color = color.upper()
    else:
        raise InvalidRequest(f"operations.color must be one of {sorted(COLORS)}", code=ErrorCode.DATASET_INVALID)
    size = operations.get("size")
    if size is None:
        return color, DEFAULT_IMAGE_SIZE
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_IMAGE_SIDE for n in size)
    ):
        raise InvalidRequest(
            f"operations.size must be [height, width], integers from 1 to {MAX_IMAGE_SIDE}",
            code=ErrorCode.DATASET_INVALID,
        )
    return color, (int(size[0]), int(size[1]))


def _image_path(directory: Path, name: Any, row: int) -> Path:
    """The image file named on `row` of mapping.csv: a plain file name inside `directory`."""
    refused = InvalidRequest(
        f"row {row} of {IMAGE_MAPPING} does not name a plain image file inside the dataset",
        code=ErrorCode.DATASET_INVALID,
    )
    if not isinstance(name, str):
        raise refused
    name = name.strip()
    if (
        not name
        or name in {".", ".."}
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or ".." in name
        or PurePosixPath(name).is_absolute()
        or PureWindowsPath(name).is_absolute()
        or PureWindowsPath(name).drive
        or ":" in name
    ):
        raise refused
    path = directory / name
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise refused from None
    if not real.is_relative_to(directory) or not real.is_file():
        raise refused
    return Path(real)


def _read_image(path: Path, color: str, size: tuple[int, int], row: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_SOURCE_PIXELS:
                raise InvalidRequest(
                    f"the image on row {row} of {IMAGE_MAPPING} is too large", code=ErrorCode.DATASET_INVALID
                )
            converted = image.convert(color)
            if converted.size != (size[1], size[0]):
                converted = converted.resize((size[1], size[0]), resample=Image.Resampling.BILINEAR)
            pixels = np.asarray(converted, dtype=np.float32) / 255.0
    except InvalidRequest:
        raise
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise InvalidRequest(
            f"the image on row {row} of {IMAGE_MAPPING} is not a readable image", code=ErrorCode.DATASET_INVALID
        ) from exc
    if pixels.ndim == 2:
        pixels = pixels[None, :, :]
    else:
        pixels = np.transpose(pixels, (2, 0, 1))
    return pixels


def read_images(
    data_root: Path, directory: Path, color: str, size: tuple[int, int], action: Action
) -> tuple[np.ndarray, pd.Series]:
    """One image dataset: X float32 (N, C, H, W) in [0, 1] and its targets. Rows without a
    target are dropped (a label is never invented)."""
    root, real = _checked_directory(data_root, directory)
    name = Path(directory).name
    mapping = _read_csv(real / IMAGE_MAPPING, root, f"{IMAGE_MAPPING} of dataset {name!r}")
    missing = [col for col in (IMAGE_COLUMN, TARGET) if col not in mapping.columns]
    if missing:
        raise InvalidRequest(
            f"{IMAGE_MAPPING} of dataset {name!r} has no {missing} column(s)", code=ErrorCode.DATASET_INVALID
        )
    target = _typed_target(mapping[TARGET], action, f"{IMAGE_MAPPING} of dataset {name!r}")
    keep = target.notna().to_numpy()
    rows = np.flatnonzero(keep)
    paths = [_image_path(real, mapping[IMAGE_COLUMN].iloc[i], int(i) + 2) for i in rows]  # +2: header, 1-based
    channels = COLORS[color]
    X = np.empty((len(paths), channels, size[0], size[1]), dtype=np.float32)
    for k, (i, path) in enumerate(zip(rows, paths, strict=False)):
        X[k] = _read_image(path, color, size, int(i) + 2)
    return X, target[keep].reset_index(drop=True)


def load_image_meta(data_root: Path, directories: list[Path], action: Action) -> PreparedData:
    """Load and concatenate the image datasets of one meta into PreparedData (X (N, C, H, W))."""
    color, size = image_options(_operations(data_root, directories, "image"))
    parts = [read_images(data_root, d, color, size, action) for d in directories]
    X = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    target = pd.concat([p[1] for p in parts], ignore_index=True) if len(parts) > 1 else parts[0][1]
    if len(target) == 0:
        raise InvalidRequest("the data has no row with a target value", code=ErrorCode.DATASET_INVALID)
    y, y_headers = encode_targets(target, action)
    channels = COLORS[color]
    metadata = {
        "src_count": len(target),
        "datatype": "image",
        "pixel_height": size[0],
        "pixel_width": size[1],
        "color": color,
        "channels": channels,
        "target": _target_summary(target, action),
    }
    return PreparedData(
        X=X,
        y=y,
        x_headers=image_headers(channels, *size),
        y_headers=y_headers,
        schema={IMAGE_COLUMN: "image", TARGET: _target_type(action)},
        metadata=metadata,
    )


# ---- texts ----


def text_options(operations: dict[str, Any]) -> dict[str, Any]:
    """CountVectorizer arguments from `operations` (validated; unknown keys ignored)."""
    max_features = operations.get("max_features", DEFAULT_MAX_FEATURES)
    if max_features is not None and (
        not isinstance(max_features, int)
        or isinstance(max_features, bool)
        or not 1 <= max_features <= MAX_FEATURES_LIMIT
    ):
        raise InvalidRequest(
            f"operations.max_features must be an integer from 1 to {MAX_FEATURES_LIMIT}", code=ErrorCode.DATASET_INVALID
        )
    lowercase = operations.get("lowercase", True)
    if not isinstance(lowercase, bool):
        raise InvalidRequest("operations.lowercase must be true or false", code=ErrorCode.DATASET_INVALID)
    stop_words = operations.get("stop_words")
    if stop_words not in (None, "english"):
        raise InvalidRequest('operations.stop_words must be "english" or null', code=ErrorCode.DATASET_INVALID)
    ngram = operations.get("ngram_range", [1, 1])
    if (
        not isinstance(ngram, (list, tuple))
        or len(ngram) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in ngram)
        or not 1 <= ngram[0] <= ngram[1] <= MAX_NGRAM
    ):
        raise InvalidRequest(
            f"operations.ngram_range must be [min, max] with 1 <= min <= max <= {MAX_NGRAM}",
            code=ErrorCode.DATASET_INVALID,
        )
    return {
        "max_features": max_features,
        "lowercase": lowercase,
        "stop_words": stop_words,
        "ngram_range": (int(ngram[0]), int(ngram[1])),
    }


def read_texts(data_root: Path, directory: Path, action: Action) -> tuple[list[str], pd.Series]:
    """Every `*.csv` directly in one text dataset: texts and targets (rows without a target dropped)."""
    root, real = _checked_directory(data_root, directory)
    name = Path(directory).name
    csvs = sorted(p for p in real.iterdir() if p.suffix.lower() == ".csv")
    if not csvs:
        raise InvalidRequest(f"dataset {name!r} holds no CSV file", code=ErrorCode.DATASET_INVALID)
    texts: list[str] = []
    targets: list[pd.Series] = []
    for csv in csvs:
        where = f"{csv.name} of dataset {name!r}"
        frame = _read_csv(csv, root, where)
        if TARGET not in frame.columns:
            raise InvalidRequest(f"{where} has no '{TARGET}' column", code=ErrorCode.DATASET_INVALID)
        others = [c for c in frame.columns if c != TARGET]
        if TEXT_COLUMN in frame.columns:
            column = TEXT_COLUMN
        elif len(others) == 1:
            column = others[0]
        else:
            raise InvalidRequest(
                f"{where} needs a '{TEXT_COLUMN}' column or exactly one column besides '{TARGET}'",
                code=ErrorCode.DATASET_INVALID,
            )
        target = _typed_target(frame[TARGET], action, where)
        keep = target.notna().to_numpy()
        texts.extend(str(t) for t in frame[column].to_numpy()[keep])
        targets.append(target[keep])
    # encode_targets names classes with _class_label, so 1.0 in one file and "1" in another agree.
    return texts, pd.concat(targets, ignore_index=True)


def load_text_meta(data_root: Path, directories: list[Path], action: Action) -> PreparedData:
    """Load the text datasets of one meta into a bag of words, X float32 (N, V) counts."""
    from sklearn.feature_extraction.text import CountVectorizer

    options = text_options(_operations(data_root, directories, "text"))
    texts: list[str] = []
    targets: list[pd.Series] = []
    for directory in directories:
        part_texts, part_target = read_texts(data_root, directory, action)
        texts.extend(part_texts)
        targets.append(part_target)
    target = pd.concat(targets, ignore_index=True)
    if not texts:
        raise InvalidRequest("the data has no row with a target value", code=ErrorCode.DATASET_INVALID)
    vectorizer = CountVectorizer(dtype=np.float32, **options)
    try:
        counts = vectorizer.fit_transform(texts)
    except ValueError as exc:  # "empty vocabulary": no text holds a word
        raise InvalidRequest(
            "the texts hold no word to build a vocabulary from", code=ErrorCode.DATASET_INVALID
        ) from exc
    words = [str(w) for w in vectorizer.get_feature_names_out()]
    order = sorted(range(len(words)), key=lambda i: words[i])
    x_headers = [words[i] for i in order]
    X = np.asarray(counts[:, order].toarray(), dtype=np.float32)
    y, y_headers = encode_targets(target, action)

    tokenize, preprocess = vectorizer.build_tokenizer(), vectorizer.build_preprocessor()
    word_counts = np.array([len(tokenize(preprocess(t))) for t in texts], dtype=np.float64)
    cells = X.shape[0] * X.shape[1]
    metadata = {
        "src_count": len(texts),
        "datatype": "text",
        "representation": "bag_of_words",
        "vocabulary_size": len(x_headers),
        "word_count": float(word_counts.mean()),
        "sparsity": float(1.0 - counts.nnz / cells) if cells else 1.0,
        "target": _target_summary(target, action),
    }
    return PreparedData(
        X=X,
        y=y,
        x_headers=x_headers,
        y_headers=y_headers,
        schema={TEXT_COLUMN: "text", TARGET: _target_type(action)},
        metadata=metadata,
    )
