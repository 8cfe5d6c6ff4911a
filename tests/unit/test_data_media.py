"""Image and text datasets: they load to model-ready arrays, align across parties like tabular
headers, refuse paths that leave the dataset, and leak no pixel or sentence in their metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from synergos_core.alignment import align_headers
from synergos_core.data import apply_spacers, class_indices, load_meta
from synergos_core.data_media import image_headers
from synergos_core.errors import InvalidRequest
from synergos_local import datasets


def write_metadata(directory: Path, datatype: str, operations: dict | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metadata.json").write_text(json.dumps({"datatype": datatype, "operations": operations or {}}))


def write_images(
    directory: Path,
    rows: list[tuple[str, object]],
    operations: dict | None = None,
    size: tuple[int, int] = (10, 12),
    mode: str = "RGB",
) -> Path:
    """Images of varied sizes and modes (the loader must normalise them) plus mapping.csv."""
    write_metadata(directory, "image", operations)
    rng = np.random.default_rng(len(rows))
    for name, _ in rows:
        if not name or "/" in name or name.startswith(".."):
            continue
        pixels = rng.integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8)
        Image.fromarray(pixels).convert(mode).save(directory / name)
    pd.DataFrame({"image": [r[0] for r in rows], "target": [r[1] for r in rows]}).to_csv(
        directory / "mapping.csv", index=False
    )
    return directory


def write_texts(
    directory: Path, rows: list[tuple[str, object]], operations: dict | None = None, column: str = "text"
) -> Path:
    write_metadata(directory, "text", operations)
    pd.DataFrame({column: [r[0] for r in rows], "target": [r[1] for r in rows]}).to_csv(
        directory / "data.csv", index=False
    )
    return directory


# ---- images ----


def test_image_parties_load_to_nchw_and_align_without_spacers(tmp_path: Path) -> None:
    root_a, root_b = tmp_path / "a", tmp_path / "b"
    write_images(root_a / "pics" / "train", [("x1.png", 0), ("x2.png", 1), ("x3.png", 1)], mode="RGBA")
    write_images(root_b / "pics" / "train", [("p.png", "1"), ("q.jpg", "2")], size=(50, 40), mode="L")
    a = load_meta(root_a, [["pics", "train"]], "classify")
    b = load_meta(root_b, [["pics", "train"]], "classify")
    assert a is not None and b is not None
    assert a.X.shape == (3, 1, 32, 32) and b.X.shape == (2, 1, 32, 32)
    for data in (a, b):
        assert data.X.dtype == np.float32
        assert 0.0 <= data.X.min() and data.X.max() <= 1.0
    assert a.x_headers == b.x_headers == sorted(a.x_headers)
    assert a.x_headers[:2] == ["c0_h00_w00", "c0_h00_w01"] and a.x_headers[-1] == "c0_h31_w31"
    assert len(a.x_headers) == 32 * 32
    assert a.y_headers == ["target_0", "target_1"] and b.y_headers == ["target_1", "target_2"]

    alignment = align_headers({"a": {"train": a.headers()}, "b": {"train": b.headers()}})
    assert alignment.spacers["a"]["train"]["X"] == [] and alignment.spacers["b"]["train"]["X"] == []
    assert apply_spacers(a.X, alignment.spacers["a"]["train"]["X"]) is a.X  # images keep their shape
    y_b = apply_spacers(b.y, alignment.spacers["b"]["train"]["y"])
    assert class_indices(y_b).tolist() == [1, 2]


def test_image_operations_set_colour_and_size(tmp_path: Path) -> None:
    write_images(tmp_path / "rgb", [("a.png", 0.5), ("b.png", 1.5)], {"color": "RGB", "size": [8, 6]})
    data = load_meta(tmp_path, [["rgb"]], "regress")
    assert data is not None
    assert data.X.shape == (2, 3, 8, 6)
    assert data.x_headers == image_headers(3, 8, 6) == sorted(data.x_headers)
    assert data.y_headers == ["target"]
    np.testing.assert_allclose(data.y[:, 0], [0.5, 1.5])
    assert data.metadata["color"] == "RGB"
    assert (data.metadata["pixel_height"], data.metadata["pixel_width"]) == (8, 6)


def test_image_headers_follow_c_order() -> None:
    headers = image_headers(3, 12, 11)
    assert headers == sorted(headers)
    assert headers[12 * 11] == "c1_h00_w00"
    assert headers[11] == "c0_h01_w00"


def test_images_of_different_sizes_across_parties_are_a_mismatch(tmp_path: Path) -> None:
    write_images(tmp_path / "small", [("a.png", 0)], {"size": [16, 16]})
    write_images(tmp_path / "large", [("a.png", 0)])
    small = load_meta(tmp_path, [["small"]], "classify")
    large = load_meta(tmp_path, [["large"]], "classify")
    alignment = align_headers({"s": {"train": small.headers()}, "l": {"train": large.headers()}})
    with pytest.raises(InvalidRequest) as err:
        apply_spacers(small.X, alignment.spacers["s"]["train"]["X"])
    assert err.value.code == "alignment.image_mismatch"


@pytest.mark.parametrize("name", ["../x.png", "/etc/passwd", "sub/x.png", "..\\x.png", "", "C:x.png"])
def test_mapping_paths_leaving_the_dataset_are_refused(tmp_path: Path, name: str) -> None:
    Image.new("L", (4, 4)).save(tmp_path / "x.png")  # a real image one level up
    directory = write_images(tmp_path / "data" / "pics", [("ok.png", 0), (name, 1)])
    (directory / "sub").mkdir()
    Image.new("L", (4, 4)).save(directory / "sub" / "x.png")
    with pytest.raises(InvalidRequest) as err:
        load_meta(tmp_path / "data", [["pics"]], "classify")
    assert err.value.code == "dataset.invalid"
    assert "passwd" not in err.value.detail


def test_image_symlink_escaping_the_dataset_is_refused(tmp_path: Path) -> None:
    Image.new("L", (4, 4)).save(tmp_path / "secret.png")
    directory = write_images(tmp_path / "data" / "pics", [("ok.png", 0)])
    (directory / "link.png").symlink_to(tmp_path / "secret.png")
    pd.DataFrame({"image": ["ok.png", "link.png"], "target": [0, 1]}).to_csv(directory / "mapping.csv", index=False)
    with pytest.raises(InvalidRequest) as err:
        load_meta(tmp_path / "data", [["pics"]], "classify")
    assert err.value.code == "dataset.invalid"


def test_unreadable_image_and_missing_columns_are_errors(tmp_path: Path) -> None:
    directory = write_images(tmp_path / "broken", [("a.png", 0)])
    (directory / "a.png").write_bytes(b"not an image")
    with pytest.raises(InvalidRequest) as err:
        load_meta(tmp_path, [["broken"]], "classify")
    assert err.value.code == "dataset.invalid"
    directory = write_images(tmp_path / "columns", [("a.png", 0)])
    pd.DataFrame({"file": ["a.png"], "target": [0]}).to_csv(directory / "mapping.csv", index=False)
    with pytest.raises(InvalidRequest):
        load_meta(tmp_path, [["columns"]], "classify")
    write_images(tmp_path / "badops", [("a.png", 0)], {"color": "CMYK"})
    with pytest.raises(InvalidRequest):
        load_meta(tmp_path, [["badops"]], "classify")


def test_image_metadata_holds_no_pixels_or_file_names(tmp_path: Path) -> None:
    write_images(tmp_path / "pics", [("patient_4711.png", 0), ("patient_4712.png", 1)])
    data = load_meta(tmp_path, [["pics"]], "classify")
    text = json.dumps(data.metadata)
    assert "patient_47" not in text
    assert data.metadata["src_count"] == 2 and data.metadata["datatype"] == "image"
    assert data.metadata["target"]["classes"] == {"0": 1, "1": 1}
    # the only numbers are sizes and counts; far fewer than one image's pixels
    assert len(text) < 400


# ---- texts ----

REVIEWS_A = [("The movie was great and moving", 1), ("A dull, boring movie", 0), ("great acting", 1)]
REVIEWS_B = [("the plot was awful", 0), ("superb plot and great cast", 1)]


def test_text_parties_align_like_tabular_headers(tmp_path: Path) -> None:
    write_texts(tmp_path / "a" / "reviews", REVIEWS_A)
    write_texts(tmp_path / "b" / "reviews", REVIEWS_B, column="review")  # text column found by elimination
    a = load_meta(tmp_path / "a", [["reviews"]], "classify")
    b = load_meta(tmp_path / "b", [["reviews"]], "classify")
    assert a.X.ndim == 2 and a.X.dtype == np.float32
    assert a.x_headers == sorted(a.x_headers) and "movie" in a.x_headers and "The" not in a.x_headers
    assert a.X[0, a.x_headers.index("movie")] == 1.0

    alignment = align_headers({"a": {"train": a.headers()}, "b": {"train": b.headers()}})
    superset = alignment.superset["X"]
    assert superset == sorted(set(a.x_headers) | set(b.x_headers))
    x_a = apply_spacers(a.X, alignment.spacers["a"]["train"]["X"])
    x_b = apply_spacers(b.X, alignment.spacers["b"]["train"]["X"])
    assert x_a.shape == (3, len(superset)) and x_b.shape == (2, len(superset))
    # a word only party A used is a zero column at party B, and vice versa; shared words line up
    np.testing.assert_array_equal(x_b[:, superset.index("movie")], [0, 0])
    np.testing.assert_array_equal(x_a[:, superset.index("plot")], [0, 0, 0])
    np.testing.assert_array_equal(x_a[:, superset.index("great")], [1, 0, 1])
    np.testing.assert_array_equal(x_b[:, superset.index("great")], [0, 1])
    np.testing.assert_array_equal(x_b[:, superset.index("plot")], [1, 1])


def test_text_operations_are_applied(tmp_path: Path) -> None:
    rows = [("Good good film", 1), ("the bad film", 0), ("Good film", 1)]
    write_texts(tmp_path / "limited", rows, {"max_features": 2, "lowercase": True, "stop_words": "english"})
    data = load_meta(tmp_path, [["limited"]], "classify")
    assert data.x_headers == ["film", "good"]
    np.testing.assert_array_equal(data.X[0], [1, 2])
    write_texts(tmp_path / "bigrams", rows, {"ngram_range": [1, 2], "lowercase": False})
    data = load_meta(tmp_path, [["bigrams"]], "classify")
    assert "Good good" in data.x_headers and "good film" in data.x_headers
    write_texts(tmp_path / "bad", rows, {"stop_words": "klingon"})
    with pytest.raises(InvalidRequest):
        load_meta(tmp_path, [["bad"]], "classify")


def test_text_metadata_holds_no_sentence(tmp_path: Path) -> None:
    sentence = "the zanzibar ferry schedule was astonishingly punctual"
    write_texts(tmp_path / "reviews", [(sentence, 1), ("quite late again", 0)])
    data = load_meta(tmp_path, [["reviews"]], "classify")
    text = json.dumps(data.metadata)
    assert sentence not in text and "zanzibar" not in text and "late again" not in text
    assert data.metadata["datatype"] == "text" and data.metadata["src_count"] == 2
    assert data.metadata["vocabulary_size"] == len(data.x_headers)
    assert data.metadata["word_count"] == pytest.approx((7 + 3) / 2)
    assert 0.0 < data.metadata["sparsity"] < 1.0


# ---- dispatch ----


def test_mixed_datatypes_in_one_meta_are_refused(tmp_path: Path) -> None:
    write_texts(tmp_path / "mix" / "words", REVIEWS_A)
    write_images(tmp_path / "mix" / "pics", [("a.png", 0)])
    with pytest.raises(InvalidRequest) as err:
        load_meta(tmp_path, [["mix", "words"], ["mix", "pics"]], "classify")
    assert err.value.code == "dataset.mixed"


def test_two_image_datasets_of_one_meta_concatenate(tmp_path: Path) -> None:
    write_images(tmp_path / "one", [("a.png", 0)])
    write_images(tmp_path / "two", [("b.png", 1), ("c.png", 1)])
    data = load_meta(tmp_path, [["one"], ["two"]], "classify")
    assert data.X.shape == (3, 1, 32, 32) and data.y_headers == ["target_0", "target_1"]


# ---- example data ----


def test_prepare_digits_images_writes_the_documented_layout(tmp_path: Path) -> None:
    roots = datasets.prepare_digits_images(tmp_path, binary=True)
    assert sorted(roots) == ["worker_1", "worker_2"]
    headers = []
    for worker, root in roots.items():
        assert root == tmp_path / worker / "data"
        for meta in ("train", "evaluate", "predict"):
            directory = root / "digits" / meta
            assert json.loads((directory / "metadata.json").read_text()) == {"datatype": "image", "operations": {}}
            mapping = pd.read_csv(directory / "mapping.csv")
            assert list(mapping.columns) == ["image", "target"]
            assert set(mapping["target"]) <= {0, 1}
            with Image.open(directory / mapping["image"][0]) as image:
                assert image.mode == "L" and image.size == (32, 32)
        data = load_meta(root, [["digits", "train"]], "classify")
        assert data.X.shape[1:] == (1, 32, 32) and data.y_headers == ["target_0", "target_1"]
        headers.append(data.x_headers)
    assert headers[0] == headers[1]


def test_prepare_text_reviews_writes_the_documented_layout(tmp_path: Path) -> None:
    roots = datasets.prepare_text_reviews(tmp_path)
    assert sorted(roots) == ["worker_1", "worker_2"]
    loaded = {}
    for worker, root in roots.items():
        assert root == tmp_path / worker / "data"
        sizes = 0
        for meta in ("train", "evaluate", "predict"):
            directory = root / "reviews" / meta
            assert json.loads((directory / "metadata.json").read_text()) == {
                "datatype": "text",
                "operations": {"max_features": 500},
            }
            frame = pd.read_csv(directory / "data.csv")
            assert list(frame.columns) == ["text", "target"] and set(frame["target"]) <= {0, 1}
            sizes += len(frame)
        assert 200 <= sizes <= 1000
        loaded[worker] = load_meta(root, [["reviews", "train"]], "classify")
    alignment = align_headers({w: {"train": d.headers()} for w, d in loaded.items()})
    # the parties' vocabularies differ in part, so each lacks some words of the other
    assert alignment.spacers["worker_1"]["train"]["X"] and alignment.spacers["worker_2"]["train"]["X"]
    assert set(loaded["worker_1"].x_headers) & set(loaded["worker_2"].x_headers)
