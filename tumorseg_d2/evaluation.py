"""COCO evaluation (pycocotools) with per-class tables and a correct score for 'no detections'."""
import math
import os

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm
from tabulate import tabulate

from . import clinical
from .clinical import truth_instances
from .files import write_json

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# COCOeval area ranges, as indexed in coco_eval.eval["precision"][..., area, maxdet].
AREA_RANGES = {"all": (0, 1e10), "small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, 1e10)}


class TumorCOCOEvaluator(COCOEvaluator):
    """Detectron2's COCOEvaluator with three changes.

    - Always the official pycocotools implementation (the fast C++ one is not in the pure-Python
      Detectron2 build).
    - Ground truth is converted from the registered dataset on every run, not read from a stale
      cached conversion (v0.6 reuses ``<name>_coco_format.json`` of any age). The conversion also
      renumbers annotation ids from 1: pycocotools treats a matched annotation id of 0 as
      "unmatched", so the export's annotation id 0 would cost a true positive.
    - No detections at all scores 0 (not NaN) for every figure whose ground truth exists.

    Per-class AP, AP50, AP75, APs, APm and APl are added as ``"<metric>-<class>"``.
    """

    def __init__(self, dataset_name, output_dir, tasks=("bbox", "segm"), distributed=True):
        metadata = MetadataCatalog.get(dataset_name)
        converted = not hasattr(metadata, "json_file")
        if converted:
            stale = os.path.join(output_dir, f"{dataset_name}_coco_format.json")
            if os.path.exists(stale):
                os.remove(stale)
        super().__init__(dataset_name, tasks, distributed, output_dir, use_fast_impl=False)
        if converted:
            # v0.6 records its conversion as the dataset's json_file, which every later evaluator
            # of the dataset then reads, from this output folder (perhaps a temporary one,
            # deleted since) and stale if the registration changes. The conversion is ours.
            delattr(metadata, "json_file")

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        if iou_type not in ("bbox", "segm"):
            return super()._derive_coco_results(coco_eval, iou_type, class_names)
        if coco_eval is None:
            return self._no_detection_results(class_names)
        results = super()._derive_coco_results(coco_eval, iou_type, class_names)
        for k, name in enumerate(class_names or []):
            for metric, value in per_class_metrics(coco_eval.eval["precision"], k).items():
                results[f"{metric}-{name}"] = value
        self._logger.info(f"Per-class {iou_type} results:\n" + format_per_class(results, class_names))
        return results

    def _no_detection_results(self, class_names):
        self._logger.warning("No detections: every AP with ground truth is 0.")
        results = no_detection_scores(self._coco_api)
        reverse = {v: k for k, v in self._metadata.thing_dataset_id_to_contiguous_id.items()}
        for k, name in enumerate(class_names or []):
            scores = no_detection_scores(self._coco_api, cat_ids=[reverse[k]])
            results.update({f"{m}-{name}": v for m, v in scores.items()})
        return results


OVERLAP_FIGURES = ("Dice", "IoU", "sensitivity")


class OverlapEvaluator(DatasetEvaluator):
    """Dice and IoU (mean per image with a tumor) and lesion sensitivity at a score threshold, in %
    (definitions: tumorseg_d2/clinical.py), as ``results["overlap"]``. Trainer validation adds
    it to COCO AP, so that checkpoints and early stopping can follow ``overlap/Dice``."""

    def __init__(self, dataset_name, threshold=0.5):
        self._dataset_name, self._threshold = dataset_name, threshold
        self._preds = []

    def reset(self):
        self._preds = []

    def process(self, inputs, outputs):
        for x, out in zip(inputs, outputs):
            self._preds.append(clinical.to_prediction(x["image_id"], out["instances"].to("cpu")))

    def evaluate(self):
        preds = [p for part in comm.gather(self._preds) for p in part]
        if not comm.is_main_process():
            return {}
        rows = clinical.rows_for(preds, DatasetCatalog.get(self._dataset_name), self._threshold)
        summary = clinical.summarize(rows)
        figures = (summary["dice_mean_per_image"], summary["iou_mean_per_image"],
                   summary["sensitivity"])
        return {"overlap": {k: 100 * v for k, v in zip(OVERLAP_FIGURES, figures)}}


def no_detection_scores(coco_gt, metrics=METRICS, cat_ids=None):
    """Every figure when there are no detections at all: 0 where the figure has ground truth
    (nothing is recalled), NaN where it has none (e.g. APs without small tumors)."""
    anns = coco_gt.loadAnns(coco_gt.getAnnIds(catIds=cat_ids or [], iscrowd=False))
    areas = np.array([a["area"] for a in anns])
    out = {}
    for metric in metrics:
        size = {"s": "small", "m": "medium", "l": "large"}.get(metric[2:], "all")
        lo, hi = AREA_RANGES[size]
        out[metric] = 0.0 if np.any((areas >= lo) & (areas < hi)) else float("nan")
    return out


def per_class_metrics(precision, k):
    """AP figures of class index ``k`` from COCOeval's precision array [T, R, K, A, M] (in %).

    AP averages precision over IoU thresholds 0.50:0.95 and 101 recall points (all areas, 100
    detections); AP50 / AP75 at one threshold; APs / APm / APl over small / medium / large areas.
    Entries of -1 (no ground truth) are excluded; NaN if nothing remains.
    """

    def mean(p):
        p = p[p > -1]
        return float(np.mean(p) * 100) if p.size else float("nan")

    return {
        "AP": mean(precision[:, :, k, 0, -1]),
        "AP50": mean(precision[0, :, k, 0, -1]),
        "AP75": mean(precision[5, :, k, 0, -1]),
        "APs": mean(precision[:, :, k, 1, -1]),
        "APm": mean(precision[:, :, k, 2, -1]),
        "APl": mean(precision[:, :, k, 3, -1]),
    }


def format_per_class(results, class_names):
    rows = [[name] + [results.get(f"{m}-{name}", float("nan")) for m in METRICS]
            for name in class_names or []]
    return tabulate(rows, headers=["class"] + list(METRICS), floatfmt=".2f", tablefmt="pipe")


def format_results(results):
    """Markdown table of {task: {metric: value}} with one row per task and class."""
    rows, overlap = [], results.get("overlap")
    for task, res in results.items():
        if task == "overlap":
            continue
        rows.append([task, "all"] + [res.get(m, float("nan")) for m in METRICS])
        classes = sorted({k.split("-", 1)[1] for k in res if k.startswith("AP50-")})
        for name in classes:
            rows.append([task, name] + [res.get(f"{m}-{name}", float("nan")) for m in METRICS])
    table = tabulate(rows, headers=["task", "class"] + list(METRICS), floatfmt=".2f",
                     tablefmt="pipe")
    if any(isinstance(v, float) and math.isnan(v) for row in rows for v in row):
        table += ("\nnan: no ground truth of that class or size in the split (APs: area < 32^2 px, "
                  "APm: 32^2-96^2, APl: > 96^2), so the figure is undefined.")
    if overlap:
        table += "\nAt score >= 0.5: " + ", ".join(f"{k} {v:.2f}%" for k, v in overlap.items()) \
            + " (Dice and IoU: mean per image with a tumor; sensitivity: tumors found)."
    return table


def save_results(results, path):
    """Write {dataset or task: {metric: value}} as JSON (NaN as null: strict JSON readers)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json(path, results, indent=2)


class GroundTruthModel(torch.nn.Module):
    """A stand-in model whose predictions are a dataset's ground truth (score 1).

    Fed through the normal evaluation path (loader, inference_on_dataset, evaluator), it must score
    AP 100 on every split: anything less is a bug in loading, id mapping or evaluation.
    """

    def __init__(self, dataset_name):
        super().__init__()
        self._records = {r["image_id"]: r for r in DatasetCatalog.get(dataset_name)}

    def forward(self, batched_inputs):
        return [{"instances": self._instances(self._records[x["image_id"]])} for x in batched_inputs]

    @staticmethod
    def _instances(record):
        h, w = record["height"], record["width"]
        boxes, classes, masks = truth_instances(record)
        inst = Instances((h, w))
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.scores = torch.ones(len(classes))
        inst.pred_classes = torch.as_tensor(classes, dtype=torch.int64)
        inst.pred_masks = torch.from_numpy(np.stack(masks) if masks else np.zeros((0, h, w), bool))
        return inst
