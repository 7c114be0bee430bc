"""Batched inference from Python: load a model once, predict on many images.

    from tumorseg_d2.predictor import BatchPredictor
    predictor = BatchPredictor(cfg)                     # cfg.MODEL.WEIGHTS is loaded once
    results = predictor(["a.jpg", array_hw, array_hwc], masks="rle", probability=True)

Images are file paths or uint8 arrays, (H, W) or (H, W, 1) grayscale or (H, W, 3) RGB, of any size
up to ``max_pixels()``; a DataLoader with worker processes decodes and resizes them while the model
runs on the previous batch. An input that cannot be used (not an image, empty, 16-bit, alpha
channel, too large) raises InputImageError naming it and the fix, or with ``on_error="skip"`` gives
``{"error": message}`` in its place while the other inputs are predicted.
"""
import os

import numpy as np
import torch
from detectron2.data import transforms as T
from PIL import Image, UnidentifiedImageError
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.layers.mask_ops import paste_masks_in_image
from pycocotools import mask as mask_util
from torch.utils.data import DataLoader, Dataset

from .checkpoint import SafeCheckpointer, resolve_weights


# Guard against decompression bombs: an MRI slice has well under a megapixel.
DEFAULT_MAX_PIXELS = 64 * 2**20


class InputImageError(ValueError):
    pass


def max_pixels():
    """The largest input accepted, in pixels: $TUMORSEG_MAX_PIXELS, default 64 megapixels."""
    return int(os.environ.get("TUMORSEG_MAX_PIXELS", DEFAULT_MAX_PIXELS))


def _check_size(name, w, h):
    if w * h > max_pixels():
        raise InputImageError(
            f"{name} is {w}x{h} = {w * h / 1e6:.1f} megapixels, over the limit of "
            f"{max_pixels() / 1e6:.1f}: decoding it could exhaust memory (a decompression bomb, or "
            "not an MRI slice). Downscale it, or raise the limit with TUMORSEG_MAX_PIXELS=<pixels> "
            "if the image is genuine.")


