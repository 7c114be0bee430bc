"""The evaluation pipeline: predict a registered split, then every figure, the plots and the
report (what ``tumorseg evaluate`` runs, and compare, sweep and benchmark with it)."""
import logging
import os
import time

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_json
from tqdm import tqdm

from ..data.leakage import leakage
from ..data.loader import build_test_loader
from ..files import load_json, write_json
from ..modeling.tta import augmentation_text, augmented_model
from ..predictions import (dataset_category_ids, from_coco_results, from_instances,
                           to_coco_results)
from . import clinical
from .bootstrap import ResampledAP, Settings, split_intervals
from .coco import coco_metrics, load_coco_api
from .label_copy import label_copy_predictions
from .patients import patient_rows, summarize_patients
from .plots import write_plots
from .report import write_report

logger = logging.getLogger("tumorseg_d2")


def dataset_for(cfg, split):
    """A split name ('test') in the naming of the config's datasets (a class-agnostic config gets
    the one-class split), or a registered name as is."""
    if split in DatasetCatalog.list():
        return split
    named = (cfg.DATASETS.TEST or cfg.DATASETS.VAL or cfg.DATASETS.TRAIN)[0]
    return named.rsplit("_", 1)[0] + "_" + split


def predict(cfg, model, dataset_name):
    """Run ``model`` (with TEST.AUG's test-time augmentation, if on) over a registered split
    (progress bar); prediction records with RLE masks."""
    loader = build_test_loader(cfg, dataset_name)
    model = augmented_model(cfg, model)
    preds = []
    model.eval()
    with torch.inference_mode():
        for inputs in tqdm(loader, desc=f"inference on {dataset_name}", unit="img"):
            for x, out in zip(inputs, model(inputs)):
                preds.append(from_instances(out["instances"].to("cpu"), x["image_id"]))
    return preds


def reference_datasets(cfg):
    """The registered datasets that trained a config's model or chose its checkpoint."""
    registered = set(DatasetCatalog.list())
    return tuple(n for n in dict.fromkeys(cfg.DATASETS.TRAIN + cfg.DATASETS.VAL) if n in registered)


def evaluate_predictions(preds, dataset_name, output_dir, threshold, threshold_source,
                         references=(), bootstrap=Settings(), augmentation=None):
    """Every figure for one split's predictions; writes the results, metrics.json, report.md and
    the plots into ``output_dir``; returns the metrics.

    ``references``: the datasets that trained the model or chose its checkpoint; the headline
    figures are given again on the split's slices that leak from none of them
    (:mod:`tumorseg_d2.data.leakage`). ``bootstrap``: the settings of their confidence intervals
    (:mod:`tumorseg_d2.evaluation.bootstrap`). ``augmentation``: the test-time augmentation that
    made the predictions, in words (None: none)."""
    start = time.time()
    os.makedirs(output_dir, exist_ok=True)
    meta = MetadataCatalog.get(dataset_name)
    classes = list(meta.thing_classes)
    records = DatasetCatalog.get(dataset_name)

    category_ids = dataset_category_ids(meta)
    results = to_coco_results(preds, category_ids)
    write_json(os.path.join(output_dir, "coco_instances_results.json"), results, indent=None)
    gt_json = os.path.join(output_dir, f"{dataset_name}_coco_format.json")
    convert_to_coco_json(dataset_name, gt_json, allow_cached=False)  # annotation ids from 1
    gt = load_coco_api(gt_json)
    class_ids = [category_ids[k] for k in range(len(classes))]
    coco, curves = coco_metrics(gt, results, classes, class_ids)

    agnostic_rows = clinical.rows_for(preds, records, threshold)
    figures = {"all classes": clinical.summarize(agnostic_rows)}
    for k, name in enumerate(classes if len(classes) > 1 else []):
        figures[f"class {name}"] = clinical.summarize(clinical.rows_for(preds, records, threshold, k))
    confusion = clinical.class_confusion(preds, records, threshold, len(classes))
    per_patient = patient_rows(agnostic_rows)

    metrics = {
        "dataset": dataset_name, "images": len(records), "score_threshold": threshold,
        "threshold_source": threshold_source, "match_iou": clinical.MATCH_IOU,
        "test_time_augmentation": augmentation,
        "coco": coco, "clinical": figures,
        "confusion_matrix": {"labels": ["background"] + classes, "rows_truth_cols_prediction":
                             confusion.tolist()},
        "patients": summarize_patients(per_patient), "per_patient": per_patient,
        **honest_figures(dataset_name, references, bootstrap, gt, results, classes, class_ids,
                         agnostic_rows),
        "per_image": agnostic_rows,
        "evaluation_seconds": None,
    }
    plots = write_plots(output_dir, curves, confusion, ["background"] + classes, agnostic_rows)
    metrics["evaluation_seconds"] = round(time.time() - start, 2)
    write_json(os.path.join(output_dir, "metrics.json"), metrics, indent=2)
    write_report(os.path.join(output_dir, "report.md"), metrics, plots)
    logger.info(f"Evaluation of {len(records)} images took {metrics['evaluation_seconds']} s; "
                f"report: {os.path.join(output_dir, 'report.md')}")
    return metrics


