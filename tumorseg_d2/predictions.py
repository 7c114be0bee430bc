"""The prediction record, and the one set of converters between it, Detectron2 ``Instances`` and
COCO results.

A prediction record is one image's detections, a dict:

- ``image_id``: the dataset's image id (for files, the input's index);
- ``height``, ``width``: the image's size in pixels;
- ``boxes`` (N, 4) float XYXY in image pixels, ``scores`` (N,) float, ``classes`` (N,) int
  (contiguous class ids, 0..K-1);
- ``masks``: N COCO RLEs (the default), or an (N, H, W) bool array (``masks="array"``); absent
  for a model without masks;
- optionally ``probability`` (H, W) float32: per pixel, the highest mask probability of any
  detection (for drawing).

Everything that predicts (:class:`~tumorseg_d2.predictor.BatchPredictor`, the evaluation pipeline,
the evaluators) makes records with :func:`from_instances` (BatchPredictor encodes Mask R-CNN's
masks box by box with :func:`rles_in_boxes`, the same RLEs); everything that keeps, scores or draws
them reads them with :func:`above`, :func:`mask_arrays` and :func:`to_coco_results`. Another
tool's COCO results become records with :func:`from_coco_results`.
"""
import numpy as np
import torch
from detectron2.layers.mask_ops import _do_paste_mask
from detectron2.structures import Boxes, Instances
from pycocotools import mask as mask_util

MASK_ENCODINGS = ("rle", "array", None)


def from_instances(instances, image_id=None, masks="rle"):
    """The record of postprocessed ``Instances`` (on the CPU, in image pixels); ``masks``: "rle",
    "array" or None (left out)."""
    if masks not in MASK_ENCODINGS:
        raise ValueError(f"masks is {masks!r}; use one of {MASK_ENCODINGS}.")
    h, w = instances.image_size
    pred = {"image_id": image_id, "height": h, "width": w,
            "boxes": instances.pred_boxes.tensor.numpy().reshape(-1, 4),  # float32, as computed
            "scores": instances.scores.numpy(),
            "classes": instances.pred_classes.numpy().astype(int)}
    if masks and instances.has("pred_masks"):
        array = instances.pred_masks.numpy().astype(bool)
        pred["masks"] = array if masks == "array" else \
            [mask_util.encode(np.asfortranarray(m.astype(np.uint8))) for m in array]
    return pred


def rles_in_boxes(masks, boxes, image_size, threshold=0.5):
    """COCO RLEs of soft masks pasted into their boxes: the masks of Detectron2's
    ``paste_masks_in_image(masks, boxes, image_size, threshold)``, encoded one by one, without an
    image-sized array per detection. Each mask is pasted over its box's pixels only, with the
    function Detectron2 uses on the CPU, and its runs counted from there (the rest is 0), which
    saves most of the time when a slice keeps many detections.

    masks: (N, M, M) float probabilities; boxes: (N, 4) XYXY tensor in image pixels."""
    h, w = image_size
    rles = []
    for mask, box in zip(masks, boxes):
        pasted, (rows, cols) = _do_paste_mask(mask[None, None].float(), box[None], h, w,
                                              skip_empty=True)
        rows, cols = slice(int(rows.start), int(rows.stop)), slice(int(cols.start), int(cols.stop))
        rles.append(_rle_of_region((pasted[0] >= threshold).numpy(), rows, cols, h, w))
    return rles


def _rle_of_region(region, rows, cols, h, w):
    """The COCO RLE of an (h, w) mask that is ``region`` at (rows, cols) and 0 elsewhere."""
    # COCO runs go down each column in turn (Fortran order), starting with a run of 0s: only the
    # region's columns need looking at, at full height; the columns either side are one run of 0s.
    strip = np.zeros((cols.stop - cols.start, h), np.uint8)
    strip[:, rows] = region.T
    flat = strip.ravel()
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate(([0], starts, [flat.size])))
    if flat[0]:
        counts = np.concatenate(([0], counts))
    counts[0] += cols.start * h
    after = (w - cols.stop) * h
    if len(counts) % 2:  # it ends on a run of 0s
        counts[-1] += after
    elif after:
        counts = np.append(counts, after)
    return mask_util.frPyObjects({"counts": counts.tolist(), "size": [h, w]}, h, w)


def to_instances(pred):
    """``Instances`` (image size, pred_boxes, scores, pred_classes and, if the record has masks,
    pred_masks) of a record."""
    h, w = pred["height"], pred["width"]
    inst = Instances((h, w))
    inst.pred_boxes = Boxes(torch.as_tensor(np.asarray(pred["boxes"], np.float32).reshape(-1, 4)))
    inst.scores = torch.as_tensor(np.asarray(pred["scores"], np.float32))
    inst.pred_classes = torch.as_tensor(np.asarray(pred["classes"], np.int64))
    if "masks" in pred:
        masks = mask_arrays(pred)
        inst.pred_masks = torch.from_numpy(np.stack(masks) if len(masks) else
                                           np.zeros((0, h, w), bool))
    return inst


def above(pred, threshold):
    """The record with only the detections scoring >= ``threshold``."""
    keep = np.flatnonzero(np.asarray(pred["scores"]) >= threshold)
    out = dict(pred, boxes=pred["boxes"][keep], scores=pred["scores"][keep],
               classes=pred["classes"][keep])
    if "masks" in pred:
        out["masks"] = pred["masks"][keep] if isinstance(pred["masks"], np.ndarray) else \
            [pred["masks"][i] for i in keep]
    return out


def mask_arrays(pred, indices=None):
    """The record's masks (those at ``indices``, default all) as a list of (H, W) bool arrays."""
    masks = pred.get("masks", [])
    indices = range(len(masks)) if indices is None else indices
    if isinstance(masks, np.ndarray):
        return [masks[i] for i in indices]
    return [mask_util.decode(masks[i]).astype(bool) for i in indices]


