"""Image-level tags: cls_labels.npy, CSV / JSON tag files, tags derived from masks."""

import json

import numpy as np
import pytest

from protoseg.data.tags import load_cls_labels, load_tag_file, save_cls_labels, tags_from_mask

CLASS_NAMES = ["cat", "dog", "bird"]


def reference_tags(mask, num_classes, has_background):
    present = [0.0] * num_classes
    for row in mask:
        for value in row:
            if value != 255:
                present[int(value)] = 1.0
    return np.array(present[1:] if has_background else present, dtype=np.float64)


@pytest.mark.parametrize("has_background", [True, False])
def test_tags_from_mask_matches_loop(has_background):
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = rng.choice([0, 2, 3, 255], size=(7, 9)).astype(np.uint8)
        tags = tags_from_mask(mask, 5, has_background)
        assert tags.dtype == np.float32
        np.testing.assert_array_equal(tags, reference_tags(mask, 5, has_background))


def test_tags_from_mask_ignores_255_and_rejects_out_of_range():
    assert tags_from_mask(np.full((3, 3), 255, np.uint8), 4, True).sum() == 0
    with pytest.raises(ValueError, match="7"):
        tags_from_mask(np.array([[0, 7]]), 4, False)


def test_cls_labels_roundtrip_exact_path(tmp_path):
    labels = {"a": np.array([1, 0, 1], np.float32), "b": np.zeros(3, np.float32)}
    path = tmp_path / "tags.bin"
    save_cls_labels(path, labels)
    assert path.is_file() and not (tmp_path / "tags.bin.npy").exists()
    loaded = load_cls_labels(path)
    assert loaded.keys() == labels.keys()
    for name in labels:
        assert loaded[name].dtype == np.float32
        np.testing.assert_array_equal(loaded[name], labels[name])
    # readable the way the WSSS codebases read it
    raw = np.load(path, allow_pickle=True).item()
    np.testing.assert_array_equal(raw["a"], labels["a"])


def test_cls_labels_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        load_cls_labels(tmp_path / "missing.npy")
    not_dict = tmp_path / "array.npy"
    np.save(not_dict, np.zeros(3))
    with pytest.raises(ValueError, match="array.npy"):
        load_cls_labels(not_dict)


def test_csv_tag_file(tmp_path):
    path = tmp_path / "tags.csv"
    path.write_text("image,tags\nimg1,cat;bird\nimg2,\n\nimg3,dog\n")
    table = load_tag_file(path, CLASS_NAMES)
    assert sorted(table) == ["img1", "img2", "img3"]
    np.testing.assert_array_equal(table["img1"], [1, 0, 1])
    np.testing.assert_array_equal(table["img2"], [0, 0, 0])
    np.testing.assert_array_equal(table["img3"], [0, 1, 0])


def test_json_tag_file(tmp_path):
    path = tmp_path / "tags.json"
    path.write_text(json.dumps({"x": ["dog", "cat"], "y": []}))
    table = load_tag_file(path, CLASS_NAMES)
    np.testing.assert_array_equal(table["x"], [1, 1, 0])
    np.testing.assert_array_equal(table["y"], [0, 0, 0])


def test_unknown_class_names_the_class_and_file(tmp_path):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("img1,cat;zebra\n")
    with pytest.raises(ValueError, match=r"zebra.*img1|bad\.csv") as error:
        load_tag_file(csv_path, CLASS_NAMES)
    assert "zebra" in str(error.value) and "bad.csv" in str(error.value)
    json_path = tmp_path / "bad.json"
    json_path.write_text(json.dumps({"img": ["horse"]}))
    with pytest.raises(ValueError) as error:
        load_tag_file(json_path, CLASS_NAMES)
    assert "horse" in str(error.value) and "bad.json" in str(error.value)


def test_tag_file_format_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_tag_file(tmp_path / "nope.csv", CLASS_NAMES)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        load_tag_file(broken, CLASS_NAMES)
    wrong_type = tmp_path / "wrong.json"
    wrong_type.write_text(json.dumps({"img": "cat"}))
    with pytest.raises(ValueError, match="img"):
        load_tag_file(wrong_type, CLASS_NAMES)
    npy = tmp_path / "short.npy"
    save_cls_labels(npy, {"img": np.ones(2, np.float32)})
    with pytest.raises(ValueError, match="short.npy"):
        load_tag_file(npy, CLASS_NAMES)
