#!/usr/bin/env python
"""Time the evaluation of a split's predictions (not the inference); writes JSON.

Predictions are the ground truth with boxes jittered by a few pixels and one extra low-score false
alarm per image, so every code path (matching, masks, HD95, COCOeval, plots, report) does real work.

    python tools/benchmark_eval.py [--split test] [--repeats 3] [--output output/benchmarks/eval.json]
"""
import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np
from detectron2.data import DatasetCatalog

from tumorseg_d2.clinical import to_prediction
from tumorseg_d2.config import get_tumorseg_cfg, merge_config
from tumorseg_d2.data import register_tumorseg
from tumorseg_d2.evaluate import dataset_for
from tumorseg_d2.evaluation import GroundTruthModel
from tumorseg_d2.report import evaluate_predictions


def jittered_predictions(name, seed=0):
    rng = np.random.default_rng(seed)
    preds = []
    for record in DatasetCatalog.get(name):
        inst = GroundTruthModel._instances(record)
        boxes = inst.pred_boxes.tensor
        boxes += rng.uniform(-4, 4, boxes.shape).astype(np.float32)
        pred = to_prediction(record["image_id"], inst)
        pred["scores"] = rng.uniform(0.6, 1.0, len(pred["scores"]))
        fa = GroundTruthModel._instances({**record, "annotations": [
            {"bbox": [20, 20, 40, 40], "bbox_mode": 1, "category_id": 0,
             "segmentation": [[20, 20, 60, 20, 60, 60, 20, 60]]}]})
        fa_pred = to_prediction(record["image_id"], fa)
        for k in ("boxes", "rles"):
            pred[k] = list(pred[k]) + list(fa_pred[k])
        pred["boxes"] = np.array(pred["boxes"])
        pred["scores"] = np.append(pred["scores"], 0.3)
        pred["classes"] = np.append(pred["classes"], 0)
        preds.append(pred)
    return preds


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config-file", default="configs/mask_rcnn_R_18_FPN_scratch_cpu_60min.yaml",
                   help="the split's classes follow its datasets (one class for a class-agnostic "
                   "config such as configs/baselines/*)")
    p.add_argument("--split", default="test")
    p.add_argument("--root", help="dataset root (default: $DETECTRON2_DATASETS/tumorseg)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", default="output/benchmarks/eval.json")
    args = p.parse_args()
    cfg = merge_config(get_tumorseg_cfg(), args.config_file, [])
    register_tumorseg(args.root)
    name = dataset_for(cfg, args.split)
    preds = jittered_predictions(name)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        evaluate_predictions(preds, name, tmp, 0.5, "fixed")  # warm-up (imports, caches)
        for _ in range(args.repeats):
            start = time.perf_counter()
            evaluate_predictions(preds, name, tmp, 0.5, "fixed")
            times.append(time.perf_counter() - start)
    result = {"benchmark": "evaluation of predictions (no inference)", "dataset": name,
              "images": len(preds), "repeats": args.repeats, "seconds_median": statistics.median(times),
              "seconds_all": times, "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs"}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
