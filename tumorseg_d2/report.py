"""Batch evaluation of a split: inference, COCO AP, clinical figures, plots and a Markdown report."""
import contextlib
import io
import json
import logging
import math
import os
import time

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_json
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from . import clinical
from .clinical import to_prediction
from .data.loader import build_test_loader
from .evaluation import METRICS, no_detection_scores, per_class_metrics, save_results
from .plots import write_plots

logger = logging.getLogger(__name__)
COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


# ---------------------------------------------------------------- inference
def predict(cfg, model, dataset_name):
    """Run ``model`` over a registered split (progress bar); per-image predictions with RLE masks."""
    loader = build_test_loader(cfg, dataset_name)
    preds = []
    model.eval()
    with torch.inference_mode():
        for inputs in tqdm(loader, desc=f"inference on {dataset_name}", unit="img"):
            for x, out in zip(inputs, model(inputs)):
                preds.append(to_prediction(x["image_id"], out["instances"].to("cpu")))
    return preds


def to_coco_results(preds, dataset_name):
    """Standard COCO results (XYWH boxes, RLE masks) with the dataset's original category ids."""
    reverse = {v: k for k, v in
               MetadataCatalog.get(dataset_name).thing_dataset_id_to_contiguous_id.items()}
    results = []
    for p in preds:
        for box, score, cls, rle in zip(p["boxes"], p["scores"], p["classes"], p["rles"]):
            x0, y0, x1, y1 = (float(v) for v in box)
            rle = dict(rle, counts=rle["counts"].decode() if isinstance(rle["counts"], bytes)
                       else rle["counts"])
            results.append({"image_id": p["image_id"], "category_id": reverse[int(cls)],
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score),
                            "segmentation": rle})
    return results


# ---------------------------------------------------------------- COCO AP
def coco_metrics(gt_json, results, class_names):
    """COCO AP/AR per task, overall, per class and class-agnostic; plus PR curves for plots."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
    out, curves = {}, {}
    for task in ("bbox", "segm"):
        res = {}
        for agnostic in (False, True):
            if not results:
                stats, precision, recall = None, None, None
            else:
                # As Detectron2 does: without the box, pycocotools uses the mask area (not the
                # box area) for the small/medium/large ranges of mask AP.
                dets = [{k: v for k, v in r.items() if not (task == "segm" and k == "bbox")}
                        for r in results]
                with contextlib.redirect_stdout(io.StringIO()):
                    dt = gt.loadRes(dets)
                    ev = COCOeval(gt, dt, task)
                    ev.params.useCats = int(not agnostic)
                    ev.evaluate(), ev.accumulate(), ev.summarize()
                stats, precision, recall = ev.stats, ev.eval["precision"], ev.eval["recall"]
            prefix = "agnostic/" if agnostic else ""
            res.update({prefix + k: v for k, v in _stats(stats, gt).items()})
            if agnostic:
                curves[(task, "tumor (any class)")] = precision[:, :, 0, 0, -1] if results else None
                continue
            for k, name in enumerate(class_names):
                if precision is None:
                    cat = sorted(gt.getCatIds())[k]
                    res.update({f"{m}-{name}": v for m, v in
                                no_detection_scores(gt, METRICS + ("AR100",), [cat]).items()})
                    curves[(task, name)] = None
                    continue
                res.update({f"{m}-{name}": v for m, v in per_class_metrics(precision, k).items()})
                r = recall[:, k, 0, -1]
                res[f"AR100-{name}"] = float(np.mean(r[r > -1]) * 100) if (r > -1).any() else math.nan
                curves[(task, name)] = precision[:, :, k, 0, -1]
        out[task] = res
    return out, curves


def _stats(stats, gt):
    if stats is None:
        return no_detection_scores(gt, COCO_STATS)
    return {m: float(s * 100) if s >= 0 else math.nan for m, s in zip(COCO_STATS, stats)}


# ---------------------------------------------------------------- the whole evaluation
def evaluate_predictions(preds, dataset_name, output_dir, threshold, threshold_source):
    """Every figure for one split's predictions; writes the three outputs and the plots."""
    start = time.time()
    os.makedirs(output_dir, exist_ok=True)
    meta = MetadataCatalog.get(dataset_name)
    classes = list(meta.thing_classes)
    records = DatasetCatalog.get(dataset_name)

    results = to_coco_results(preds, dataset_name)
    with open(os.path.join(output_dir, "coco_instances_results.json"), "w") as f:
        json.dump(results, f)
    gt_json = os.path.join(output_dir, f"{dataset_name}_coco_format.json")
    convert_to_coco_json(dataset_name, gt_json, allow_cached=False)  # annotation ids from 1
    coco, curves = coco_metrics(gt_json, results, classes)

    agnostic_rows = clinical.rows_for(preds, records, threshold)
    figures = {"all classes": clinical.summarize(agnostic_rows)}
    for k, name in enumerate(classes if len(classes) > 1 else []):
        figures[f"class {name}"] = clinical.summarize(clinical.rows_for(preds, records, threshold, k))
    confusion = clinical.class_confusion(preds, records, threshold, len(classes))

    metrics = {
        "dataset": dataset_name, "images": len(records), "score_threshold": threshold,
        "threshold_source": threshold_source, "match_iou": clinical.MATCH_IOU,
        "coco": coco, "clinical": figures,
        "confusion_matrix": {"labels": ["background"] + classes, "rows_truth_cols_prediction":
                             confusion.tolist()},
        "per_image": agnostic_rows,
        "evaluation_seconds": None,
    }
    plots = write_plots(output_dir, curves, confusion, ["background"] + classes, agnostic_rows)
    metrics["evaluation_seconds"] = round(time.time() - start, 2)
    save_results(metrics, os.path.join(output_dir, "metrics.json"))
    write_report(os.path.join(output_dir, "report.md"), metrics, plots)
    logger.info(f"Evaluation of {len(records)} images took {metrics['evaluation_seconds']} s; "
                f"report: {os.path.join(output_dir, 'report.md')}")
    return metrics


