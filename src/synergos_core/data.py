"""Datasets on a Worker: find a dataset by tag, load it, preprocess it locally.

A directory under the data root holding `metadata.json` is a dataset; a tag (a list of plain
tokens) selects the first one, in sorted path order, whose path components contain every token.
Loading dispatches on metadata.json's `datatype`: `tabular` here, `image` and `text` in
`data_media` (imported lazily, so a tabular-only Worker never imports Pillow or scikit-learn).

Only headers, schemas and summary metadata may leave the Worker: `PreparedData.metadata` holds
counts and moments, never a row, a pixel or a text.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

import numpy as np
import pandas as pd

from .errors import ErrorCode, InvalidRequest, NotFound
from .preprocessing import (
    Preprocessing,
    Statistics,
    category_fill,
    frame_statistics,
    impute_numeric,
    scale_numeric,
    target_transform,
)
from .schemas import check_tag

Action = Literal["classify", "regress"]
ACTIONS: tuple[str, ...] = ("classify", "regress")
TARGET = "target"
NUMERIC_TYPES: tuple[str, ...] = ("int32", "int64", "float64")
CATEGORICAL_TYPES: tuple[str, ...] = ("category", "object")
# metadata.json and schema.json are small descriptors; a huge one is a mistake or an attack.
_MAX_DESCRIPTOR_BYTES = 1 << 20


@dataclass
class PreparedData:
    """One meta's data, preprocessed and ready for a model.

    `X` is float32 with one feature per name in `x_headers` (sorted): (N, F) for tabular and
    text data, (N, C, H, W) for images (headers `c<c>_h<h>_w<w>`, whose sorted order is the
    C-order flattening of one image). `y` is float32 (N, K) with columns `y_headers` (one-hot
    `target_<class>` for classify, `["target"]` for regress). `schema` and `metadata` are
    summaries that may be sent to the TTP.
    """

    X: np.ndarray
    y: np.ndarray
    x_headers: list[str]
    y_headers: list[str]
    schema: dict[str, str]
    metadata: dict[str, Any] = field(default_factory=dict)
    # a regression target as the model sees it is (y - target_shift) / target_scale
    target_shift: float = 0.0
    target_scale: float = 1.0
    # the aggregates of these rows when they were computed: always for tabular data prepared
    # without the project's statistics (as polled at alignment); None otherwise
    statistics: Statistics | None = None

    def headers(self) -> dict[str, list[str]]:
        """The headers the TTP aligns: `{"X": [...], "y": [...]}`."""
        return {"X": list(self.x_headers), "y": list(self.y_headers)}


# ---- finding a dataset by tag ----


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _checked_tokens(tag: list[str]) -> list[str]:
    try:
        check_tag(tag)
    except ValueError as exc:
        raise InvalidRequest(str(exc), code=ErrorCode.TAG_INVALID) from exc
    # check_tag already rejects separators; repeat the path-safety rules here so that this
    # module stays safe even if the token pattern is ever loosened (e.g. "a..b" passes it).
    for token in tag:
        if (
            "/" in token
            or "\\" in token
            or "\x00" in token
            or ".." in token
            or PurePosixPath(token).is_absolute()
            or PureWindowsPath(token).is_absolute()
            or PureWindowsPath(token).drive
        ):
            raise InvalidRequest(f"tag token {token!r} is not a plain name", code=ErrorCode.TAG_INVALID)
    return list(tag)


def _walk_datasets(root: Path) -> list[tuple[tuple[str, ...], Path, bool]]:
    """Every dataset under `root` as (path components, directory, escapes_root).

    Symlinked directories are followed only when they resolve inside the root (each real
    directory once, so link cycles end); one that escapes is recorded, never listed, so a tag
    selecting it can be refused rather than silently reported as missing.
    """
    found: list[tuple[tuple[str, ...], Path, bool]] = []
    visited = {root}
    stack: list[tuple[Path, tuple[str, ...]]] = [(root, ())]
    while stack:
        directory, parts = stack.pop()
        meta = directory / "metadata.json"
        if meta.is_symlink() or meta.exists():
            real = meta.resolve()
            if not _inside(real, root):
                found.append((parts, directory, True))
            elif real.is_file():
                found.append((parts, directory, False))
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue
        children: list[tuple[Path, tuple[str, ...]]] = []
        for entry in entries:
            child = Path(entry.path)
            try:
                is_link = entry.is_symlink()
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if not is_link and not is_dir:
                continue
            try:
                real = child.resolve(strict=True)
            except (OSError, RuntimeError):  # dangling link or link loop
                continue
            if not real.is_dir():
                continue
            if not _inside(real, root):
                found.append((parts + (entry.name,), child, True))
                continue
            if real in visited:
                continue
            visited.add(real)
            children.append((child, parts + (entry.name,)))
        stack.extend(reversed(children))
    return found


def find_dataset(data_root: Path, tag: list[str]) -> Path:
    """The resolved directory of the first dataset (sorted path order) matching `tag`.

    Raises InvalidRequest(`tag.invalid`) for a token that is not a plain name or when the
    selected dataset resolves outside `data_root`; NotFound(`tag.not_found`) when nothing
    matches. Nothing outside the data root is ever read.
    """
    tokens = set(_checked_tokens(tag))
    root = Path(data_root).resolve()
    if not root.is_dir():
        raise NotFound(
            f"no dataset matches tag {tag!r}: the data directory does not exist", code=ErrorCode.TAG_NOT_FOUND
        )
    for parts, directory, escapes in sorted(_walk_datasets(root), key=lambda item: item[0]):
        if not tokens <= set(parts):
            continue
        real = directory.resolve()
        if escapes or not _inside(real, root) or not _inside((real / "metadata.json").resolve(), root):
            raise InvalidRequest(
                f"tag {tag!r} selects a dataset outside the data directory", code=ErrorCode.TAG_INVALID
            )
        return real
    raise NotFound(f"no dataset matches tag {tag!r}", code=ErrorCode.TAG_NOT_FOUND)


def _read_json(path: Path, root: Path, what: str) -> Any:
    real = path.resolve()
    if not _inside(real, root):
        raise InvalidRequest(
            f"{what} of dataset {path.parent.name!r} points outside the data directory", code=ErrorCode.DATASET_INVALID
        )
    if not real.is_file():
        raise InvalidRequest(f"dataset {path.parent.name!r} has no {what}", code=ErrorCode.DATASET_INVALID)
    if real.stat().st_size > _MAX_DESCRIPTOR_BYTES:
        raise InvalidRequest(f"{what} of dataset {path.parent.name!r} is too large", code=ErrorCode.DATASET_INVALID)
    try:
        return json.loads(real.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(
            f"{what} of dataset {path.parent.name!r} is not valid JSON", code=ErrorCode.DATASET_INVALID
        ) from exc


def read_metadata(data_root: Path, directory: Path) -> dict[str, Any]:
    """`directory/metadata.json` as `{"datatype": str, "operations": dict}` (InvalidRequest if malformed)."""
    meta = _read_json(Path(directory) / "metadata.json", Path(data_root).resolve(), "metadata.json")
    if not isinstance(meta, dict) or not isinstance(meta.get("datatype"), str):
        raise InvalidRequest(
            f"metadata.json of dataset {Path(directory).name!r} needs a string 'datatype'",
            code=ErrorCode.DATASET_INVALID,
        )
    operations = meta.get("operations")
    if operations is None:
        operations = {}
    if not isinstance(operations, dict):
        raise InvalidRequest(
            f"metadata.json of dataset {Path(directory).name!r}: 'operations' must be an object",
            code=ErrorCode.DATASET_INVALID,
        )
    return {"datatype": meta["datatype"], "operations": operations}


def read_datatype(data_root: Path, directory: Path) -> str:
    """The `datatype` declared by `directory/metadata.json` (InvalidRequest if malformed)."""
    return str(read_metadata(data_root, directory)["datatype"])


# ---- tabular ----


def read_tabular(data_root: Path, directory: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """All `*.csv` directly in `directory`, typed by the `schema.json` beside them.

    Numeric columns come back as float64 (NaN where missing), categorical ones as object
    strings. Every column needs a type in the schema and `target` is required.
    """
    root = Path(data_root).resolve()
    directory = Path(directory)
    name = directory.name
    if not _inside(directory.resolve(), root):
        raise InvalidRequest(f"dataset {name!r} is outside the data directory", code=ErrorCode.DATASET_INVALID)
    raw_schema = _read_json(directory / "schema.json", root, "schema.json")
    if not isinstance(raw_schema, dict) or not all(
        isinstance(k, str) and v in NUMERIC_TYPES + CATEGORICAL_TYPES for k, v in raw_schema.items()
    ):
        raise InvalidRequest(
            f"schema.json of dataset {name!r} must map columns to one of "
            f"{', '.join(NUMERIC_TYPES + CATEGORICAL_TYPES)}",
            code=ErrorCode.DATASET_INVALID,
        )
    schema: dict[str, str] = dict(raw_schema)
    csvs = sorted(p for p in directory.iterdir() if p.suffix.lower() == ".csv")
    if not csvs:
        raise InvalidRequest(f"dataset {name!r} holds no CSV file", code=ErrorCode.DATASET_INVALID)
    frames = []
    for csv in csvs:
        real = csv.resolve()
        if not _inside(real, root) or not real.is_file():
            raise InvalidRequest(
                f"{csv.name} of dataset {name!r} is not a file inside the data directory",
                code=ErrorCode.DATASET_INVALID,
            )
        try:
            # Read as text first: typing happens below so that errors name the column, never a cell.
            frame = pd.read_csv(real, dtype=str)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise InvalidRequest(
                f"{csv.name} of dataset {name!r} is not a readable CSV", code=ErrorCode.DATASET_INVALID
            ) from exc
        frames.append(_typed(frame, schema, f"{csv.name} of dataset {name!r}"))
    combined = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    used = {col: schema[col] for col in combined.columns}
    return combined, used


def _typed(frame: pd.DataFrame, schema: dict[str, str], where: str) -> pd.DataFrame:
    if TARGET not in frame.columns:
        raise InvalidRequest(f"{where} has no '{TARGET}' column", code=ErrorCode.DATASET_INVALID)
    untyped = [col for col in frame.columns if col not in schema]
    if untyped:
        raise InvalidRequest(f"{where}: columns {untyped} have no type in schema.json", code=ErrorCode.DATASET_INVALID)
    typed: dict[str, pd.Series] = {}
    for col in frame.columns:
        if schema[col] in NUMERIC_TYPES:
            try:
                typed[col] = pd.to_numeric(frame[col], errors="raise").astype("float64")
            except (ValueError, TypeError):
                # pandas' message quotes the offending cell; a row value must not leave the Worker.
                raise InvalidRequest(
                    f"{where}: column {col!r} is typed {schema[col]} but holds non-numeric values",
                    code=ErrorCode.DATASET_INVALID,
                ) from None
        else:
            typed[col] = frame[col].astype(object).where(frame[col].notna(), np.nan)
    return pd.DataFrame(typed, index=frame.index)


def _class_label(value: Any) -> str:
    # 1, 1.0 and "1" must name the same class whichever party or file they came from.
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _summary(frame: pd.DataFrame, schema: dict[str, str]) -> dict[str, Any]:
    """Counts, moments and labels per column: what the TTP may see. No row values."""

    def num(value: Any) -> float | None:
        return float(value) if value is not None and np.isfinite(value) else None

    numeric: dict[str, Any] = {}
    categorical: dict[str, Any] = {}
    for col in sorted(frame.columns):
        series = frame[col]
        if schema[col] in NUMERIC_TYPES:
            numeric[col] = {
                "count": int(series.count()),
                "mean": num(series.mean()),
                "std": num(series.std()),
                "min": num(series.min()),
                "max": num(series.max()),
                "datatype": schema[col],
            }
        else:
            labels = sorted({_class_label(v) for v in series.dropna()})
            categorical[col] = {
                "count": int(series.count()),
                "unique": len(labels),
                "labels": labels,
                "datatype": schema[col],
            }
    return {
        "src_count": len(frame),
        "datatype": "tabular",
        "features": {"num_variables": numeric, "cat_variables": categorical},
    }


def _inferred_type(series: pd.Series) -> str:
    if pd.api.types.is_integer_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return "int64"
    if isinstance(series.dtype, pd.CategoricalDtype):
        return "category"
    return "float64" if pd.api.types.is_float_dtype(series) else "object"


def _tabular_frame(
    frames: Sequence[pd.DataFrame], action: Action, schema: dict[str, str] | None
) -> tuple[pd.DataFrame, dict[str, str]]:
    """The frames concatenated, typed by `schema` (inferred from dtypes when None), rows without a
    target dropped: inventing a label would invent ground truth."""
    if action not in ACTIONS:
        raise InvalidRequest(f"action must be one of {ACTIONS}", code=ErrorCode.REQUEST_INVALID)
    if not frames:
        raise InvalidRequest("no data to prepare", code=ErrorCode.DATASET_INVALID)
    frame = pd.concat(list(frames), ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    if TARGET not in frame.columns:
        raise InvalidRequest(f"the data has no '{TARGET}' column", code=ErrorCode.DATASET_INVALID)
    if schema is None:
        schema = {col: _inferred_type(frame[col]) for col in frame.columns}
    schema = {col: schema.get(col, "object") for col in frame.columns}
    if action == "regress" and schema[TARGET] not in NUMERIC_TYPES:
        raise InvalidRequest("regression needs a numeric target", code=ErrorCode.DATASET_INVALID)
    frame = frame[frame[TARGET].notna()].reset_index(drop=True)
    if frame.empty:
        raise InvalidRequest("the data has no row with a target value", code=ErrorCode.DATASET_INVALID)
    return frame, schema


def _statistics_of(frame: pd.DataFrame, schema: dict[str, str], action: Action) -> Statistics:
    numeric = [c for c in frame.columns if c != TARGET and schema[c] in NUMERIC_TYPES]
    categorical = [c for c in frame.columns if c != TARGET and schema[c] not in NUMERIC_TYPES]
    return frame_statistics(frame, numeric, categorical, TARGET if action == "regress" else None, _class_label)


def tabular_statistics(
    frames: Sequence[pd.DataFrame], action: Action, schema: dict[str, str] | None = None
) -> Statistics:
    """The aggregates a party may report of these frames (its train split): counts, sums, sums of
    squares, min, max per numeric column, counts per category; never a row."""
    frame, schema = _tabular_frame(frames, action, schema)
    return _statistics_of(frame, schema, action)


def prepare_tabular(
    frames: Sequence[pd.DataFrame],
    action: Action,
    schema: dict[str, str] | None = None,
    preprocessing: Preprocessing | None = None,
) -> PreparedData:
    """Concatenate `frames` and preprocess them into model-ready matrices with `preprocessing`.

    Missing values are imputed (numeric: the statistics' mean; categorical: their most frequent
    category), categories are one-hot encoded as `<col>_<value>`, feature names sorted, numeric
    features scaled as `preprocessing.scaling` says with its statistics (see
    `synergos_core.preprocessing`), and a regression target standardised unless
    `target_scaling` is `none`. Every split of a run gets the same `preprocessing`, so a raw value
    becomes the same input in each; without one, these frames' own statistics are used (standard
    scaling). A column the statistics do not know (no train split has it) falls back to these
    frames' own. Rows without a target are dropped. `schema` defaults to one inferred from the dtypes.
    """
    frame, schema = _tabular_frame(frames, action, schema)
    metadata = _summary(frame, schema)
    own: Statistics | None = None
    if preprocessing is None:
        own = _statistics_of(frame, schema, action)
        preprocessing = Preprocessing(source="local", statistics=own)
    stats = preprocessing.statistics

    def fallback() -> Statistics:
        nonlocal own
        if own is None:
            own = _statistics_of(frame, schema, action)
        return own

    columns: dict[str, np.ndarray] = {}
    for col in frame.columns:
        if col == TARGET:
            continue
        series = frame[col]
        if schema[col] in NUMERIC_TYPES:
            values = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64")
            known = stats.numeric.get(col) or fallback().numeric.get(col)
            if col in columns:
                raise InvalidRequest(
                    f"feature name {col!r} is produced twice; rename a column", code=ErrorCode.DATASET_INVALID
                )
            columns[col] = scale_numeric(impute_numeric(values, known), known, preprocessing.scaling)
        else:
            labels = series.map(_class_label, na_action="ignore")
            fill = category_fill(stats.categorical.get(col)) or category_fill(fallback().categorical.get(col))
            # An all-missing category yields no indicator columns: after alignment the party
            # simply has zeros there, which is what "unknown" should mean.
            if fill is None:
                continue
            filled = labels.fillna(fill)
            for value in sorted(set(filled)):
                name = f"{col}_{value}"
                if name in columns:
                    raise InvalidRequest(
                        f"feature name {name!r} is produced twice; rename a column", code=ErrorCode.DATASET_INVALID
                    )
                columns[name] = (filled == value).to_numpy(dtype="float64")
    x_headers = sorted(columns)
    n_rows = len(frame)
    X = (np.column_stack([columns[h] for h in x_headers]) if x_headers else np.zeros((n_rows, 0))).astype(np.float32)

    y, y_headers = encode_targets(frame[TARGET], action)
    shift, scale = (0.0, 1.0)
    if action == "regress":
        shift, scale = target_transform(preprocessing)
        y = ((frame[TARGET].to_numpy(dtype="float64") - shift) / scale).reshape(-1, 1).astype(np.float32)
    return PreparedData(
        X=X,
        y=y,
        x_headers=x_headers,
        y_headers=y_headers,
        schema=dict(sorted(schema.items())),
        metadata=metadata,
        target_shift=shift,
        target_scale=scale,
        statistics=own,
    )


def encode_targets(target: pd.Series, action: Action) -> tuple[np.ndarray, list[str]]:
    """y as float32 (N, K) and its headers: one-hot `target_<class>` columns in sorted order for
    classify, a single `target` column for regress. `target` must hold no missing value."""
    n_rows = len(target)
    if action == "classify":
        labels = target.map(_class_label)
        y_headers = sorted(f"{TARGET}_{label}" for label in set(labels))
        index = {h: i for i, h in enumerate(y_headers)}
        y = np.zeros((n_rows, len(y_headers)), dtype=np.float32)
        y[np.arange(n_rows), [index[f"{TARGET}_{label}"] for label in labels]] = 1.0
        return y, y_headers
    return target.to_numpy(dtype="float64").reshape(-1, 1).astype(np.float32), [TARGET]


def _read_tabular_meta(data_root: Path, directories: list[Path]) -> tuple[list[pd.DataFrame], dict[str, str]]:
    frames: list[pd.DataFrame] = []
    schema: dict[str, str] = {}
    for directory in directories:
        frame, types = read_tabular(data_root, directory)
        for col, dtype in types.items():
            known = schema.get(col)
            if known is not None and (known in NUMERIC_TYPES) != (dtype in NUMERIC_TYPES):
                raise InvalidRequest(
                    f"column {col!r} is numeric in one dataset and categorical in another",
                    code=ErrorCode.DATASET_INVALID,
                )
            schema.setdefault(col, dtype)
        frames.append(frame)
    return frames, schema


def _load_tabular_meta(
    data_root: Path, directories: list[Path], action: Action, preprocessing: Preprocessing | None
) -> PreparedData:
    frames, schema = _read_tabular_meta(data_root, directories)
    return prepare_tabular(frames, action, schema, preprocessing)


def _load_image_meta(
    data_root: Path, directories: list[Path], action: Action, preprocessing: Preprocessing | None
) -> PreparedData:
    from .data_media import load_image_meta  # Pillow is imported only when images are loaded

    return load_image_meta(data_root, directories, action)  # pixels are in [0, 1] already


def _load_text_meta(
    data_root: Path, directories: list[Path], action: Action, preprocessing: Preprocessing | None
) -> PreparedData:
    from .data_media import load_text_meta  # scikit-learn is imported only when texts are loaded

    return load_text_meta(data_root, directories, action)  # word counts, as they are


# One loader per datatype: (data_root, dataset directories of one meta, action, preprocessing) -> PreparedData.
# Tabular data is imputed and scaled with the run's statistics; images and texts have fixed encodings.
_LOADERS: dict[str, Callable[[Path, list[Path], Action, Preprocessing | None], PreparedData]] = {
    "tabular": _load_tabular_meta,
    "image": _load_image_meta,
    "text": _load_text_meta,
}


def _meta_datasets(data_root: Path, tags: list[list[str]]) -> tuple[str, list[Path]]:
    directories: list[Path] = []
    for tag in tags:
        directory = find_dataset(data_root, tag)
        if directory not in directories:
            directories.append(directory)
    datatypes = {read_datatype(data_root, d) for d in directories}
    if len(datatypes) > 1:
        raise InvalidRequest(
            f"the tags select datasets of different datatypes {sorted(datatypes)}", code=ErrorCode.DATASET_MIXED
        )
    datatype = datatypes.pop()
    if datatype not in _LOADERS:
        raise InvalidRequest(f"datatype {datatype!r} is not supported yet", code=ErrorCode.DATASET_UNSUPPORTED)
    return datatype, directories


def load_meta(
    data_root: Path, tags: list[list[str]], action: Action, preprocessing: Preprocessing | None = None
) -> PreparedData | None:
    """Find every tag's dataset, load them, concatenate and prepare them; None when no tags.

    All datasets of one meta must share a datatype (InvalidRequest `dataset.mixed` otherwise).
    A dataset selected by two tags is loaded once, so its rows are not counted twice. Tabular data
    is imputed and scaled with `preprocessing` (see `prepare_tabular`).
    """
    if action not in ACTIONS:
        raise InvalidRequest(f"action must be one of {ACTIONS}", code=ErrorCode.REQUEST_INVALID)
    if not tags:
        return None
    datatype, directories = _meta_datasets(data_root, tags)
    return _LOADERS[datatype](data_root, directories, action, preprocessing)


def train_statistics(data_root: Path, tags: list[list[str]], action: Action) -> Statistics | None:
    """The aggregates of the tagged (train) data a party reports during alignment; None when there
    are no tags or the data is not tabular (images and texts are encoded without statistics)."""
    if action not in ACTIONS:
        raise InvalidRequest(f"action must be one of {ACTIONS}", code=ErrorCode.REQUEST_INVALID)
    if not tags:
        return None
    datatype, directories = _meta_datasets(data_root, tags)
    if datatype != "tabular":
        return None
    frames, schema = _read_tabular_meta(data_root, directories)
    return tabular_statistics(frames, action, schema)


def align_columns(matrix: np.ndarray, headers: list[str], superset: list[str]) -> np.ndarray:
    """The columns of `matrix` (named `headers`) placed at their positions in `superset`, zeros
    where this party lacks a feature. A header outside the superset is feature drift (422)."""
    if matrix.ndim != 2:
        raise InvalidRequest("columns align on a 2-D matrix", code=ErrorCode.ALIGNMENT_INVALID)
    index = {name: i for i, name in enumerate(superset)}
    unknown = [h for h in headers if h not in index]
    if unknown:
        raise InvalidRequest(
            f"feature drift: the data has {len(unknown)} feature(s) the project was not aligned on, e.g. {unknown[:5]}",
            code=ErrorCode.PREDICTION_FEATURE_DRIFT,
        )
    out = np.zeros((matrix.shape[0], len(superset)), dtype=matrix.dtype)
    out[:, [index[h] for h in headers]] = matrix
    return out


# ---- alignment on the Worker ----


def apply_spacers(matrix: np.ndarray, spacers: list[int]) -> np.ndarray:
    """Insert zero columns at `spacers`, indices of the final (superset) layout.

    Columns are inserted one at a time in ascending order, so a party whose columns are its
    sorted headers ends up with the superset's columns in superset order. Returns a new array
    of the same dtype.

    Images (rank > 2, (N, C, H, W)) cannot take spacers: a pixel header another party has and
    this one lacks means the parties disagree on image size or colour. Without spacers the
    array is returned as is; with any, InvalidRequest `alignment.image_mismatch`.
    """
    if matrix.ndim > 2:
        if not list(spacers):
            return matrix
        raise InvalidRequest("image parties disagree on size/colour", code=ErrorCode.ALIGNMENT_IMAGE_MISMATCH)
    if matrix.ndim != 2:
        raise InvalidRequest("spacers apply to a 2-D matrix", code=ErrorCode.ALIGNMENT_INVALID)
    result = matrix
    for index in sorted(int(i) for i in spacers):
        if not 0 <= index <= result.shape[1]:
            raise InvalidRequest(f"spacer index {index} is outside the aligned width", code=ErrorCode.ALIGNMENT_INVALID)
        result = np.insert(result, index, 0, axis=1)
    return result if result is not matrix else matrix.copy()


def class_indices(y_onehot_aligned: np.ndarray) -> np.ndarray:
    """Class index per row (argmax over aligned one-hot columns), int64, shape (N,)."""
    if y_onehot_aligned.ndim != 2 or y_onehot_aligned.shape[1] == 0:
        raise InvalidRequest(
            "class indices need a one-hot matrix with at least one column", code=ErrorCode.ALIGNMENT_INVALID
        )
    indices: np.ndarray = np.argmax(y_onehot_aligned, axis=1).astype(np.int64)
    return indices