def dataset_category_ids(metadata):
    """{contiguous class id: the dataset's category id} of a dataset's metadata."""
    return {v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()}


def to_coco_results(preds, category_ids):
    """Standard COCO results (XYWH boxes, RLE masks with text counts) of records, with the
    dataset's category ids (``category_ids``: :func:`dataset_category_ids`)."""
    results = []
    for p in preds:
        rles = p.get("masks")
        if isinstance(rles, np.ndarray):
            rles = [mask_util.encode(np.asfortranarray(m.astype(np.uint8))) for m in rles]
        for k, (box, score, cls) in enumerate(zip(p["boxes"], p["scores"], p["classes"])):
            x0, y0, x1, y1 = (float(v) for v in box)
            result = {"image_id": p["image_id"], "category_id": category_ids[int(cls)],
                      "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)}
            if rles is not None:
                counts = rles[k]["counts"]
                result["segmentation"] = {"size": list(rles[k]["size"]), "counts":
                                          counts.decode() if isinstance(counts, bytes) else counts}
            results.append(result)
    return results


class ResultsError(ValueError):
    """A COCO results file that cannot be scored against the split; the message names the entry."""


def from_coco_results(results, records, category_ids, source="results"):
    """Prediction records (RLE masks) of standard COCO results, e.g. another tool's, for a split:
    one per dataset record, in record order (an image without results has no detection).

    ``records``: the split's dataset records; ``category_ids``: {contiguous class id: dataset
    category id} (:func:`dataset_category_ids`). Each result needs ``image_id`` (of the split),
    ``category_id`` (of the dataset), ``bbox`` (XYWH pixels), ``score`` and ``segmentation`` (RLE
    or polygons at the image's size); the first that does not is named in a ResultsError."""
    if not isinstance(results, list):
        raise ResultsError(f"{source} is not a COCO results list (a json list of detections with "
                           "image_id, category_id, bbox, score and segmentation).")
    contiguous = {int(v): k for k, v in category_ids.items()}
    by_id = {r["image_id"]: r for r in records}
    per_image = {image_id: [] for image_id in by_id}
    for k, result in enumerate(results):
        problem = _result_problem(result, by_id, contiguous)
        if problem:
            raise ResultsError(f"{source}, detection {k}: {problem}")
        per_image[result["image_id"]].append(result)
    preds = []
    for record in records:
        h, w = record["height"], record["width"]
        found = per_image[record["image_id"]]
        boxes = np.array([[x, y, x + bw, y + bh] for x, y, bw, bh in
                          (r["bbox"] for r in found)], float).reshape(-1, 4)
        preds.append({"image_id": record["image_id"], "height": h, "width": w, "boxes": boxes,
                      "scores": np.array([float(r["score"]) for r in found]),
                      "classes": np.array([contiguous[r["category_id"]] for r in found], int),
                      "masks": [_rle(r["segmentation"], h, w) for r in found]})
    return preds


def _result_problem(result, images, contiguous):
    if not isinstance(result, dict):
        return f"not an object ({type(result).__name__})"
    missing = [k for k in ("image_id", "category_id", "bbox", "score", "segmentation")
               if k not in result]
    if missing:
        return (f"no {', '.join(missing)}" + (": masks are needed for mask AP and Dice; convert the "
                "tool's masks (e.g. YOLO's polygons) into COCO segmentation" if "segmentation"
                in missing else ""))
    if result["image_id"] not in images:
        return (f"image_id {result['image_id']!r} is not an image of the split: the results must "
                "use the split's COCO image ids (those of its json), and be for that split")
    if result["category_id"] not in contiguous:
        return (f"category_id {result['category_id']!r} is not one of the dataset's category ids "
                f"{sorted(contiguous)}")
    box = result["bbox"]
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)
            and box[2] >= 0 and box[3] >= 0):
        return f"bbox {box!r} is not [x, y, width, height] with width and height >= 0"
    if not _is_number(result["score"]):
        return f"score {result['score']!r} is not a number"
    image = images[result["image_id"]]
    seg = result["segmentation"]
    if isinstance(seg, dict):
        if list(seg.get("size", [])) != [image["height"], image["width"]] or "counts" not in seg:
            return (f"segmentation RLE of size {seg.get('size')} is not at the image's size "
                    f"[{image['height']}, {image['width']}] (or has no counts)")
    elif not (isinstance(seg, list) and seg and all(
            isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(map(_is_number, p))
            for p in seg)):
        return "segmentation is neither an RLE nor a list of polygons [x1, y1, x2, y2, ...]"
    return None


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _rle(segmentation, h, w):
    """One compressed RLE (bytes counts, as :func:`from_instances` makes) of a COCO segmentation."""
    if isinstance(segmentation, list):  # polygons: their union
        return mask_util.merge(mask_util.frPyObjects(segmentation, h, w))
    if isinstance(segmentation["counts"], list):  # uncompressed RLE
        return mask_util.frPyObjects(segmentation, h, w)
    counts = segmentation["counts"]
    return {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}


def mask_and_scores(pred, threshold):
    """(union mask (H, W) bool, score map (H, W) float32) of the detections scoring >=
    ``threshold``: per pixel, whether a detection covers it and the highest score that does."""
    kept = above(pred, threshold)
    mask = np.zeros((pred["height"], pred["width"]), bool)
    scores = np.zeros(mask.shape, np.float32)
    for m, score in zip(mask_arrays(kept), kept["scores"]):
        mask |= m
        scores[m] = np.maximum(scores[m], score)
    return mask, scores
