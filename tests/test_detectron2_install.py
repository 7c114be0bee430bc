"""The pure-Python Detectron2 v0.6 build: patched code runs, missing compiled ops fail clearly."""
import os
import re

import numpy as np
import PIL
import pytest
import torch

import detectron2


def test_extent_transform_uses_bilinear_on_current_pillow():
    # v0.6 used Image.LINEAR (removed in Pillow 10) as a default argument, at import time.
    from PIL import Image

    from detectron2.data.transforms import ExtentTransform

    assert int(PIL.__version__.split(".")[0]) >= 10
    t = ExtentTransform(src_rect=(0, 0, 8, 8), output_size=(4, 4))
    assert t.interp == Image.BILINEAR
    out = t.apply_image(np.full((8, 8, 3), 200, np.uint8))
    assert out.shape == (4, 4, 3) and out.mean() > 150


def test_model_zoo_config_without_pkg_resources():
    from detectron2 import model_zoo

    path = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")
    assert os.path.isfile(path)
    with pytest.raises(RuntimeError, match="not available in Model Zoo"):
        model_zoo.get_config_file("no/such.yaml")


def test_code_with_removed_numpy_aliases_runs():
    from detectron2.data.build import print_instances_class_histogram
    from detectron2.structures.masks import polygons_to_bitmask

    mask = polygons_to_bitmask([np.array([1, 1, 6, 1, 6, 6, 1, 6], float)], 8, 8)
    assert mask.dtype == bool and mask.sum() == 25
    empty = polygons_to_bitmask([], 8, 8)
    assert empty.dtype == bool and not empty.any()
    print_instances_class_histogram(
        [{"annotations": [{"category_id": 0}, {"category_id": 1}]}], ["a", "b"])


def test_no_removed_numpy_alias_left_in_installed_sources():
    root = os.path.dirname(detectron2.__file__)
    alias = re.compile(r"\bnp\.(bool|int|float|str|object)\b(?![_\d])")
    offenders = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                text = open(os.path.join(dirpath, name)).read()
                offenders += [f"{name}: {m.group(0)}" for m in alias.finditer(text)]
    assert not offenders


@pytest.mark.parametrize("op", ["nms_rotated", "box_iou_rotated", "roi_align_rotated_forward"])
def test_rotated_ops_raise_not_implemented_naming_the_op(op):
    from detectron2.layers import ROIAlignRotated, nms_rotated
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    boxes = torch.tensor([[5.0, 5.0, 4.0, 4.0, 0.0]])
    calls = {
        "nms_rotated": lambda: nms_rotated(boxes, torch.ones(1), 0.5),
        "box_iou_rotated": lambda: pairwise_iou_rotated(boxes, boxes),
        "roi_align_rotated_forward": lambda: ROIAlignRotated((2, 2), 1.0, 0)(
            torch.zeros(1, 1, 8, 8), torch.tensor([[0.0, 4, 4, 4, 4, 0]])),
    }
    with pytest.raises(NotImplementedError, match=op):
        calls[op]()


def test_deformable_conv_ops_raise_not_implemented_naming_the_op():
    from detectron2 import _C

    for op in ("deform_conv_forward", "modulated_deform_conv_forward"):
        with pytest.raises(NotImplementedError, match=op):
            getattr(_C, op)()


def test_fast_coco_eval_is_unavailable_and_says_what_to_use():
    from detectron2 import _C

    with pytest.raises(NotImplementedError, match="use_fast_impl=False"):
        _C.COCOevalAccumulate()
