"""Batched inference from Python: load a model once, predict on many images.

    from tumorseg_d2.predictor import BatchPredictor
    predictor = BatchPredictor(cfg)                     # cfg.MODEL.WEIGHTS is loaded once
    preds = predictor(["a.jpg", array_hw, array_hwc], masks="rle", probability=True)

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
from PIL import Image, ImageOps, UnidentifiedImageError
from detectron2.modeling import GeneralizedRCNNWithTTA, build_model
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.layers.mask_ops import paste_masks_in_image
from torch.utils.data import DataLoader, Dataset

from .checkpoint import SafeCheckpointer, resolve_weights
from .engine.amp import slow_bf16_warning
from .data.volumes import DEFAULT_PERCENTILES, VolumeError, window_to_uint8
from .files import image_depth_problem
from .modeling.gather_roi_align import ROI_ALIGNS, use_gather_roi_align
from .modeling.int8_box_head import BOX_HEADS, quantize_box_head
from .modeling.onnx_backbone import RUNTIMES, use_onnxruntime_backbone
from .modeling.tta import augmented_model
from .predictions import from_instances, mask_and_scores, rles_in_boxes


# Guard against decompression bombs: an MRI slice has well under a megapixel.
DEFAULT_MAX_PIXELS = 64 * 2**20


# "bf16-backbone": ResNet and FPN (most of the compute) in bfloat16, the RPN and RoI heads, whose
# box regression and scores decide AP, in float32.
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "bf16-backbone": torch.bfloat16}
MASK_HEADS = ("fp32", "bf16")


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
            problem = image_depth_problem(img)
            if problem:
                raise InputImageError(
                    f"{path} {problem}; the model was trained on 8-bit slices. Convert it to "
                    "8-bit with the intensity window used for training (e.g. scale the 1st-99th "
                    "percentile to 0-255) and save as PNG.")
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                raise InputImageError(
                    f"{path} has an alpha channel (PIL mode {img.mode}, 4 channels or "
                    "transparency): its meaning is unknown to the model. Save the slice without "
                    "alpha (e.g. PIL: Image.open(p).convert('RGB').save(q)) after checking it "
                    "carries nothing.")
            img.load()  # decodes: a truncated file raises here
            # EXIF orientation applied as Detectron2's read_image does for training and evaluation.
            img = ImageOps.exif_transpose(img)
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


# The short side of an input after resizing for the model: below this (an aspect ratio such as
# 10000 x 10) the backbone's feature maps would be empty.
MIN_RESIZED_SIDE = 16


class _Images(Dataset):
    def __init__(self, images, fmt, resize):
        self.images, self.fmt, self.resize = images, fmt, resize

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        item = self.images[i]
        name = item if isinstance(item, str) else f"input {i}"
        try:  # any failure is reported by the main process, by BatchPredictor's on_error
            image = read_input_image(item, self.fmt) if isinstance(item, str) else \
                to_model_format(item, self.fmt, name)
            h, w = image.shape[:2]
            transform = self.resize.get_transform(image)
            new_h, new_w = getattr(transform, "new_h", h), getattr(transform, "new_w", w)
            if min(new_h, new_w) < MIN_RESIZED_SIDE:
                raise InputImageError(
                    f"{name} is {w}x{h} pixels: resized for the model (INPUT.MIN_SIZE_TEST / "
                    f"MAX_SIZE_TEST) it would be {new_w}x{new_h}, too thin to predict on. The "
                    "aspect ratio is not that of a slice: crop it to the slice.")
            resized = transform.apply_image(image)
        except Exception as e:  # noqa: BLE001 - a worker must never stop the other images
            message = str(e) if isinstance(e, InputImageError) else \
                f"{name} cannot be prepared ({type(e).__name__}: {e})"
            return {"error": message, "index": i, "name": name}
        return {"image": torch.as_tensor(resized.transpose(2, 0, 1).copy()), "height": h,
                "width": w, "index": i, "name": name}


CALIBRATION_IMAGES = 64


def calibration_sample(paths, count=CALIBRATION_IMAGES):
    """``count`` of ``paths`` spread evenly over them (a dataset's slices come in patient order, so
    the first ``count`` would calibrate on a few patients)."""
    paths = list(paths)
    if len(paths) <= count:
        return paths
    return [paths[round(k * (len(paths) - 1) / (count - 1))] for k in range(count)]


def dropping_scores_below(cfg, threshold):
    """A copy of ``cfg`` whose box head drops the detections scoring below ``threshold``, as
    Detectron2's demo does with its confidence threshold. For callers that keep only the
    detections scoring >= ``threshold``: the same detections, without computing the masks of the
    others (a config may keep scores down to 0.001 for COCO AP). Never lowers the config's own."""
    # The box head keeps scores > its threshold; the largest float32 below ``threshold`` keeps a
    # score equal to it, as the callers' >= does.
    below = float(np.nextafter(np.float32(threshold), np.float32(0)))
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = max(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST, below)
    cfg.freeze()
    return cfg