def honest_figures(dataset_name, references, settings, gt, results, classes, class_ids, rows):
    """metrics.json's "bootstrap" (intervals over the whole split) and "leak_free" (the figures
    again on the slices that leak from none of ``references``; None without references)."""
    leaks = leakage(dataset_name, references)
    for r in rows:
        r["unit"] = leaks.units[r["image_id"]]  # what the bootstrap resamples
    ap = {task: ResampledAP(gt, results, task) for task in ("bbox", "segm")}
    out = {"bootstrap": split_intervals(gt, results, rows, settings, leaks.unit_kind, ap),
           "leak_free": None}
    if leaks.leak_free is None:
        return out
    kept = set(leaks.leak_free)
    part = [r for r in rows if r["image_id"] in kept]
    leaking = {r["image_id"] for r in rows} - kept
    out["leak_free"] = {
        "definition": leaks.definition, "references": list(leaks.references),
        "images": len(part), "leaking_images": len(rows) - len(part),
        "coco": coco_metrics(gt, results, classes, class_ids, image_ids=kept)[0] if part else None,
        # The rest of the split: where a model may have seen a near-identical slice.
        "leaking_coco": coco_metrics(gt, results, classes, class_ids, image_ids=leaking)[0]
        if leaking else None,
        "clinical": {"all classes": clinical.summarize(part)},
        "patients": summarize_patients(patient_rows(part)),
        "bootstrap": out["bootstrap"] if len(part) == len(rows) else
        split_intervals(gt, results, part, settings, leaks.unit_kind, ap) if part else None,
    }
    logger.info(f"Leak-free subset of {dataset_name}: {len(part)} of {len(rows)} slices "
                f"({leaks.definition}).")
    return out


def evaluate_results(cfg, results_file, dataset_name, output_dir, threshold=0.5,
                     augmentation=None):
    """Evaluate a COCO results json for a registered split (another tool's, or the detections a
    training's test saved) exactly as a model's predictions (:func:`evaluate_predictions`);
    returns (metrics, prediction records)."""
    if not os.path.isfile(results_file):
        raise FileNotFoundError(f"{results_file} does not exist: give the COCO results json "
                                "(a list of detections) that the other tool wrote for the split.")
    records = DatasetCatalog.get(dataset_name)
    preds = from_coco_results(load_json(results_file), records,
                              dataset_category_ids(MetadataCatalog.get(dataset_name)),
                              results_file)
    logger.info(f"{results_file}: {sum(len(p['scores']) for p in preds)} detections on "
                f"{len(records)} images of {dataset_name}")
    return evaluate_predictions(preds, dataset_name, output_dir, threshold,
                                f"fixed; predictions from {results_file}",
                                reference_datasets(cfg), Settings.of(cfg), augmentation), preds


def evaluate_label_copy(cfg, dataset_name, output_dir, threshold=0.5):
    """Evaluate the label copy (:mod:`tumorseg_d2.evaluation.label_copy`) of a split from the
    config's training and validation datasets exactly as a model's predictions; returns the
    metrics. Its leaking slices' figures (report: "AP50 by class on each part") are what the
    labels of near-identical slices score against each other."""
    references = reference_datasets(cfg)
    preds, sources = label_copy_predictions(dataset_name, references)
    logger.info(f"Label copy of {dataset_name}: {len(sources)} of {len(preds)} slices copy the "
                f"labels of their most similar slice in {', '.join(references)}.")
    metrics = evaluate_predictions(preds, dataset_name, output_dir, threshold,
                                   f"fixed; labels copied from {', '.join(references)}",
                                   references, Settings.of(cfg))
    write_json(os.path.join(output_dir, "label_copy_sources.json"),
               {str(k): v for k, v in sources.items()})
    return metrics


def evaluate_split(cfg, model, dataset_name, output_dir, threshold=0.5, threshold_from=None):
    """Evaluate ``model`` on a registered split at ``threshold``, or at the threshold that
    maximises lesion F1 on the split ``threshold_from``; returns the metrics (also metrics.json)."""
    source = "fixed"
    if threshold_from:
        if threshold_from == dataset_name:
            raise ValueError(f"--threshold-from {threshold_from} is the evaluated split; choose the "
                             "threshold on another split (e.g. valid) so the figures stay honest.")
        val_preds = predict(cfg, model, threshold_from)
        threshold, f1s = clinical.best_threshold(val_preds, DatasetCatalog.get(threshold_from))
        source = f"chosen on {threshold_from}: best lesion F1 {f1s[threshold]:.3f}"
        logger.info(f"Score threshold {threshold} ({source})")
    preds = predict(cfg, model, dataset_name)
    return evaluate_predictions(preds, dataset_name, output_dir, threshold, source,
                                reference_datasets(cfg), Settings.of(cfg),
                                augmentation_text(cfg, model))
