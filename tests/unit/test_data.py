"""Datasets on a Worker: tag lookup is safe, preprocessing is local, alignment makes parties agree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from synergos_core.alignment import align_headers
from synergos_core.data import (
    apply_spacers,
    class_indices,
    find_dataset,
    load_meta,
    prepare_tabular,
)
from synergos_core.errors import InvalidRequest, NotFound

SCHEMA = {"age": "int64", "chol": "float64", "sex": "category", "target": "int64"}


def write_dataset(
    directory: Path,
    rows: list[dict],
    schema: dict[str, str] = SCHEMA,
    datatype: str = "tabular",
    name: str = "data.csv",
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(directory / name, index=False)
    (directory / "schema.json").write_text(json.dumps(schema))
    (directory / "metadata.json").write_text(json.dumps({"datatype": datatype, "operations": {}}))
    return directory


ROWS_A = [
    {"age": 40, "chol": 200.0, "sex": "M", "target": 0},
    {"age": 50, "chol": 250.5, "sex": "F", "target": 1},
    {"age": 60, "chol": None, "sex": "M", "target": 2},
    {"age": 70, "chol": 300.0, "sex": None, "target": 1},
]
# Party B never saw sex "F" nor class 0.
ROWS_B = [
    {"age": 30, "chol": 180.0, "sex": "M", "target": 1},
    {"age": 35, "chol": 190.0, "sex": "M", "target": 2},
]


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    write_dataset(data / "heart" / "data1" / "train", ROWS_A)
    write_dataset(data / "heart" / "data2" / "train", ROWS_B)
    return data


# ---- finding datasets ----


def test_tag_selects_dataset_by_unordered_tokens(root: Path) -> None:
    assert find_dataset(root, ["train", "data2", "heart"]) == (root / "heart" / "data2" / "train").resolve()


def test_tag_picks_first_match_in_sorted_order(root: Path) -> None:
    assert find_dataset(root, ["heart", "train"]) == (root / "heart" / "data1" / "train").resolve()


def test_unknown_tag_is_not_found(root: Path) -> None:
    with pytest.raises(NotFound) as err:
        find_dataset(root, ["heart", "nowhere"])
    assert err.value.code == "tag.not_found"
    assert "nowhere" in err.value.detail


@pytest.mark.parametrize("tag", [[".."], ["/etc"], ["a/b"], ["a\\b"], ["a\x00b"], ["x..y"], [], ["C:"]])
def test_unsafe_tokens_are_refused(root: Path, tag: list[str]) -> None:
    with pytest.raises(InvalidRequest) as err:
        find_dataset(root, tag)
    assert err.value.code == "tag.invalid"


def test_symlink_escaping_the_root_is_refused_and_not_read(
    tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = write_dataset(tmp_path / "secret" / "stolen", [{"age": 1, "chol": 1.0, "sex": "M", "target": 0}])
    (root / "stolen").symlink_to(outside, target_is_directory=True)
    opened: list[str] = []
    real_read_csv, real_read_text = pd.read_csv, Path.read_text
    monkeypatch.setattr(
        pd, "read_csv", lambda path, *a, **k: (opened.append(str(path)), real_read_csv(path, *a, **k))[1]
    )
    monkeypatch.setattr(
        Path, "read_text", lambda self, *a, **k: (opened.append(str(self)), real_read_text(self, *a, **k))[1]
    )
    with pytest.raises(InvalidRequest) as err:
        load_meta(root, [["stolen"]], "classify")
    assert err.value.code == "tag.invalid"
    assert "secret" not in err.value.detail
    assert not [path for path in opened if "secret" in path]


def test_metadata_symlink_escaping_the_root_is_refused(tmp_path: Path, root: Path) -> None:
    outside = tmp_path / "metadata.json"
    outside.write_text(json.dumps({"datatype": "tabular"}))
    dataset = root / "linked"
    dataset.mkdir()
    (dataset / "metadata.json").symlink_to(outside)
    with pytest.raises(InvalidRequest) as err:
        find_dataset(root, ["linked"])
    assert err.value.code == "tag.invalid"


def test_csv_symlink_escaping_the_root_is_not_read(tmp_path: Path, root: Path) -> None:
    outside = tmp_path / "private.csv"
    pd.DataFrame(ROWS_B).to_csv(outside, index=False)
    dataset = write_dataset(root / "mixed", ROWS_A)
    (dataset / "extra.csv").symlink_to(outside)
    with pytest.raises(InvalidRequest) as err:
        load_meta(root, [["mixed"]], "classify")
    assert err.value.code == "dataset.invalid"


def test_symlink_inside_the_root_is_followed(root: Path) -> None:
    (root / "alias").symlink_to(root / "heart" / "data2", target_is_directory=True)
    assert find_dataset(root, ["alias", "train"]) == (root / "heart" / "data2" / "train").resolve()


# ---- loading and preprocessing ----


def test_missing_target_is_an_error(root: Path) -> None:
    write_dataset(
        root / "untargeted",
        [{"age": 1, "chol": 2.0, "sex": "M"}],
        schema={"age": "int64", "chol": "float64", "sex": "category"},
    )
    with pytest.raises(InvalidRequest) as err:
        load_meta(root, [["untargeted"]], "classify")
    assert err.value.code == "dataset.invalid"
    assert "target" in err.value.detail


def test_unsupported_datatype_is_refused(root: Path) -> None:
    write_dataset(root / "pictures", ROWS_A, datatype="audio")
    with pytest.raises(InvalidRequest) as err:
        load_meta(root, [["pictures"]], "classify")
    assert err.value.code == "dataset.unsupported"


def test_no_tags_means_no_data(root: Path) -> None:
    assert load_meta(root, [], "classify") is None


def test_non_numeric_value_in_numeric_column_does_not_leak_the_value(root: Path) -> None:
    rows = [dict(ROWS_A[0], chol="zz-confidential-zz")]
    write_dataset(root / "dirty", rows)
    with pytest.raises(InvalidRequest) as err:
        load_meta(root, [["dirty"]], "classify")
    assert "zz-confidential-zz" not in err.value.detail
    assert "chol" in err.value.detail


def test_classify_preprocessing(root: Path) -> None:
    data = load_meta(root, [["data1", "train"]], "classify")
    assert data is not None
    assert data.x_headers == ["age", "chol", "sex_F", "sex_M"]
    assert data.y_headers == ["target_0", "target_1", "target_2"]
    assert data.X.dtype == np.float32 and data.y.dtype == np.float32
    assert data.X.shape == (4, 4) and data.y.shape == (4, 3)
    # Without the project's statistics, the data's own: z-scores with the population std.
    age = np.array([40, 50, 60, 70], dtype=float)
    np.testing.assert_allclose(data.X[:, 0], (age - age.mean()) / age.std(), rtol=1e-6)
    # chol's missing value is imputed with the mean of the present values, then scaled.
    present = np.array([200.0, 250.5, 300.0])
    chol = np.array([200.0, 250.5, present.mean(), 300.0])
    np.testing.assert_allclose(data.X[:, 1], (chol - present.mean()) / present.std(), rtol=1e-5, atol=1e-6)
    # sex's missing value becomes the most frequent category, M.
    np.testing.assert_array_equal(data.X[:, 2:], [[0, 1], [1, 0], [0, 1], [0, 1]])
    np.testing.assert_array_equal(class_indices(data.y), [0, 1, 2, 1])
    assert data.schema == SCHEMA
    assert data.metadata["src_count"] == 4


def test_multiple_csvs_and_tags_are_concatenated(root: Path) -> None:
    extra = root / "heart" / "data1" / "train"
    pd.DataFrame(ROWS_B).to_csv(extra / "more.csv", index=False)
    data = load_meta(root, [["data1", "train"], ["data2", "train"], ["heart", "data1", "train"]], "classify")
    assert data is not None
    # data1 (two CSVs: 4 + 2 rows) is loaded once although two tags select it, plus data2's 2 rows.
    assert data.X.shape[0] == 8


def test_regress_target_and_constant_column(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": [5.0, 5.0, 5.0], "b": [None, None, None], "target": [1.5, 2.5, 3.5]})
    data = prepare_tabular([frame], "regress", {"a": "float64", "b": "float64", "target": "float64"})
    assert data.y_headers == ["target"]
    assert data.y.shape == (3, 1)
    # the target is standardised; its shift and scale give the original units back
    np.testing.assert_allclose(data.y[:, 0], [-np.sqrt(1.5), 0, np.sqrt(1.5)], rtol=1e-6)
    np.testing.assert_allclose(data.y[:, 0] * data.target_scale + data.target_shift, [1.5, 2.5, 3.5], rtol=1e-6)
    np.testing.assert_array_equal(data.X, np.zeros((3, 2), dtype=np.float32))
    assert "target" not in data.x_headers


def test_metadata_holds_no_row_values(root: Path) -> None:
    rows = [
        {"age": 20, "chol": 111.0, "note": "alpha", "target": 0},
        {"age": 33, "chol": 987654.321, "note": "alpha", "target": 1},
        {"age": 99, "chol": 1234567.0, "note": "beta", "target": 1},
    ]
    write_dataset(
        root / "private", rows, schema={"age": "int64", "chol": "float64", "note": "object", "target": "int64"}
    )
    data = load_meta(root, [["private"]], "classify")
    assert data is not None
    dumped = json.dumps(data.metadata)
    assert "987654.321" not in dumped  # a middle value: neither min nor max
    features = data.metadata["features"]
    assert features["num_variables"]["chol"]["count"] == 3
    assert features["cat_variables"]["note"]["labels"] == ["alpha", "beta"]
    assert data.metadata["datatype"] == "tabular"


# ---- alignment on the Worker ----


def test_party_lacking_a_category_gets_zero_column_and_classes_agree(root: Path) -> None:
    party_a = load_meta(root, [["data1", "train"]], "classify")
    party_b = load_meta(root, [["data2", "train"]], "classify")
    assert party_a is not None and party_b is not None
    assert party_b.x_headers == ["age", "chol", "sex_M"]
    assert party_b.y_headers == ["target_1", "target_2"]

    alignment = align_headers({"a": {"train": party_a.headers()}, "b": {"train": party_b.headers()}})
    assert alignment.superset["X"] == ["age", "chol", "sex_F", "sex_M"]
    spacers_b = alignment.spacers["b"]["train"]
    assert spacers_b == {"X": [2], "y": [0]}

    x_b = apply_spacers(party_b.X, spacers_b["X"])
    assert x_b.shape == (2, 4)
    np.testing.assert_array_equal(x_b[:, 2], [0, 0])  # sex_F: B has none
    np.testing.assert_array_equal(x_b[:, 3], [1, 1])  # sex_M lands at the superset position
    y_b = apply_spacers(party_b.y, spacers_b["y"])
    # B's first row is class "1": the same index as on party A, not B's local index 0.
    assert class_indices(y_b).tolist() == [1, 2]
    y_a = apply_spacers(party_a.y, alignment.spacers["a"]["train"]["y"])
    assert class_indices(y_a).tolist() == [0, 1, 2, 1]


def test_apply_spacers_builds_superset_layout() -> None:
    superset = ["a", "b", "c", "d", "e"]
    own = ["b", "d"]
    matrix = np.array([[2.0, 4.0]], dtype=np.float32)
    spacers = [i for i, name in enumerate(superset) if name not in own]
    out = apply_spacers(matrix, spacers)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 2, 0, 4, 0]])
    np.testing.assert_array_equal(matrix, [[2.0, 4.0]])  # input untouched


def test_apply_spacers_refuses_out_of_range_index() -> None:
    with pytest.raises(InvalidRequest):
        apply_spacers(np.zeros((1, 2)), [7])
