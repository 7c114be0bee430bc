"""Known answers for the clinical figures (tumorseg_d2.evaluation.metrics / clinical)."""
import math

import numpy as np
import pytest
from pycocotools import mask as mask_util

from tumorseg_d2.evaluation import clinical
from tumorseg_d2.evaluation import metrics as M


def square(x0, y0, size, shape=(64, 64)):
    m = np.zeros(shape, bool)
    m[y0:y0 + size, x0:x0 + size] = True
    return m


def test_overlap_by_hand():
    a, b = square(10, 10, 10), square(13, 10, 10)  # shifted 3 px: overlap 7x10
    assert M.iou(a, b) == pytest.approx(70 / 130)
    assert M.dice(a, b) == pytest.approx(140 / 200)
    assert M.dice(a, a) == M.iou(a, a) == 1.0
    empty = np.zeros_like(a)
    assert M.dice(empty, empty) == 1.0 and M.dice(a, empty) == 0.0
    assert M.hausdorff95(a, a) == 0.0
    assert M.hausdorff95(a, b) == pytest.approx(3.0)
    assert math.isnan(M.hausdorff95(a, empty))


def test_box_iou_by_hand():
    assert M.box_iou((10, 10, 20, 20), (13, 10, 23, 20)) == pytest.approx(70 / 130)
    assert M.box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def test_ratios_and_undefined_cases():
    assert M.pixel_precision(3, 1) == 0.75 and M.pixel_recall(3, 3) == 0.5
    assert M.f1_score(3, 1, 3) == pytest.approx(2 * 0.75 * 0.5 / 1.25)
    assert math.isnan(M.pixel_precision(0, 0)) and math.isnan(M.specificity(0, 0))


def record(image_id, boxes=(), classes=(), size=64):
    anns = [{"bbox": list(b), "bbox_mode": 1, "category_id": c,  # BoxMode.XYWH_ABS
             "segmentation": [[b[0], b[1], b[0] + b[2], b[1], b[0] + b[2], b[1] + b[3],
                               b[0], b[1] + b[3]]]} for b, c in zip(boxes, classes)]
    return {"image_id": image_id, "file_name": f"{image_id}.jpg", "height": size, "width": size,
            "annotations": anns}


def prediction(image_id, boxes=(), scores=(), classes=(), size=64):
    rles = []
    for x0, y0, x1, y1 in boxes:
        m = np.zeros((size, size), np.uint8, order="F")
        m[int(y0):int(y1), int(x0):int(x1)] = 1
        rles.append(mask_util.encode(m[:, :, None])[0])
    return {"image_id": image_id, "boxes": np.array(boxes, float).reshape(-1, 4),
            "scores": np.array(scores, float), "classes": np.array(classes, int), "masks": rles}


def test_shifted_box_gives_hand_computed_iou():
    rec = record(0, [(10, 10, 10, 10)], [0])
    pred = prediction(0, [(13, 10, 23, 20)], [0.9], [0])
    row = clinical.image_row(pred, rec, threshold=0.5)
    assert row["iou"] == pytest.approx(70 / 130) and row["dice"] == pytest.approx(0.7)
    assert row["outcome"] == "found"  # box IoU 0.54 >= 0.5
    far = clinical.image_row(prediction(0, [(16, 10, 26, 20)], [0.9], [0]), rec, 0.5)
    assert far["iou"] == pytest.approx(40 / 160) and far["outcome"] == "missed"
    assert far["false_alarms"] == 1


def test_empty_slice_without_prediction_is_a_true_negative():
    row = clinical.image_row(prediction(0), record(0), threshold=0.5)
    assert row["outcome"] == "true negative" and row["dice"] == 1.0
    below = clinical.image_row(prediction(0, [(1, 1, 9, 9)], [0.3], [0]), record(0), 0.5)
    assert below["outcome"] == "true negative"
    above = clinical.image_row(prediction(0, [(1, 1, 9, 9)], [0.7], [0]), record(0), 0.5)
    assert above["outcome"] == "false alarm"
    s = clinical.summarize([row, above])
    assert s["slice_confusion"] == {"TP": 0, "FN": 0, "FP": 1, "TN": 1}
    assert s["slice_specificity"] == 0.5


def test_no_predictions_score_zero_recall():
    recs = [record(i, [(10, 10, 20, 20)], [i % 2]) for i in range(4)]
    s = clinical.summarize(clinical.rows_for([prediction(i) for i in range(4)], recs, 0.5))
    assert s["sensitivity"] == 0.0 and s["pixel_recall"] == 0.0 and s["dice_pooled"] == 0.0
    assert s["missed"] == 4 and math.isnan(s["precision"])


