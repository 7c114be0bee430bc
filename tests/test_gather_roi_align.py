"""The gathered RoIAlign (BatchPredictor's roi_align="gather", MODEL.ROI_ALIGN "gather" in
training) against torchvision's kernel, which it replaces: same values and gradients on the cases
RoIAlign distinguishes, and the same box head outputs and training losses."""
import copy

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from torchvision.ops import roi_align

import tumorseg_d2.modeling.gather_roi_align as gathered
from tumorseg_d2.config import get_tumorseg_cfg, merge_config, validate_config
from tumorseg_d2.engine.trainer import Trainer
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
    features.requires_grad_(True)
    expected = roi_align(features, rois, (7, 7), 1 / stride, sampling_ratio, aligned)
    got = gather_roi_align(features, rois, (7, 7), 1 / stride, sampling_ratio, aligned)
    assert got.shape == expected.shape == (200, 16, 7, 7)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # training: the gradient reaching the map is torchvision's backward
    upstream = torch.randn(expected.shape, generator=generator)
    expected_grad, = torch.autograd.grad(expected, features, upstream)
    got_grad, = torch.autograd.grad(got, features, upstream)
    torch.testing.assert_close(got_grad, expected_grad, atol=1e-4, rtol=1e-5)
    features = features.detach()
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


def box_pooler_and_gathered_twin():
    """A scratch model, its box pooler and a GatherROIPooler copy of it."""
    model = scratch_model()
    pooler = model.roi_heads.box_pooler
    gather = copy.deepcopy(pooler)
    gather.__class__ = GatherROIPooler
    return model, pooler, gather


def test_gather_pooler_leaves_other_dtypes_to_torchvision():
    model, pooler, gather = box_pooler_and_gathered_twin()
    generator = torch.Generator().manual_seed(3)
    features = random_features(model, 1, generator)
    maps = [features[f].double() for f in model.roi_heads.box_in_features]
    boxes = [Boxes(b.tensor.double()) for b in random_boxes(1, 20, generator)]
    result = gather(maps, boxes)
    assert result.dtype == torch.float64 and result.is_contiguous()  # torchvision's layout
    torch.testing.assert_close(result, pooler(maps, boxes))


def test_gather_pooler_under_bf16_autocast_equals_torchvision_in_fp32():
    """Training under bf16 autocast: bf16 maps pooled in fp32 and returned in bf16, with the
    gradient of torchvision's RoIAlign on the same maps in fp32. (Detectron2's own ROIAlign
    casts the boxes to the maps' dtype, so under autocast it pools boxes rounded to bf16's 8
    significant bits: corners up to 0.5 px off at 128-256 px. The gathered pooler keeps them in
    fp32.)"""
    model, pooler, gather = box_pooler_and_gathered_twin()
    generator = torch.Generator().manual_seed(4)
    features = random_features(model, 2, generator)
    boxes = random_boxes(2, 100, generator)
    bf16_maps = [features[f].bfloat16() for f in model.roi_heads.box_in_features]
    results = []
    for p, maps in ((pooler, [m.float() for m in bf16_maps]), (gather, bf16_maps)):
        maps = [m.clone().requires_grad_(True) for m in maps]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = p(maps, boxes)
        grads = torch.autograd.grad(out.float().square().sum(), maps)
        results.append((out, grads))
    (expected, expected_grads), (got, got_grads) = results
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected.bfloat16())
    for g, e in zip(got_grads, expected_grads):
        assert g.dtype == torch.bfloat16  # the maps' dtype
        # the upstream gradient is 2 * out, in bf16 here and fp32 there
        torch.testing.assert_close(g.float(), e, atol=0.02 * e.abs().max(), rtol=0.02)


