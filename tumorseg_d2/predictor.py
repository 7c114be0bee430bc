"""Batched inference from Python: load a model once, predict on many images.

    from tumorseg_d2.predictor import BatchPredictor
    predictor = BatchPredictor(cfg)                     # cfg.MODEL.WEIGHTS is loaded once
    results = predictor(["a.jpg", array_hw, array_hwc], masks="rle", probability=True)

Images are file paths or arrays (H, W) grayscale or (H, W, 3) RGB, of any size; a DataLoader with
worker processes decodes and resizes them while the model runs on the previous batch.
"""
import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.layers.mask_ops import paste_masks_in_image
from pycocotools import mask as mask_util
from torch.utils.data import DataLoader, Dataset

from .checkpoint import resolve_weights


def to_model_format(image, fmt):
    """An (H, W) grayscale or (H, W, 3) RGB uint8 array in the model's channel order ("BGR"/"RGB")."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    return np.ascontiguousarray(image[:, :, ::-1] if fmt == "BGR" else image)


class _Images(Dataset):
    def __init__(self, images, fmt, resize):
        self.images, self.fmt, self.resize = images, fmt, resize

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        item = self.images[i]
        image = read_image(item, format=self.fmt) if isinstance(item, str) else \
            to_model_format(item, self.fmt)
        h, w = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image)
        return {"image": torch.as_tensor(resized.transpose(2, 0, 1).copy()), "height": h,
                "width": w, "index": i}


class BatchPredictor:
    """Loads ``cfg.MODEL.WEIGHTS`` once; calling it runs batched inference."""

    def __init__(self, cfg, batch_size=4, num_workers=2):
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        DetectionCheckpointer(self.model).load(resolve_weights(cfg.MODEL.WEIGHTS))
        self.resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        self.batch_size, self.num_workers = batch_size, num_workers

    def batches(self, images):
        loader = DataLoader(_Images(list(images), self.cfg.INPUT.FORMAT, self.resize),
                            batch_size=self.batch_size, num_workers=self.num_workers,
                            collate_fn=lambda batch: batch)
        yield from loader

    @torch.inference_mode()
    def predict_batch(self, batch, masks="rle", probability=False):
        raw = self.model.inference(batch, do_postprocess=False)
        return [self._result(r, x, masks, probability) for r, x in zip(raw, batch)]

    def __call__(self, images, masks="rle", probability=False):
        """Results in input order: dicts of boxes (N, 4) XYXY in input pixels, scores, classes
        (contiguous ids), masks (``"rle"``: COCO RLEs, ``"array"``: (N, H, W) bool, None: left
        out) and, with ``probability=True``, ``probability`` (H, W) float32: per pixel, the highest
        mask probability of any detection (0 where there is none)."""
        out = []
        for batch in self.batches(images):
            out += self.predict_batch(batch, masks, probability)
        return out

    def _result(self, raw, x, masks, probability):
        h, w = x["height"], x["width"]
        if probability:  # carried through postprocessing, which may drop empty boxes
            raw.soft_masks = raw.pred_masks[:, 0]
        inst = detector_postprocess(raw, h, w).to("cpu")
        result = {"boxes": inst.pred_boxes.tensor.numpy(), "scores": inst.scores.numpy(),
                  "classes": inst.pred_classes.numpy(), "height": h, "width": w}
        if masks == "array":
            result["masks"] = inst.pred_masks.numpy()
        elif masks == "rle":
            result["masks"] = [mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
                               for m in inst.pred_masks.numpy()]
        if probability:
            # threshold < 0: paste the soft masks as uint8 0-255 instead of binarizing them.
            soft = paste_masks_in_image(inst.soft_masks, inst.pred_boxes, (h, w), threshold=-1)
            result["probability"] = (soft.max(dim=0).values.numpy().astype(np.float32) / 255
                                     if len(soft) else np.zeros((h, w), np.float32))
        return result