class BatchPredictor:
    """Loads ``cfg.MODEL.WEIGHTS`` once; calling it runs batched inference."""

    def __init__(self, cfg, batch_size=4, num_workers=2, on_error="raise", precision="fp32",
                 channels_last=True, backbone_runtime="torch", calibration_images=(),
                 box_head="fp32", roi_align="torchvision", mask_head="fp32"):
        """``precision="bf16"`` runs convolutions and matrix products in bfloat16 (autocast; boxes
        are still decoded in fp32), ``"bf16-backbone"`` only the backbone's (ResNet and FPN), its
        features handed to the heads in fp32; ``channels_last`` stores the model's convolution
        weights NHWC (same results; the default, as it was the fastest fp32 setting measured);
        ``backbone_runtime="onnxruntime"`` runs the backbone (ResNet and FPN, most of the compute)
        and the RPN head's convolutions as an ONNX Runtime session exported at start-up, and
        ``"onnxruntime-int8"`` that session quantized to int8, its activation ranges calibrated
        on ``calibration_images`` (paths or arrays, as for prediction; training images, a few
        dozen); ``box_head="int8"`` runs the
        box head's fully connected layers in int8, quantized dynamically (no calibration; CPU only;
        :mod:`tumorseg_d2.modeling.int8_box_head`); ``roi_align="gather"`` pools the regions of all
        FPN levels at once as weighted gathers instead of torchvision's region-by-region CPU
        kernel (the same values up to float rounding, several times faster on the CPU;
        :mod:`tumorseg_d2.modeling.gather_roi_align`); ``mask_head="bf16"`` runs the mask head's
        layers in bfloat16 (autocast; the masks are pasted from fp32 logits), worth it where a
        slice keeps many detections on a CPU with native bfloat16.
        tools/benchmark.py measures each (README, Performance). bf16 pays only on CPUs with
        native bfloat16 (AVX-512 or AMX); elsewhere it is much slower, which is logged."""
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error is {on_error!r}; use 'raise' or 'skip'.")
        if precision not in PRECISIONS:
            raise ValueError(f"precision is {precision!r}; use one of {sorted(PRECISIONS)}.")
        self.on_error, self.precision = on_error, precision
        slow_bf16_warning(PRECISIONS[precision], torch.device(cfg.MODEL.DEVICE).type)
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        SafeCheckpointer(self.model, same_classes=True).load(resolve_weights(cfg.MODEL.WEIGHTS))
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if backbone_runtime not in RUNTIMES:
            raise ValueError(f"backbone_runtime is {backbone_runtime!r}; use one of {RUNTIMES}.")
        if precision == "bf16-backbone":
            if backbone_runtime != "torch":
                raise ValueError(f"precision 'bf16-backbone' runs the torch backbone; it does not "
                                 f"combine with backbone_runtime {backbone_runtime!r}.")
            autocast_backbone(self.model, torch.bfloat16)
        if roi_align not in ROI_ALIGNS:
            raise ValueError(f"roi_align is {roi_align!r}; use one of {ROI_ALIGNS}.")
        if roi_align == "gather":
            use_gather_roi_align(self.model)  # before int8: it reorders fc1's inputs
        if box_head not in BOX_HEADS:
            raise ValueError(f"box_head is {box_head!r}; use one of {BOX_HEADS}.")
        if box_head == "int8":
            if precision == "bf16":
                raise ValueError("box_head 'int8' takes fp32 inputs; it does not combine with "
                                 "precision 'bf16' (use 'fp32' or 'bf16-backbone').")
            quantize_box_head(self.model)
        if mask_head not in MASK_HEADS:
            raise ValueError(f"mask_head is {mask_head!r}; use one of {MASK_HEADS}.")
        if mask_head == "bf16":
            slow_bf16_warning(torch.bfloat16, torch.device(cfg.MODEL.DEVICE).type)
            autocast_mask_head(self.model, torch.bfloat16)
        self.resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        if backbone_runtime == "onnxruntime":
            use_onnxruntime_backbone(self.model)
        elif backbone_runtime == "onnxruntime-int8":
            if not len(calibration_images):
                raise ValueError("backbone_runtime 'onnxruntime-int8' calibrates the int8 ranges "
                                 "on images: pass calibration_images (a few dozen training "
                                 "slices).")
            use_onnxruntime_backbone(self.model,
                                     calibration_inputs=self._backbone_inputs(calibration_images))
        self.model = augmented_model(self.cfg, self.model)  # TEST.AUG, when enabled
        self.batch_size, self.num_workers = batch_size, num_workers

    def _backbone_inputs(self, images):
        """Each image as the backbone sees it (resized, normalized, padded), one at a time."""
        prepared = _Images(list(images), self.cfg.INPUT.FORMAT, self.resize)
        for k in range(len(prepared)):
            x = prepared[k]
            if "error" in x:
                raise InputImageError(f"calibration image: {x['error']}")
            with torch.inference_mode():
                yield self.model.preprocess_image([x]).tensor

    def batches(self, images):
        loader = DataLoader(_Images(list(images), self.cfg.INPUT.FORMAT, self.resize),
                            batch_size=self.batch_size, num_workers=self.num_workers,
                            collate_fn=lambda batch: batch)
        yield from loader

    def predict_batch(self, batch, masks="rle", probability=False):
        """Results for one batch from :meth:`batches`, in order; unreadable inputs raise or give
        ``{"error": message}`` (``on_error``). With ``on_error="skip"``, a batch whose inference
        fails is retried image by image, so one bad input costs only its own result."""
        try:
            return self._predict_batch(batch, masks, probability)
        except Exception as e:  # noqa: BLE001 - whatever the model raises on one input
            if self.on_error != "skip":
                raise
            if len(batch) > 1:
                return [r for x in batch for r in self.predict_batch([x], masks, probability)]
            return [{"error": f"{batch[0].get('name', 'input')}: inference failed "
                              f"({type(e).__name__}: {e})"}]

    @torch.inference_mode()
    def _predict_batch(self, batch, masks, probability):
        bad = [x for x in batch if "error" in x]
        if bad and self.on_error == "raise":
            raise InputImageError(bad[0]["error"])
        good = [x for x in batch if "error" not in x]
        # Pixel-segmentation models give instances and the probability map at the input's size;
        # Mask R-CNN's raw output keeps the soft masks that make its probability map.
        pixel_model = getattr(self.model, "returns_probability_map", False)
        augmented = isinstance(self.model, GeneralizedRCNNWithTTA)
        if augmented and probability:
            raise ValueError("Mask R-CNN's test-time augmentation (TEST.AUG.ENABLED) merges "
                             "binary masks, so it gives no probability map; set "
                             "TEST.AUG.ENABLED False for one.")
        with torch.autocast(torch.device(self.cfg.MODEL.DEVICE).type,
                            dtype=PRECISIONS[self.precision], enabled=self.precision == "bf16"):
            raw = list((self.model(good) if pixel_model or augmented else
                        self.model.inference(good, do_postprocess=False)) if good else [])
        if self.precision == "bf16":
            raw = [_float32(r) for r in raw]
        raw = iter(raw)
        result = self._pixel_result if pixel_model else self._augmented_result if augmented \
            else self._result
        return [{"error": x["error"]} if "error" in x else
                result(next(raw), x, masks, probability) for x in batch]

    def __call__(self, images, masks="rle", probability=False):
        """Prediction records (:mod:`tumorseg_d2.predictions`) in input order, in input pixels:
        ``masks`` "rle" (COCO RLEs), "array" ((N, H, W) bool) or None (left out); with
        ``probability=True``, also ``probability`` (H, W) float32: per pixel, the highest mask
        probability of any detection (0 where there is none)."""
        out = []
        for batch in self.batches(images):
            out += self.predict_batch(batch, masks, probability)
        return out

    def _augmented_result(self, raw, x, masks, probability):
        """GeneralizedRCNNWithTTA's output: instances already at the input's size."""
        return from_instances(raw["instances"].to("cpu"), masks=masks)

    def _result(self, raw, x, masks, probability):
        h, w = x["height"], x["width"]
        has_masks = raw.has("pred_masks")
        if has_masks:  # carried through postprocessing, which may drop empty boxes
            raw.soft_masks = raw.pred_masks[:, 0]
            if masks != "array":  # only arrays are pasted at the image's size
                raw.remove("pred_masks")
        inst = detector_postprocess(raw, h, w).to("cpu")
        result = from_instances(inst, masks=masks)
        if has_masks and masks == "rle":  # pasted and encoded box by box
            result["masks"] = rles_in_boxes(inst.soft_masks, inst.pred_boxes.tensor, (h, w))
        if probability:
            # threshold < 0: paste the soft masks as uint8 0-255 instead of binarizing them.
            soft = paste_masks_in_image(inst.soft_masks, inst.pred_boxes, (h, w), threshold=-1)
            result["probability"] = (soft.max(dim=0).values.numpy().astype(np.float32) / 255
                                     if len(soft) else np.zeros((h, w), np.float32))
        return result

    @staticmethod
    def _pixel_result(out, x, masks, probability):
        result = from_instances(out["instances"].to("cpu"), masks=masks)
        if probability:
            result["probability"] = out["probability"].numpy().astype(np.float32)
        return result


