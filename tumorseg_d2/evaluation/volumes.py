"""Figures of a volume: its 3-D lesions (connected across slices) with their sizes, and volumetric
Dice, HD95 in mm and volume error against a ground-truth mask volume.

Masks are (N, H, W) stacks of slices; ``spacing`` is (slice, row, column) in mm, or None, in
which case every size is in voxels and the outputs say so.
"""
import numpy as np
from scipy import ndimage

from . import metrics as M

# 26-connectivity: voxels touching by a face, an edge or a corner are one lesion, as 8-connected
# pixels are one region of a slice.
CONNECTIVITY = ndimage.generate_binary_structure(3, 3)


def voxel_volume(spacing):
    """mm^3 of one voxel, or None without a spacing."""
    return float(np.prod(spacing)) if spacing else None


def lesions(mask, spacing=None, scores=None):
    """The 3-D lesions of a mask stack, largest first: for each, its slices, bounding box
    (slice, row, column ranges, inclusive), voxel count, volume in mm^3 and ml (None without a
    spacing) and, with ``scores`` (per-voxel detection score), the highest score in it."""
    labels, count = ndimage.label(np.asarray(mask, bool), structure=CONNECTIVITY)
    found = []
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        voxels = labels[box] == k
        n = int(voxels.sum())
        mm3 = n * voxel_volume(spacing) if spacing else None
        lesion = {
            "slices": [int(box[0].start + i) for i in np.flatnonzero(voxels.any(axis=(1, 2)))],
            "bbox": {axis: [int(s.start), int(s.stop - 1)]
                     for axis, s in zip(("slice", "row", "column"), box)},
            "voxels": n, "volume_mm3": mm3, "volume_ml": None if mm3 is None else mm3 / 1000,
        }
        if scores is not None:
            lesion["score"] = float(np.asarray(scores)[box][voxels].max())
        found.append(lesion)
    return sorted(found, key=lambda d: -d["voxels"])


def volume_report(mask, spacing, scores=None, source="", window=None, threshold=None):
    """The volume_report.json content of a predicted mask stack."""
    found = lesions(mask, spacing, scores)
    total = int(np.count_nonzero(mask))
    return {
        "source": source, "slices": int(len(mask)), "slice_shape": list(np.shape(mask)[1:]),
        "spacing_mm": list(spacing) if spacing else None,
        "units": "mm" if spacing else "voxels (the input states no spacing)",
        "window": window, "score_threshold": threshold,
        "lesions": found, "tumor_voxels": total,
        "tumor_volume_ml": total * voxel_volume(spacing) / 1000 if spacing else None,
        "slices_with_tumor": [int(i) for i in np.flatnonzero(np.any(mask, axis=(1, 2)))],
    }


def volume_figures(pred, truth, spacing=None):
    """Volumetric Dice and IoU, HD95 (mm, or voxels without a spacing), predicted and true volume
    and their difference, and the per-slice figures (mean Dice over slices with tumor, slice
    sensitivity and specificity), of a predicted mask stack against the true one."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape.")
    unit = voxel_volume(spacing) / 1000 if spacing else 1.0
    positive = [i for i in range(len(truth)) if truth[i].any()]
    has_pred = pred.any(axis=(1, 2))
    has_truth = truth.any(axis=(1, 2))
    tp, fn = int(np.sum(has_pred & has_truth)), int(np.sum(~has_pred & has_truth))
    fp, tn = int(np.sum(has_pred & ~has_truth)), int(np.sum(~has_pred & ~has_truth))
    predicted, true = pred.sum() * unit, truth.sum() * unit
    return {
        "units": "mm / ml" if spacing else "voxels (the input states no spacing)",
        "dice": M.dice(pred, truth), "iou": M.iou(pred, truth),
        "hd95": M.hausdorff95(pred, truth, spacing),
        "volume_predicted": float(predicted), "volume_true": float(true),
        "volume_error": float(predicted - true),
        "volume_error_relative": float((predicted - true) / true) if true else float("nan"),
        "lesions_predicted": len(lesions(pred)), "lesions_true": len(lesions(truth)),
        "slice_dice_mean": float(np.mean([M.dice(pred[i], truth[i]) for i in positive]))
        if positive else float("nan"),
        "slice_confusion": {"TP": tp, "FN": fn, "FP": fp, "TN": tn},
        "slice_sensitivity": M.pixel_recall(tp, fn), "slice_specificity": M.specificity(tn, fp),
    }
