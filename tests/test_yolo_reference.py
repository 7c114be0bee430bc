"""The YOLO side of the fair fight (references/ultralytics_yolo.py): its conversion of COCO splits
into YOLO labels must describe the same tumors, or the comparison is not fair. Ultralytics itself
is not installed here (it has an environment of its own); these parts need only numpy, OpenCV
and pycocotools."""
import importlib.util
import json
import os

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_util

from tumorseg_d2.data import make_phantom_dataset

from conftest import REPO


def load_script():
    spec = importlib.util.spec_from_file_location(
        "ultralytics_yolo", os.path.join(REPO, "references", "ultralytics_yolo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def truth_mask(ann, h, w):
    rles = mask_util.frPyObjects(ann["segmentation"], h, w)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def label_mask(line, h, w):
    xy = np.array(line.split()[1:], float).reshape(-1, 2) * [w, h]
    rle = mask_util.frPyObjects([xy.ravel().tolist()], h, w)
    return mask_util.decode(mask_util.merge(rle)).astype(bool)


def test_labels_outline_the_same_tumors_with_the_datasets_classes(tmp_path):
    yolo = load_script()
    root = make_phantom_dataset(str(tmp_path / "tumorseg"), counts={"train": 5, "valid": 3,
                                                                     "test": 2},
                                mask_style="outline")
    args = yolo.parse_args(["--data", root, "--output", str(tmp_path / "yolo")])
    data_yaml = yolo.prepare(args)
    dataset = tmp_path / "yolo" / "dataset"
    assert "train: images/train" in open(data_yaml).read()

    coco = json.load(open(os.path.join(root, "train", "_annotations.coco.json")))
    # The placeholder category (id 0, used by no annotation) gets no YOLO class.
    classes = json.load(open(dataset / "classes.json"))
    assert classes == sorted({a["category_id"] for a in coco["annotations"]}) and 0 not in classes

    for img in coco["images"]:
        stem = os.path.splitext(img["file_name"])[0]
        assert os.path.realpath(dataset / "images" / "train" / img["file_name"]) == \
            os.path.realpath(os.path.join(root, "train", img["file_name"]))
        lines = open(dataset / "labels" / "train" / f"{stem}.txt").read().splitlines()
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        assert len(lines) == len(anns)  # the tumor-free first image: an empty label file
        h, w = img["height"], img["width"]
        for line, ann in zip(lines, anns):
            assert classes[int(line.split()[0])] == ann["category_id"]
            ours, theirs = label_mask(line, h, w), truth_mask(ann, h, w)
            iou = (ours & theirs).sum() / (ours | theirs).sum()
            assert iou > 0.97, (img["file_name"], iou)  # only the rounding of 6 decimals


def test_an_annotation_without_polygons_is_outlined_from_its_rle_or_box():
    yolo = load_script()
    mask = np.zeros((40, 50), np.uint8)
    cv2.circle(mask, (25, 20), 10, 1, -1)
    rle = mask_util.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode()
    (poly,) = yolo.polygons_of({"segmentation": rle, "bbox": [15, 10, 21, 21]}, 40, 50)
    drawn = np.zeros_like(mask)
    cv2.fillPoly(drawn, [poly.astype(np.int32)], 1)
    assert (drawn & mask).sum() / (drawn | mask).sum() > 0.9

    (box,) = yolo.polygons_of({"segmentation": [], "bbox": [2, 3, 10, 5]}, 40, 50)
    assert box.tolist() == [[2, 3], [12, 3], [12, 8], [2, 8]]


def test_yolo_gets_the_training_time_of_the_toolkit_run(tmp_path):
    """--hours-of: both sides of the fight train for the same wall time on the same machine."""
    yolo = load_script()
    run = tmp_path / "recipe"
    run.mkdir()
    (run / "training_summary.json").write_text(json.dumps(
        {"seconds": 2991.0, "iterations": 1500,
         "sessions": [{"from": 0, "to": 700, "seconds": 1400.0},
                      {"from": 700, "to": 1500, "seconds": 1591.0}]}))
    assert yolo.training_hours(str(run)) * 3600 == 2991.0
    with pytest.raises(SystemExit, match="no training_summary.json there"):
        yolo.training_hours(str(tmp_path))