def to_model_format(image, fmt, name="array"):
    """A uint8 (H, W), (H, W, 1) grayscale or (H, W, 3) RGB array in the model's channel order.
    Grayscale becomes three equal channels, as the training slices are stored."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        channels = image.shape[2] if image.ndim == 3 else image.ndim
        raise InputImageError(
            f"{name} has shape {image.shape} ({channels} channels): expected grayscale (H, W) or "
            "RGB (H, W, 3). A 4th channel is usually alpha (transparency): drop it "
            "(image[..., :3], or PIL's .convert('RGB')) after checking it carries nothing.")
    if image.dtype != np.uint8:
        raise InputImageError(
            f"{name} has {image.dtype} pixels; the model was trained on 8-bit slices. Convert it to "
            "uint8 with the intensity window used for training (e.g. scale the 1st-99th "
            "percentile to 0-255).")
    _check_size(name, image.shape[1], image.shape[0])
    return np.ascontiguousarray(image[:, :, ::-1] if fmt == "BGR" else image)


def read_input_image(path, fmt):
    """An image file as the model reads it, or InputImageError naming the problem and the fix."""
    if not os.path.isfile(path):
        raise InputImageError(f"{path} does not exist.")
    if os.path.getsize(path) == 0:
        raise InputImageError(f"{path} is empty (0 bytes): the export or copy failed; copy it again.")
    try:
        with Image.open(path) as img:  # reads the header only
            _check_size(path, *img.size)
            if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                raise InputImageError(
                    f"{path} has 16-bit or float pixels (PIL mode {img.mode}); the model was trained "
                    "on 8-bit slices. Convert it to 8-bit with the intensity window used for "
                    "training (e.g. scale the 1st-99th percentile to 0-255) and save as PNG.")
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                raise InputImageError(
                    f"{path} has an alpha channel (PIL mode {img.mode}, 4 channels or "
                    "transparency): its meaning is unknown to the model. Save the slice without "
                    "alpha (e.g. PIL: Image.open(p).convert('RGB').save(q)) after checking it "
                    "carries nothing.")
            img.load()  # decodes: a truncated file raises here
            array = np.asarray(img.convert("L") if img.mode in ("L", "1", "P") else
                               img.convert("RGB"))
    except UnidentifiedImageError as e:
        raise InputImageError(f"{path} is not an image that can be read (JPEG, PNG, BMP, TIFF): "
                              "pass image files only (convert DICOM/NIfTI slices to PNG "
                              "first).") from e
    except OSError as e:
        raise InputImageError(f"{path} cannot be decoded ({e}): the file is truncated or corrupt; "
                              "copy or export it again.") from e
    return to_model_format(array, fmt, path)


class _Images(Dataset):
    def __init__(self, images, fmt, resize):
        self.images, self.fmt, self.resize = images, fmt, resize

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        item = self.images[i]
        try:
            image = read_input_image(item, self.fmt) if isinstance(item, str) else \
                to_model_format(item, self.fmt, f"input {i}")
        except InputImageError as e:  # reported by the main process, by BatchPredictor's on_error
            return {"error": str(e), "index": i}
        h, w = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image)
        return {"image": torch.as_tensor(resized.transpose(2, 0, 1).copy()), "height": h,
                "width": w, "index": i}


class BatchPredictor:
    """Loads ``cfg.MODEL.WEIGHTS`` once; calling it runs batched inference."""

    def __init__(self, cfg, batch_size=4, num_workers=2, on_error="raise"):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error is {on_error!r}; use 'raise' or 'skip'.")
        self.on_error = on_error
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        SafeCheckpointer(self.model).load(resolve_weights(cfg.MODEL.WEIGHTS))
        self.resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        self.batch_size, self.num_workers = batch_size, num_workers

    def batches(self, images):
        loader = DataLoader(_Images(list(images), self.cfg.INPUT.FORMAT, self.resize),
                            batch_size=self.batch_size, num_workers=self.num_workers,
                            collate_fn=lambda batch: batch)
        yield from loader

    @torch.inference_mode()
    def predict_batch(self, batch, masks="rle", probability=False):
        """Results for one batch from :meth:`batches`, in order; unreadable inputs raise or give
        ``{"error": message}`` (``on_error``)."""
        bad = [x for x in batch if "error" in x]
        if bad and self.on_error == "raise":
            raise InputImageError(bad[0]["error"])
        good = [x for x in batch if "error" not in x]
        # Pixel-segmentation models give instances and the probability map at the input's size;
        # Mask R-CNN's raw output keeps the soft masks that make its probability map.
        pixel_model = getattr(self.model, "returns_probability_map", False)
        raw = iter((self.model(good) if pixel_model else
                    self.model.inference(good, do_postprocess=False)) if good else [])
        result = self._pixel_result if pixel_model else self._result
        return [{"error": x["error"]} if "error" in x else
                result(next(raw), x, masks, probability) for x in batch]

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
        result = _package(inst, masks)
        if probability:
            # threshold < 0: paste the soft masks as uint8 0-255 instead of binarizing them.
            soft = paste_masks_in_image(inst.soft_masks, inst.pred_boxes, (h, w), threshold=-1)
            result["probability"] = (soft.max(dim=0).values.numpy().astype(np.float32) / 255
                                     if len(soft) else np.zeros((h, w), np.float32))
        return result

    @staticmethod
    def _pixel_result(out, x, masks, probability):
        result = _package(out["instances"].to("cpu"), masks)
        if probability:
            result["probability"] = out["probability"].numpy().astype(np.float32)
        return result


def _package(inst, masks):
    """The result dict of postprocessed Instances (on the CPU, in input pixels)."""
    h, w = inst.image_size
    result = {"boxes": inst.pred_boxes.tensor.numpy(), "scores": inst.scores.numpy(),
              "classes": inst.pred_classes.numpy(), "height": h, "width": w}
    if masks == "array":
        result["masks"] = inst.pred_masks.numpy()
    elif masks == "rle":
        result["masks"] = [mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
                           for m in inst.pred_masks.numpy()]
    return result