# ---------------------------------------------------------------- Markdown
def fmt_value(v, pct=False):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.2f}" if pct else f"{v:.3f}"
    return str(v)


def markdown_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(path, metrics, plots, worst=10):
    """report.md: definitions, COCO table, clinical tables, plots, worst images."""
    classes = metrics["confusion_matrix"]["labels"][1:]
    lines = [
        f"# Evaluation on `{metrics['dataset']}` ({metrics['images']} images)",
        "",
        f"Score threshold **{metrics['score_threshold']}** ({metrics['threshold_source']}); a "
        f"tumor counts as found when a detection overlaps it with box IoU >= {metrics['match_iou']}.",
        "",
        "## COCO AP (%)",
        "",
        "AP is averaged over IoU 0.50:0.95; APs/APm/APl over tumors smaller than 32x32 px, between "
        "32x32 and 96x96, larger than 96x96; AR@k is the recall with at most k detections per "
        "image. No score threshold applies here. *n/a*: the split has no tumor of that class or "
        "size, so the figure is undefined (not zero).",
        "",
    ]
    coco_headers = ["task", "class", "AP", "AP50", "AP75", "APs", "APm", "APl"]
    rows = []
    for task, res in metrics["coco"].items():
        rows.append([task, "all"] + [fmt_value(res.get(m), True) for m in COCO_STATS[:6]]
                    + [fmt_value(res.get(m), True) for m in ("AR1", "AR10", "AR100")])
        for c in classes:
            rows.append([task, c] + [fmt_value(res.get(f"{m}-{c}"), True) for m in COCO_STATS[:6]]
                        + ["", "", fmt_value(res.get(f"AR100-{c}"), True)])
        rows.append([task, "any class"] + [fmt_value(res.get(f"agnostic/{m}"), True)
                                           for m in COCO_STATS])
    lines += [markdown_table(coco_headers + ["AR@1", "AR@10", "AR@100"], rows), ""]

    lines += ["## Detection and overlap at the threshold", "",
              "Lesion level: sensitivity = found / tumors, precision = found / detections. Slice "
              "level: a slice with tumor is a true positive when all its tumors are found; a slice "
              "without tumor with any detection is a false positive. Dice and IoU *per image* are "
              "means over the images that have a tumor (of that class); *pooled* "
              "counts every pixel of the split once, as do pixel precision, recall and F1. HD95 "
              "(pixels) follows MONAI: per image the larger of the two directed 95th percentiles "
              "of the boundary distances; *pooled* is medpy's (both directions pooled, a few "
              "percent lower). Both are means over the images where both masks are non-empty: "
              "an image whose tumor got no predicted pixel is left out (counted in *images "
              "without HD95*), so more misses can lower the mean.", ""]
    keys = [("tumors", "tumors"), ("found", "found"), ("missed", "missed"),
            ("false alarms", "false_alarms"), ("sensitivity", "sensitivity"),
            ("precision", "precision"), ("F1", "f1"), ("slice sensitivity", "slice_sensitivity"),
            ("slice specificity", "slice_specificity"), ("Dice per image", "dice_mean_per_image"),
            ("Dice pooled", "dice_pooled"), ("IoU per image", "iou_mean_per_image"),
            ("IoU pooled", "iou_pooled"), ("pixel precision", "pixel_precision"),
            ("pixel recall", "pixel_recall"), ("pixel F1", "pixel_f1"),
            ("HD95 (px, MONAI)", "hd95_mean"), ("HD95 pooled (px, medpy)", "hd95_pooled_mean"),
            ("images with HD95", "hd95_images"),
            ("images without HD95 (tumor, no predicted pixel)", "hd95_missing")]
    groups = list(metrics["clinical"])
    lines += [markdown_table(["figure"] + groups,
                     [[label] + [fmt_value(metrics["clinical"][g][k]) for g in groups]
                      for label, k in keys]), ""]
    conf = metrics["clinical"]["all classes"]["slice_confusion"]
    lines += ["Slices (all classes): " + ", ".join(f"{k} {v}" for k, v in conf.items()) + ".", ""]
    if conf["TN"] + conf["FP"] == 0:
        lines += ["Slice specificity is n/a: every slice of this split has a tumor, so there is no "
                  "slice on which a false alarm could be counted against a true negative.", ""]

    lines += ["## Plots", ""] + [f"**{caption}**\n\n![{caption}]({name})\n"
                                 for caption, name in plots.items()]
    ordered = sorted(metrics["per_image"], key=lambda r: (r["dice"], str(r["file_name"])))[:worst]
    lines += [f"## The {len(ordered)} images with the lowest Dice", "",
              markdown_table(["file", "tumors", "detections", "outcome", "Dice", "IoU"],
                     [[os.path.basename(r["file_name"]), str(r["tumors"]), str(r["detections"]),
                       r["outcome"], fmt_value(r["dice"]), fmt_value(r["iou"])] for r in ordered]), ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))