def test_confusion_matrix_counts_class_mixups():
    recs = [record(0, [(10, 10, 20, 20)], [0]), record(1, [(10, 10, 20, 20)], [1]), record(2)]
    preds = [prediction(0, [(10, 10, 30, 30)], [0.9], [1]),   # class 0 called 1
             prediction(1, [(10, 10, 30, 30)], [0.9], [1]),   # right
             prediction(2, [(5, 5, 15, 15)], [0.9], [0])]     # false alarm
    cm = clinical.class_confusion(preds, recs, 0.5, num_classes=2)
    assert cm.tolist() == [[0, 1, 0], [0, 0, 1], [0, 0, 1]]


def test_threshold_maximises_f1():
    recs = [record(0, [(10, 10, 20, 20)], [0]), record(1)]
    preds = [prediction(0, [(10, 10, 30, 30)], [0.8], [0]),
             prediction(1, [(5, 5, 15, 15)], [0.4], [0])]
    t, f1s = clinical.best_threshold(preds, recs)
    assert t == 0.45 and f1s[t] == 1.0 and f1s[0.4] < 1.0


def _irregular_mask(rng, size=96):
    """A blob with a ragged outline: smoothed noise, thresholded, plus a few random discs."""
    import cv2

    noise = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 4)
    mask = noise > np.quantile(noise, 0.7)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(3):
        cy, cx, r = rng.integers(10, size - 10), rng.integers(10, size - 10), rng.integers(3, 12)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return mask


def _reference_hd95(a, b):
    """Independent HD95 (MONAI's definition): edges by scipy's binary erosion, exact distances by
    brute force, the larger of the two directed 95th percentiles; and the pooled variant."""
    from scipy.ndimage import binary_erosion
    from scipy.spatial.distance import cdist

    ea = np.argwhere(a & ~binary_erosion(a))
    eb = np.argwhere(b & ~binary_erosion(b))
    d = cdist(ea, eb)
    ab, ba = d.min(axis=1), d.min(axis=0)
    return max(np.percentile(ab, 95), np.percentile(ba, 95)), np.percentile(np.r_[ab, ba], 95)


def test_hd95_follows_monai_on_irregular_masks():
    rng = np.random.default_rng(0)
    differs = 0
    for _ in range(8):
        a, b = _irregular_mask(rng), _irregular_mask(rng)
        monai, pooled = _reference_hd95(a, b)
        assert M.hausdorff95(a, b) == pytest.approx(monai, rel=1e-4, abs=1e-3)
        assert M.hausdorff95_pooled(a, b) == pytest.approx(pooled, rel=1e-4, abs=1e-3)
        assert M.hausdorff95(a, b) == M.hausdorff95(b, a)
        differs += M.hausdorff95(a, b) > M.hausdorff95_pooled(a, b) + 1e-6
    assert differs >= 4  # the two conventions really differ on such shapes


def test_hd95_counts_the_images_it_leaves_out():
    from tumorseg_d2.evaluation.clinical import summarize

    rows = [{"tumors": 1, "hd95": 2.0, "hd95_pooled": 1.5}, {"tumors": 1, "hd95": float("nan"),
            "hd95_pooled": float("nan")}, {"tumors": 0, "hd95": float("nan"),
                                            "hd95_pooled": float("nan")}]
    base = {"found": 0, "mislocalized": 0, "detections": 0, "tp_px": 0, "fp_px": 0, "fn_px": 0,
            "outcome": "found", "dice": 0.0, "iou": 0.0}
    s = summarize([{**base, **r} for r in rows])
    assert s["hd95_mean"] == 2.0 and s["hd95_images"] == 1 and s["hd95_missing"] == 1


def test_missed_tumors_split_into_mislocalized_and_undetected():
    recs = [record(i, [(10, 10, 10, 10)], [0]) for i in range(4)]
    preds = [prediction(0, [(10, 10, 20, 20)], [0.9], [0]),   # found: not a miss
             prediction(1, [(16, 10, 26, 20)], [0.9], [0]),   # box IoU 40/160 = 0.25: near
             prediction(2, [(19, 10, 29, 20)], [0.9], [0]),   # box IoU 10/190 < 0.1: not near
             prediction(3, [(16, 10, 26, 20)], [0.3], [0])]   # near, but below the threshold
    rows = clinical.rows_for(preds, recs, 0.5)
    assert [r["mislocalized"] for r in rows] == [0, 1, 0, 0]
    s = clinical.summarize(rows)
    assert (s["found"], s["missed_mislocalized"], s["missed_undetected"]) == (1, 1, 2)
    # Per class, a near box of the other class does not count.
    other = clinical.image_row(prediction(1, [(16, 10, 26, 20)], [0.9], [1]), recs[1], 0.5, cls=0)
    assert other["mislocalized"] == 0 and other["outcome"] == "missed"
    # The truth fed back finds everything, nothing is a miss of either kind.
    truth = clinical.summarize(clinical.rows_for(
        [prediction(i, [(10, 10, 20, 20)], [1.0], [0]) for i in range(4)], recs, 0.5))
    assert (truth["found"], truth["missed_mislocalized"], truth["missed_undetected"]) == (4, 0, 0)
