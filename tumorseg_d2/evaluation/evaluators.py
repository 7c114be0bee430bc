"""The trainer's evaluators (Detectron2's ``reset/process/evaluate``): COCO AP, and Dice, IoU and
sensitivity at a score threshold."""
import itertools
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator
from detectron2.utils import comm

from ..files import write_json
from ..predictions import dataset_category_ids, from_instances
from . import clinical
from .coco import coco_metrics
from .patients import patient_rows, summarize_patients
from .report import format_per_class

OVERLAP_FIGURES = ("Dice", "IoU", "sensitivity", "Dice_pooled", "specificity", "patient_Dice")


class TumorCOCOEvaluator(COCOEvaluator):
    """Detectron2's COCOEvaluator with three changes.

    - Scored by :func:`~tumorseg_d2.evaluation.coco.coco_metrics`, the report's own COCO path (the
      official pycocotools; the fast C++ one is not in the pure-Python Detectron2 build).
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
            # One process converts and the others wait: each removing a "stale" file that
            # another process had just written lost a rank its ground truth.
            metadata.json_file = os.path.join(output_dir, f"{dataset_name}_coco_format.json")
        try:
            if converted:
                if comm.is_main_process():
                    convert_to_coco_json(dataset_name, metadata.json_file, allow_cached=False)
                comm.synchronize()
            super().__init__(dataset_name, tasks, distributed, output_dir, use_fast_impl=False)
        finally:
            if converted:
                # v0.6 keeps its conversion as the dataset's json_file, which every later
                # evaluator of the dataset would then read, from this output folder (perhaps a
                # temporary one, deleted since) and stale if the registration changes.
                delattr(metadata, "json_file")

    def _eval_predictions(self, predictions, img_ids=None):
        category_ids = dataset_category_ids(self._metadata)
        results = list(itertools.chain(*[x["instances"] for x in predictions]))
        for r in results:  # Detectron2's instances_to_coco_json gives contiguous ids
            r["category_id"] = category_ids[r["category_id"]]
        if self._output_dir:
            write_json(os.path.join(self._output_dir, "coco_instances_results.json"), results,
                       indent=None)
        if not results:
            self._logger.warning("No detections: every AP with ground truth is 0.")
        classes = list(self._metadata.thing_classes)
        scores, _ = coco_metrics(self._coco_api, results, classes,
                                 [category_ids[k] for k in range(len(classes))],
                                 tasks=sorted(self._tasks or ("bbox",)), agnostic=False,
                                 recall=False)
        for task, res in scores.items():
            self._logger.info(f"{task} AP per class:\n" + format_per_class(res, classes))
        self._results.update(scores)


class OverlapEvaluator(DatasetEvaluator):
    """Dice and IoU (mean per image with a tumor), lesion sensitivity, pooled Dice, slice
    specificity and the mean per-patient volumetric Dice (NaN without patient ids) at a score
    threshold, in % (definitions: tumorseg_d2/evaluation/clinical.py and patients.py), as
    ``results["overlap"]``. Trainer
    validation adds it to COCO AP, so that checkpoints and early stopping can follow
    ``overlap/Dice``."""

    def __init__(self, dataset_name, threshold=0.5):
        self._dataset_name, self._threshold = dataset_name, threshold
        self._preds = []

    def reset(self):
        self._preds = []

    def process(self, inputs, outputs):
        for x, out in zip(inputs, outputs):
            self._preds.append(from_instances(out["instances"].to("cpu"), x["image_id"]))

    def evaluate(self):
        preds = [p for part in comm.gather(self._preds) for p in part]
        if not comm.is_main_process():
            return {}
        rows = clinical.rows_for(preds, DatasetCatalog.get(self._dataset_name), self._threshold)
        summary = clinical.summarize(rows)
        patients = summarize_patients(patient_rows(rows))
        figures = (summary["dice_mean_per_image"], summary["iou_mean_per_image"],
                   summary["sensitivity"], summary["dice_pooled"], summary["slice_specificity"],
                   patients.get("volumetric_dice_mean", float("nan")))
        return {"overlap": {k: 100 * v for k, v in zip(OVERLAP_FIGURES, figures)}}
