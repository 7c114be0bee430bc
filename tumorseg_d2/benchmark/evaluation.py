"""Time the evaluation of a split's predictions alone (no inference).

Predictions are the ground truth with boxes jittered by a few pixels and one extra low-score false
alarm per image, so every code path (matching, masks, HD95, COCOeval, plots, report) does real work.
"""
import os
import platform
import statistics
import tempfile
import time

import numpy as np
from detectron2.data import DatasetCatalog

from ..evaluation.ground_truth import truth_record
from ..evaluation.pipeline import evaluate_predictions

FALSE_ALARM = {"bbox": [20, 20, 40, 40], "bbox_mode": 1, "category_id": 0,
               "segmentation": [[20, 20, 60, 20, 60, 60, 20, 60]]}


def jittered_predictions(name, seed=0):
    """Prediction records of a split: its truth, boxes moved by up to 4 px, scores 0.6-1, and a
    false alarm of score 0.3 per image."""
    rng = np.random.default_rng(seed)
    preds = []
    for record in DatasetCatalog.get(name):
        pred = truth_record(record)
        pred["boxes"] = pred["boxes"] + rng.uniform(-4, 4, pred["boxes"].shape)
        pred["scores"] = rng.uniform(0.6, 1.0, len(pred["scores"]))
        alarm = truth_record({**record, "annotations": [FALSE_ALARM]})
        pred["boxes"] = np.concatenate([pred["boxes"], alarm["boxes"]])
        pred["masks"] = np.concatenate([pred["masks"], alarm["masks"]])
        pred["scores"] = np.append(pred["scores"], 0.3)
        pred["classes"] = np.append(pred["classes"], 0)
        preds.append(pred)
    return preds


def time_evaluation(name, repeats=3):
    """Seconds of :func:`evaluate_predictions` on the split's jittered predictions, after a warm-up."""
    preds = jittered_predictions(name)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        evaluate_predictions(preds, name, tmp, 0.5, "fixed")  # warm-up (imports, caches)
        for _ in range(repeats):
            start = time.perf_counter()
            evaluate_predictions(preds, name, tmp, 0.5, "fixed")
            times.append(time.perf_counter() - start)
    return {"benchmark": "evaluation of predictions (no inference)", "dataset": name,
            "images": len(preds), "repeats": repeats, "seconds_median": statistics.median(times),
            "seconds_all": times,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"}