def autocast_backbone(model, dtype):
    """Run ``model.backbone`` under autocast to ``dtype`` and hand its features on in float32, so
    that everything after it computes as in fp32."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise ValueError(f"precision 'bf16-backbone' needs a model with a backbone (Mask R-CNN); "
                         f"{type(model).__name__} has none: use precision 'bf16' or 'fp32'.")
    forward, device_type = backbone.forward, model.device.type

    def low_precision_forward(images):
        with torch.autocast(device_type, dtype=dtype):
            features = forward(images)
        return {name: f.float() for name, f in features.items()}
    backbone.forward = low_precision_forward
    return model


def autocast_mask_head(model, dtype):
    """Run the mask head's layers (convolutions, upsampling, predictor) under autocast to
    ``dtype`` and hand its logits on in float32: where the CPU multiplies bfloat16 natively, the
    many RoIs of a slice that keeps every detection cost a fraction of their fp32 time."""
    mask_head = getattr(getattr(model, "roi_heads", None), "mask_head", None)
    if mask_head is None or not hasattr(mask_head, "layers"):
        raise ValueError(f"mask_head 'bf16' needs a Mask R-CNN with a convolutional mask head "
                         f"(MODEL.MASK_ON True); {type(model).__name__} has none: leave "
                         "mask_head 'fp32'.")
    layers, device_type = mask_head.layers, model.device.type

    def low_precision_layers(x):
        with torch.autocast(device_type, dtype=dtype):
            return layers(x).float()
    mask_head.layers = low_precision_layers
    return model


def _float32(output):
    """A model output (Instances, or a dict of Instances and tensors) with fp32 floating fields:
    numpy and the mask pasting take no bfloat16."""
    if isinstance(output, dict):
        return {k: _float32(v) for k, v in output.items()}
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    for name, value in output.get_fields().items():
        if isinstance(value, torch.Tensor):
            output.set(name, _float32(value))
        elif hasattr(value, "tensor"):  # Boxes
            value.tensor = _float32(value.tensor)
    return output


def predict_volume(predictor, volume, threshold=0.5, window="auto", percentiles=None):
    """A :class:`~tumorseg_d2.data.volumes.Volume` slice by slice: (uint8 slices, the window used,
    prediction records, mask stack (N, H, W) bool, score stack (N, H, W) float32)."""
    slices, how = window_to_uint8(volume, window, percentiles or DEFAULT_PERCENTILES)
    preds = predictor(list(slices), masks="rle")
    failed = next((p["error"] for p in preds if "error" in p), None)
    if failed:
        raise VolumeError(f"{volume.source}: {failed}")
    masks, scores = zip(*(mask_and_scores(p, threshold) for p in preds))
    return slices, how, preds, np.stack(masks), np.stack(scores)
