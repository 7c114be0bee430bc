"""Overlap and detection figures read by clinicians, one small function each.

Masks are boolean arrays of one image (H, W), or of a volume (N, H, W): the union of the instances
above the score threshold for predictions, the union of the annotated tumors for the truth.
Conventions for empty inputs are stated per function; an undefined figure is NaN, never a silent 0
or 1.
"""
import cv2
import numpy as np
from scipy import ndimage


def _counts(pred, truth):
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    tp = np.count_nonzero(pred & truth)
    return tp, np.count_nonzero(pred & ~truth), np.count_nonzero(~pred & truth)


def dice(pred, truth):
    """Dice = 2|P∩T| / (|P| + |T|). Both empty: 1 (the empty slice was called empty)."""
    tp, fp, fn = _counts(pred, truth)
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def iou(pred, truth):
    """IoU (Jaccard) = |P∩T| / |P∪T|. Both empty: 1."""
    tp, fp, fn = _counts(pred, truth)
    return 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)


def pixel_precision(tp, fp):
    """Precision = TP / (TP + FP) over pixels (or detections). No positive call: NaN."""
    return tp / (tp + fp) if tp + fp else float("nan")


def pixel_recall(tp, fn):
    """Recall (sensitivity) = TP / (TP + FN). Nothing to find: NaN."""
    return tp / (tp + fn) if tp + fn else float("nan")


def f1_score(tp, fp, fn):
    """F1 = 2TP / (2TP + FP + FN), the harmonic mean of precision and recall. All zero: NaN."""
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")


def specificity(tn, fp):
    """Specificity = TN / (TN + FP). No negatives: NaN."""
    return tn / (tn + fp) if tn + fp else float("nan")


def box_iou(a, b):
    """IoU of two boxes (x0, y0, x1, y1) in continuous coordinates."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _boundary(mask):
    """Pixels (voxels) of ``mask`` with a face neighbour outside it (the border counts as outside)."""
    if mask.ndim == 2:
        padded = np.pad(mask, 1).astype(np.uint8)
        inner = cv2.erode(padded, np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8))[1:-1, 1:-1]
        return mask & ~inner.astype(bool)
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    inner = ndimage.binary_erosion(np.pad(mask, 1), cross)[(slice(1, -1),) * mask.ndim]
    return mask & ~inner


def _distance_to(points, spacing=None):
    """Euclidean distance (in units of ``spacing``, default pixels) of every pixel or voxel to the
    nearest True one of ``points``."""
    if points.ndim == 2 and spacing is None:
        return cv2.distanceTransform((~points).astype(np.uint8), cv2.DIST_L2,
                                     cv2.DIST_MASK_PRECISE)
    return ndimage.distance_transform_edt(~points, sampling=spacing)


def hausdorff95(pred, truth, spacing=None):
    """HD95 in pixels (or, with ``spacing`` per axis, in its units, e.g. mm for a volume), as MONAI
    computes it (``compute_hausdorff_distance(percentile=95)``) and most
    papers report it: the larger of the two directed 95th percentiles, max(P95 of the distances
    from each boundary pixel of ``pred`` to the nearest boundary pixel of ``truth``, P95 of the
    reverse). Boundary: the pixels (voxels) with a face neighbour outside the mask. Defined only
    when both masks are non-empty (NaN otherwise, e.g. a missed tumor). Identical masks give 0.
    """
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if not pred.any() or not truth.any():
        return float("nan")
    bp, bt = _boundary(pred), _boundary(truth)
    return float(max(np.percentile(_distance_to(bt, spacing)[bp], 95),
                     np.percentile(_distance_to(bp, spacing)[bt], 95)))


def hausdorff95_pooled(pred, truth):
    """HD95 in pixels as medpy computes it (``medpy.metric.hd95``): the 95th percentile of the
    boundary distances of both directions pooled; usually a few percent below
    :func:`hausdorff95` on irregular shapes. NaN unless both masks are non-empty."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if not pred.any() or not truth.any():
        return float("nan")
    bp, bt = _boundary(pred), _boundary(truth)
    return float(np.percentile(np.concatenate([_distance_to(bt)[bp], _distance_to(bp)[bt]]), 95))
