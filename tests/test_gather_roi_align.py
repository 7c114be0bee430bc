"""The gathered RoIAlign (BatchPredictor's roi_align="gather") against torchvision's kernel, which
it replaces: same values on the cases RoIAlign distinguishes."""
import pytest
import torch
from detectron2.layers import ROIAlign
from detectron2.modeling import build_model
from torchvision.ops import roi_align

from tumorseg_d2.config import get_tumorseg_cfg, merge_config
from tumorseg_d2.modeling.gather_roi_align import (GatherROIAlign, gather_roi_align,
                                                   use_gather_roi_align)

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


def test_use_gather_roi_align_replaces_every_pooler_level():
    cfg = merge_config(get_tumorseg_cfg(), SCRATCH_CFG, ["MODEL.DEVICE", "cpu"])
    model = use_gather_roi_align(build_model(cfg).eval())
    for pooler in (model.roi_heads.box_pooler, model.roi_heads.mask_pooler):
        assert [type(p) for p in pooler.level_poolers] == [GatherROIAlign] * 4
    assert not any(type(m) is ROIAlign for m in model.modules())
    with pytest.raises(ValueError, match="roi_align 'torchvision'"):
        use_gather_roi_align(torch.nn.Conv2d(1, 1, 1))


def test_gather_roi_align_leaves_other_dtypes_to_torchvision():
    layer = GatherROIAlign((7, 7), 0.25, 0, True)
    features = torch.randn(1, 4, 20, 20, dtype=torch.float64)
    rois = torch.tensor([[0, 2, 2, 40, 30.]], dtype=torch.float64)
    torch.testing.assert_close(layer(features, rois),
                               ROIAlign((7, 7), 0.25, 0, True)(features, rois))