def roi_heads_training_batch(generator, images=2):
    """Proposals and ground truth (one tumor per image, its mask a blob) for the ROI heads."""
    proposals, targets = [], []
    for i in range(images):
        corner = torch.rand(300, 2, generator=generator) * 280
        # 4-590 px, about square, so on every FPN level
        size = torch.exp(torch.rand(300, 1, generator=generator) * 5) * 4
        size = size * (0.8 + 0.4 * torch.rand(300, 2, generator=generator))
        proposal = Instances((320, 320))
        proposal.proposal_boxes = Boxes(torch.cat([corner, corner + size], 1))
        proposal.objectness_logits = torch.randn(300, generator=generator)
        proposals.append(proposal)
        target = Instances((320, 320))
        target.gt_boxes = Boxes(torch.tensor([[60.0 + 20 * i, 80, 170, 190 - 10 * i]]))
        target.gt_classes = torch.tensor([i % 2])
        mask = torch.zeros(1, 320, 320, dtype=torch.bool)
        mask[0, 90:180, 70 + 20 * i:160] = True
        target.gt_masks = BitMasks(mask)
        targets.append(target)
    return proposals, targets


def test_trainer_model_with_gather_and_channels_last_trains_alike():
    """MODEL.ROI_ALIGN gather and MODEL.CHANNELS_LAST: the trainer's model keeps Detectron2's
    parameters (its checkpoints load into a plain model) and its ROI heads give the same losses
    and gradients as torchvision's RoIAlign on the same proposals."""
    def trainer_model(*opts):
        cfg = merge_config(get_tumorseg_cfg(), SCRATCH_CFG, ["MODEL.DEVICE", "cpu", *opts])
        validate_config(cfg)
        torch.manual_seed(0)
        return Trainer.build_model(cfg).train()

    plain = trainer_model("MODEL.ROI_ALIGN", "torchvision", "MODEL.CHANNELS_LAST", "False")
    fast = trainer_model("MODEL.ROI_ALIGN", "gather", "MODEL.CHANNELS_LAST", "True")
    heads = fast.roi_heads
    assert type(heads.box_pooler) is type(heads.mask_pooler) is GatherROIPooler
    assert type(heads.box_head.flatten) is torch.nn.Flatten  # fc1 keeps Detectron2's order
    conv = fast.backbone.bottom_up.stem.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    state = fast.state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in
                                                      plain.state_dict().items()}
    for k, v in state.items():
        torch.testing.assert_close(v, plain.state_dict()[k])  # same initial weights
    generator = torch.Generator().manual_seed(5)
    features = {k: v for k, v in random_features(plain, 2, generator).items()
                if k in plain.roi_heads.box_in_features}
    proposals, targets = roi_heads_training_batch(generator)
    runs = []
    for model in (plain, fast):
        maps = {k: v.clone().requires_grad_(True) for k, v in features.items()}
        torch.manual_seed(1)  # the same sampled proposals
        with EventStorage():
            _, losses = model.roi_heads(None, maps, proposals, targets)
        params = [p for p in model.roi_heads.parameters()]
        grads = torch.autograd.grad(sum(losses.values()), [*maps.values(), *params])
        runs.append((losses, grads))
    (plain_losses, plain_grads), (fast_losses, fast_grads) = runs
    assert set(fast_losses) == {"loss_cls", "loss_box_reg", "loss_mask"}
    for name, loss in plain_losses.items():
        torch.testing.assert_close(fast_losses[name], loss, atol=1e-5, rtol=1e-5)
    # The gradient reaching each FPN level (the pooler's backward) elementwise; the weights'
    # as a whole, since a ReLU whose input is within rounding of 0 passes or stops its
    # gradient depending on the summation order of the kernels (channels-last is another).
    for got, expected in zip(fast_grads[:len(maps)], plain_grads):
        assert expected.abs().max() > 0  # proposals on every level
        torch.testing.assert_close(got, expected, atol=1e-3 * expected.abs().max(), rtol=1e-3)
    for got, expected in zip(fast_grads[len(maps):], plain_grads[len(maps):]):
        assert (got - expected).norm() <= 1e-2 * expected.norm()
    with pytest.raises(ValueError, match="MODEL.ROI_ALIGN is 'fast'"):
        validate_config(merge_config(get_tumorseg_cfg(), SCRATCH_CFG, ["MODEL.ROI_ALIGN", "fast"]))
