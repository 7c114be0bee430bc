"""The gathered RoIAlign (BatchPredictor's roi_align="gather") against torchvision's kernel, which
it replaces: same values on the cases RoIAlign distinguishes, and the same box head outputs."""
import copy

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes
from torchvision.ops import roi_align

import tumorseg_d2.modeling.gather_roi_align as gathered
from tumorseg_d2.config import get_tumorseg_cfg, merge_config
from tumorseg_d2.modeling.gather_roi_align import (GatherROIPooler, PixelsFirstFlatten,
                                                   gather_roi_align, use_gather_roi_align)
from tumorseg_d2.modeling.int8_box_head import quantize_box_head

from conftest import SCRATCH_CFG


def random_rois(images, count, image_size, generator):
    """Boxes of 1-150 px, some hanging over the image's edges."""
    index = torch.randint(0, images, (count, 1), generator=generator).float()
    corner = torch.rand(count, 2, generator=generator) * image_size * 1.2 - 0.1 * image_size
    size = torch.rand(count, 2, generator=generator) * 149 + 1
    return torch.cat([index, corner, corner + size], 1)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("stride", [4, 32])
def test_gather_roi_align_equals_torchvision(aligned, sampling_ratio, stride):
    generator = torch.Generator().manual_seed(stride + sampling_ratio)
    size = 320 // stride
    features = torch.randn(3, 16, size, size + 3, generator=generator)
    rois = random_rois(3, 200, 320, generator)
    expected = roi_align(features, rois, (7, 7), 1 / stride, sampling_ratio, aligned)
    got = gather_roi_align(features, rois, (7, 7), 1 / stride, sampling_ratio, aligned)
    assert got.shape == expected.shape == (200, 16, 7, 7)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the layout of the map does not change the result
    channels_last = features.to(memory_format=torch.channels_last)
    torch.testing.assert_close(
        gather_roi_align(channels_last, rois, (7, 7), 1 / stride, sampling_ratio, aligned),
        expected, atol=1e-5, rtol=1e-5)


def test_gather_roi_align_edge_cases_equal_torchvision():
    features = torch.randn(2, 4, 10, 12, generator=torch.Generator().manual_seed(0))
    rois = torch.tensor([[0, 5, 5, 5, 5],          # a point
                         [1, 8, 8, 3, 3],          # x2 < x1: no samples
                         [0, -30, -30, -20, -20],  # wholly outside the map
                         [1, 0, 0, 48, 40],        # the whole image
                         [1, 40, 30, 60, 50.]])    # over the bottom-right edge
    for aligned in (True, False):
        for sampling_ratio in (0, 1, 3):
            torch.testing.assert_close(
                gather_roi_align(features, rois, 14, 0.25, sampling_ratio, aligned),
                roi_align(features, rois, (14, 14), 0.25, sampling_ratio, aligned),
                atol=1e-5, rtol=1e-5)
    assert gather_roi_align(features, rois[:0], (7, 7), 0.25, 0).shape == (0, 4, 7, 7)


def scratch_model(*overrides):
    cfg = merge_config(get_tumorseg_cfg(), SCRATCH_CFG, ["MODEL.DEVICE", "cpu", *overrides])
    torch.manual_seed(0)
    return build_model(cfg).eval()


def random_features(model, images, generator):
    """The FPN maps of ``images`` 320 x 320 px inputs, random."""
    return {name: torch.randn(images, shape.channels, 320 // shape.stride, 320 // shape.stride,
                              generator=generator)
            for name, shape in model.backbone.output_shape().items()}


def random_boxes(images, count, generator):
    """Boxes of 2-800 px (so on every FPN level), many over the image's edges."""
    boxes = []
    for _ in range(images):
        corner = torch.rand(count, 2, generator=generator) * 340 - 10
        size = torch.exp(torch.rand(count, 2, generator=generator) * 6) * 2
        boxes.append(Boxes(torch.cat([corner, corner + size], 1)))
    return boxes


def test_use_gather_roi_align_keeps_the_poolers_and_box_head_outputs():
    model = scratch_model()
    gather = use_gather_roi_align(copy.deepcopy(model))
    heads, gather_heads = model.roi_heads, gather.roi_heads
    assert type(gather_heads.box_pooler) is type(gather_heads.mask_pooler) is GatherROIPooler
    assert type(gather_heads.box_head.flatten) is PixelsFirstFlatten
    generator = torch.Generator().manual_seed(1)
    features, boxes = random_features(model, 2, generator), random_boxes(2, 150, generator)
    maps = [features[f] for f in heads.box_in_features]
    box_pooler = heads.box_pooler  # the boxes fall on every level
    assert set(gathered.assign_boxes_to_levels(
        boxes, box_pooler.min_level, box_pooler.max_level, box_pooler.canonical_box_size,
        box_pooler.canonical_level).tolist()) == {0, 1, 2, 3}
    for pooler, gather_pooler in ((heads.box_pooler, gather_heads.box_pooler),
                                  (heads.mask_pooler, gather_heads.mask_pooler)):
        torch.testing.assert_close(gather_pooler(maps, boxes), pooler(maps, boxes),
                                   atol=1e-5, rtol=1e-5)
    pooled = heads.box_pooler(maps, boxes)
    gather_pooled = gather_heads.box_pooler(maps, boxes)
    assert gather_pooled.permute(0, 2, 3, 1).is_contiguous()  # the flatten's view
    torch.testing.assert_close(gather_heads.box_head(gather_pooled), heads.box_head(pooled),
                               atol=1e-4, rtol=1e-4)
    # and in int8: fc1's reordered columns quantize to the same int8 weights
    int8, gather_int8 = (quantize_box_head(copy.deepcopy(m)) for m in (model, gather))
    torch.testing.assert_close(gather_int8.roi_heads.box_head(gather_pooled),
                               int8.roi_heads.box_head(pooled), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="roi_align 'torchvision'"):
        use_gather_roi_align(torch.nn.Conv2d(1, 1, 1))


def test_the_box_and_mask_poolers_share_one_pixel_table_per_call(monkeypatch):
    """Within one call of the ROI heads the mask pooler reuses the box pooler's table of the
    same maps; nothing is kept after it."""
    model = use_gather_roi_align(scratch_model("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"))
    tables, pixel_table = [], gathered._pixel_table
    monkeypatch.setattr(gathered, "_pixel_table", lambda maps: tables.append(1) or
                        pixel_table(maps))
    image = torch.randint(0, 255, (3, 320, 320), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        result = model.inference([{"image": image.float()}], do_postprocess=False)[0]
    assert len(result) and result.has("pred_masks")  # both poolers ran
    assert len(tables) == 1
    assert model.roi_heads.box_pooler.table_cache.table is None


def test_gather_pooler_leaves_other_dtypes_to_torchvision():
    model = scratch_model()
    pooler = model.roi_heads.box_pooler
    gather = copy.deepcopy(pooler)
    gather.__class__ = GatherROIPooler
    generator = torch.Generator().manual_seed(3)
    features = random_features(model, 1, generator)
    maps = [features[f].double() for f in model.roi_heads.box_in_features]
    boxes = [Boxes(b.tensor.double()) for b in random_boxes(1, 20, generator)]
    result = gather(maps, boxes)
    assert result.dtype == torch.float64 and result.is_contiguous()  # torchvision's layout
    torch.testing.assert_close(result, pooler(maps, boxes))
