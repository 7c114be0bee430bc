"""Test-time augmentation, switched on by Detectron2's TEST.AUG.ENABLED for final evaluation and
prediction (never for validation during training, which chooses checkpoints).

- Mask R-CNN: Detectron2's :class:`GeneralizedRCNNWithTTA`: every shorter side of
  TEST.AUG.MIN_SIZES (at most TEST.AUG.MAX_SIZE), each also flipped horizontally with
  TEST.AUG.FLIP; boxes are merged over the augmentations, then the masks averaged on them.
- The pixel networks (fixed input size, so MIN_SIZES does not apply): with TEST.AUG.FLIP, the
  tumor probability is the mean of the network's on the image and, flipped back, on its mirror
  image.
"""
import torch
from detectron2.modeling import GeneralizedRCNN, GeneralizedRCNNWithTTA
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .pixel_seg import PixelSegmenter


def augmented_model(cfg, model):
    """``model`` wrapped for TEST.AUG, or as it is when TEST.AUG.ENABLED is False."""
    if not cfg.TEST.AUG.ENABLED:
        return model
    if isinstance(model, DistributedDataParallel):
        model = model.module
    if isinstance(model, GeneralizedRCNN):
        return GeneralizedRCNNWithTTA(cfg, model)
    if isinstance(model, PixelSegmenter):
        return FlipAveraged(model) if cfg.TEST.AUG.FLIP else model
    raise ValueError(f"TEST.AUG.ENABLED is True, but {type(model).__name__} has no test-time "
                     "augmentation; set TEST.AUG.ENABLED False.")


def augmentation_text(cfg, model=None):
    """What TEST.AUG does to ``model``, in words (None when it is off)."""
    aug = cfg.TEST.AUG
    if not aug.ENABLED:
        return None
    flip = "horizontal flip" if aug.FLIP else "no flip"
    if isinstance(model, PixelSegmenter) or cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN":
        return f"{flip}, probabilities averaged"
    return f"{flip}, shorter sides {tuple(aug.MIN_SIZES)} (max {aug.MAX_SIZE}), merged"


class FlipAveraged(nn.Module):
    """A :class:`PixelSegmenter` whose probability is averaged over the image and its mirror."""

    returns_probability_map = True

    def __init__(self, model):
        super().__init__()
        self.model = model

    @property
    def device(self):
        return self.model.device

    def forward(self, batched_inputs):
        m = self.model
        if m.training:
            return m(batched_inputs)
        x = m.preprocess(batched_inputs)
        probability = (torch.sigmoid(m.network(x))
                       + torch.sigmoid(m.network(x.flip(-1))).flip(-1)) / 2
        return m.postprocess(torch.logit(probability, eps=1e-6), batched_inputs)
