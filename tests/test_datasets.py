import json
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from tumorseg_d2.data import DatasetNotFoundError, load_tumorseg, register_tumorseg
from tumorseg_d2.data.phantom import make_phantom_split


def test_registration_is_lazy_and_names_missing_path(tmp_path):
    missing = tmp_path / "nowhere"
    register_tumorseg(str(missing))  # must not touch the disk
    with pytest.raises(DatasetNotFoundError) as err:
        DatasetCatalog.get("tumorseg_valid")
    msg = str(err.value)
    assert str(missing / "valid" / "_annotations.coco.json") in msg
    assert "DETECTRON2_DATASETS" in msg and "DATASETS.TUMORSEG_ROOT" in msg


def test_default_root_follows_detectron2_convention(monkeypatch, phantom_root):
    from tumorseg_d2.data.datasets import default_root

    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    assert default_root() == os.path.join("datasets", "tumorseg")
    monkeypatch.setenv("DETECTRON2_DATASETS", os.path.dirname(phantom_root))
    register_tumorseg()
    assert len(DatasetCatalog.get("tumorseg_test")) == 6


def test_placeholder_category_is_not_a_class(phantom_root):
    raw = json.load(open(os.path.join(phantom_root, "train", "_annotations.coco.json")))
    assert {c["id"] for c in raw["categories"]} == {0, 1, 2}  # the export's quirk is reproduced
    register_tumorseg(phantom_root)
    meta = MetadataCatalog.get("tumorseg_train")
    assert meta.thing_classes == ["0", "1"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1}
    raw_cats = {a["image_id"]: a["category_id"] for a in raw["annotations"]}
    for record in DatasetCatalog.get("tumorseg_train"):
        for ann in record["annotations"]:
            assert ann["category_id"] == raw_cats[record["image_id"]] - 1


def test_class_agnostic_names_merge_both_classes(phantom_root):
    register_tumorseg(phantom_root)
    assert MetadataCatalog.get("tumorseg_agnostic_train").thing_classes == ["tumor"]
    cats = {a["category_id"] for r in DatasetCatalog.get("tumorseg_agnostic_train")
            for a in r["annotations"]}
    assert cats == {0}


def test_unknown_category_id_is_reported(tmp_path):
    root = tmp_path / "tumorseg"
    make_phantom_split(str(root / "train"), 3, seed=1)
    path = root / "train" / "_annotations.coco.json"
    coco = json.load(open(path))
    coco["annotations"][0]["category_id"] = 0
    json.dump(coco, open(path, "w"))
    with pytest.raises(ValueError, match="category_id 0"):
        load_tumorseg(str(root), "train")


def test_phantom_has_both_mask_styles_and_the_export_layout(tmp_path):
    box = make_phantom_split(str(tmp_path / "box"), 4, seed=3, mask_style="box")
    outline = make_phantom_split(str(tmp_path / "outline"), 4, seed=3, mask_style="outline")
    assert all(len(a["segmentation"][0]) == 10 for a in box["annotations"])
    assert any(len(a["segmentation"][0]) > 10 for a in outline["annotations"])
    assert box["annotations"][0]["id"] == 0 and box["images"][0]["id"] == 0
    assert all((i["width"], i["height"]) == (640, 640) for i in box["images"])


def test_real_data_registers_1502_429_215_images_and_two_classes(real_root):
    register_tumorseg(real_root)
    counts = {s: len(DatasetCatalog.get(f"tumorseg_{s}")) for s in ("train", "valid", "test")}
    assert counts == {"train": 1502, "valid": 429, "test": 215}
    assert MetadataCatalog.get("tumorseg_train").thing_classes == ["0", "1"]
    per_class = [0, 0]
    for record in DatasetCatalog.get("tumorseg_train"):
        for ann in record["annotations"]:
            per_class[ann["category_id"]] += 1
    assert per_class == [771, 731]  # the export's categories 1 and 2, per its README
