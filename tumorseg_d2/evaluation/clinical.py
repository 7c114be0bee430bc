"""Per-image overlap and detection figures at a score threshold, and their summaries.

Predictions are prediction records (:mod:`tumorseg_d2.predictions`); ground truth is the
registered dataset's records.

Definitions (also written into the report):
- A detection is a prediction with score >= the threshold. A tumor is *found* when a detection
  (of its class, for per-class figures) overlaps it with box IoU >= ``match_iou`` (0.5), matched
  greedily by score, one detection per tumor. Unmatched tumors are *missed*; unmatched detections
  are *false alarms*. A missed tumor is *mislocalized* when a detection (of its class, for
  per-class figures) overlaps it with box IoU >= ``NEAR_IOU`` (0.1, TIDE's background threshold):
  the model saw it but drew another extent; the other missed tumors had no detection near them.
- Lesion-level sensitivity = found / tumors, precision = found / detections, F1 their harmonic mean.
- Slice level: a slice with a tumor is a true positive when all its tumors are found, else a false
  negative; a slice without a tumor is a false positive when it has a detection, else a true
  negative. Specificity = TN / (TN + FP) needs slices without tumors. False positives per
  tumor-free slice = detections on tumor-free slices / tumor-free slices.
- Overlap: the predicted mask of a slice is the union of its detections' masks, the true mask the
  union of its tumors. Dice and IoU are given per slice (their mean over the slices that have a
  tumor, so empty slices do not inflate it) and pooled (every pixel of the split counted once).
  Pixel precision, recall and F1 are pooled. HD95 (MONAI's convention: the larger directed 95th
  percentile; medpy's pooled one beside it) is averaged over slices where both masks are
  non-empty; the slices with a tumor but no predicted pixel, left out of that mean, are counted.
"""
import numpy as np
from ..data.datasets import truth_instances
from ..predictions import mask_arrays
from . import metrics as M

MATCH_IOU = 0.5
NEAR_IOU = 0.1


def truth_of(record, cls=None):
    """(boxes XYXY, classes, union mask) of the tumors in a record (of class ``cls`` if given)."""
    boxes, classes, masks = truth_instances(record, cls)
    union = np.zeros((record["height"], record["width"]), bool)
    for m in masks:
        union |= m
    return boxes, classes, union


def detections_of(pred, threshold, cls=None):
    keep = pred["scores"] >= threshold
    if cls is not None:
        keep &= pred["classes"] == cls
    return np.flatnonzero(keep)


def match(pred_boxes, pred_scores, true_boxes, match_iou=MATCH_IOU):
    """Greedy matching by score; returns a list of (pred index, truth index) pairs."""
    pairs, taken = [], set()
    for i in np.argsort(-pred_scores, kind="stable"):
        ious = [(M.box_iou(pred_boxes[i], t), j) for j, t in enumerate(true_boxes) if j not in taken]
        best = max(ious, default=(0.0, None))
        if best[1] is not None and best[0] >= match_iou:
            pairs.append((int(i), best[1]))
            taken.add(best[1])
    return pairs


def _lesion_counts(pred, det, true_boxes, match_iou):
    """(found, tumors, detections) of one image for the detections ``det``."""
    pairs = match(pred["boxes"][det], pred["scores"][det], true_boxes, match_iou)
    return len(pairs), len(true_boxes), len(det)


def mislocalized(pred_boxes, true_boxes, pairs):
    """How many tumors left unmatched by ``pairs`` a detection overlaps with box IoU >= NEAR_IOU."""
    matched = {j for _, j in pairs}
    return sum(1 for j, t in enumerate(true_boxes) if j not in matched
               and any(M.box_iou(b, t) >= NEAR_IOU for b in pred_boxes))


def image_row(pred, record, threshold, cls=None, match_iou=MATCH_IOU):
    """All per-slice figures of one image (for one class, or all classes when cls is None)."""
    true_boxes, _, true_mask = truth_of(record, cls)
    det = detections_of(pred, threshold, cls)
    masks = mask_arrays(pred, det)
    pred_mask = np.any(masks, axis=0) if masks else np.zeros_like(true_mask)
    pairs = match(pred["boxes"][det], pred["scores"][det], true_boxes, match_iou)
    found, tumors, detections = len(pairs), len(true_boxes), len(det)
    tp_px, fp_px, fn_px = M._counts(pred_mask, true_mask)
    if tumors:
        outcome = "found" if found == tumors else "missed"
    else:
        outcome = "false alarm" if detections else "true negative"
    return {
        "image_id": record["image_id"], "file_name": record["file_name"],
        "patient_id": record.get("patient_id"), "slice_index": record.get("slice_index"),
        "tumors": tumors, "detections": detections, "found": found,
        "mislocalized": mislocalized(pred["boxes"][det], true_boxes, pairs),
        "outcome": outcome,
        "false_alarms": detections - found,
        "dice": M.dice(pred_mask, true_mask), "iou": M.iou(pred_mask, true_mask),
        "hd95": M.hausdorff95(pred_mask, true_mask),
        "hd95_pooled": M.hausdorff95_pooled(pred_mask, true_mask),
        "tp_px": tp_px, "fp_px": fp_px, "fn_px": fn_px,
    }


def summarize(rows):
    """Split-level figures from per-image rows (see the module docstring for definitions)."""
    tumors = sum(r["tumors"] for r in rows)
    found = sum(r["found"] for r in rows)
    near = sum(r["mislocalized"] for r in rows)
    detections = sum(r["detections"] for r in rows)
    tp_px, fp_px, fn_px = (sum(r[k] for r in rows) for k in ("tp_px", "fp_px", "fn_px"))
    outcomes = [r["outcome"] for r in rows]
    slices = {
        "TP": sum(o == "found" for o in outcomes), "FN": sum(o == "missed" for o in outcomes),
        "FP": sum(o == "false alarm" for o in outcomes),
        "TN": sum(o == "true negative" for o in outcomes),
    }
    hd = [r["hd95"] for r in rows if not np.isnan(r["hd95"])]
    hd_pooled = [r["hd95_pooled"] for r in rows if not np.isnan(r["hd95_pooled"])]
    positive = [r for r in rows if r["tumors"]]
    tumor_free = slices["TN"] + slices["FP"]
    alarms_free = sum(r["detections"] for r in rows if not r["tumors"])
    return {
        "images": len(rows), "tumors": tumors, "detections": detections, "found": found,
        "missed": tumors - found, "false_alarms": detections - found,
        "missed_mislocalized": near, "missed_undetected": tumors - found - near,
        "sensitivity": M.pixel_recall(found, tumors - found),
        "precision": M.pixel_precision(found, detections - found),
        "f1": M.f1_score(found, detections - found, tumors - found),
        "slice_confusion": slices,
        "slice_sensitivity": M.pixel_recall(slices["TP"], slices["FN"]),
        "slice_specificity": M.specificity(slices["TN"], slices["FP"]),
        "tumor_free_slices": tumor_free, "false_positive_slices": slices["FP"],
        "false_alarms_on_tumor_free_slices": alarms_free,
        "false_alarms_per_tumor_free_slice": alarms_free / tumor_free if tumor_free else
        float("nan"),
        "dice_mean_per_image": _mean([r["dice"] for r in positive]),
        "iou_mean_per_image": _mean([r["iou"] for r in positive]),
        "dice_pooled": M.f1_score(tp_px, fp_px, fn_px),
        "iou_pooled": tp_px / (tp_px + fp_px + fn_px) if tp_px + fp_px + fn_px else float("nan"),
        "pixel_precision": M.pixel_precision(tp_px, fp_px),
        "pixel_recall": M.pixel_recall(tp_px, fn_px),
        "pixel_f1": M.f1_score(tp_px, fp_px, fn_px),
        "hd95_mean": _mean(hd),
        "hd95_pooled_mean": _mean(hd_pooled),
        "hd95_images": len(hd),
        # Images with a tumor whose HD95 is undefined (no predicted pixel): the mean leaves them
        # out, so more misses can make it look better. Reported beside every HD95.
        "hd95_missing": sum(1 for r in rows if r["tumors"] and np.isnan(r["hd95"])),
    }


def _mean(values):
    return float(np.mean(values)) if len(values) else float("nan")


def class_confusion(preds, records, threshold, num_classes, match_iou=MATCH_IOU):
    """Instance-level confusion matrix, rows truth and columns prediction, index 0 = background.

    Each tumor is matched (class-agnostic, greedy by score, box IoU >= match_iou) to a detection:
    cell (true class, predicted class); unmatched tumors go to the background column, unmatched
    detections to the background row.
    """
    cm = np.zeros((num_classes + 1, num_classes + 1), int)
    by_id = {p["image_id"]: p for p in preds}
    for record in records:
        pred = by_id[record["image_id"]]
        true_boxes, true_classes, _ = truth_of(record)
        det = detections_of(pred, threshold)
        pairs = match(pred["boxes"][det], pred["scores"][det], true_boxes, match_iou)
        for i, j in pairs:
            cm[true_classes[j] + 1, pred["classes"][det[i]] + 1] += 1
        for j in set(range(len(true_boxes))) - {j for _, j in pairs}:
            cm[true_classes[j] + 1, 0] += 1
        for i in set(range(len(det))) - {i for i, _ in pairs}:
            cm[0, pred["classes"][det[i]] + 1] += 1
    return cm


def rows_for(preds, records, threshold, cls=None, match_iou=MATCH_IOU):
    by_id = {p["image_id"]: p for p in preds}
    return [image_row(by_id[r["image_id"]], r, threshold, cls, match_iou) for r in records]


def best_threshold(preds, records, grid=None, match_iou=MATCH_IOU):
    """The score threshold that maximises lesion-level F1 (class-agnostic); ties: the lowest."""
    grid = np.round(np.arange(0.05, 1.0, 0.05), 2) if grid is None else grid
    by_id = {p["image_id"]: p for p in preds}
    truths = [(by_id[r["image_id"]], truth_of(r)[0]) for r in records]
    scores = []
    for t in grid:
        found, tumors, det = np.sum([_lesion_counts(p, detections_of(p, float(t)), boxes, match_iou)
                                     for p, boxes in truths], axis=0)
        f1 = M.f1_score(found, det - found, tumors - found)
        scores.append(-1.0 if np.isnan(f1) else float(f1))
    k = int(np.argmax(scores))
    return float(grid[k]), {float(t): s for t, s in zip(grid, scores)}
