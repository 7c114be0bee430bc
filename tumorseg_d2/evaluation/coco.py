"""COCO AP with pycocotools: the one place that runs COCOeval, for the trainer's evaluator and
for the report alike; per-class figures, and a correct score for "no detections"."""
import contextlib
import io
import math

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
RECALLS = ("AR1", "AR10", "AR100")
COCO_STATS = METRICS + RECALLS  # the order of COCOeval.stats
# COCOeval area ranges, as indexed in coco_eval.eval["precision"][..., area, maxdet].
AREA_RANGES = {"all": (0, 1e10), "small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, 1e10)}


def load_coco_api(gt):
    """A pycocotools COCO of ``gt`` (a COCO object or a COCO json path), without its printing."""
    if isinstance(gt, COCO):
        return gt
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(gt)


def run_cocoeval(gt, results, task, category_ids=None, agnostic=False, image_ids=None):
    """COCOeval of ``results`` for ``task`` ("bbox" or "segm"), evaluated, accumulated and
    summarised (on ``image_ids`` only, if given). As Detectron2 does, segm results lose their box:
    pycocotools would otherwise use the box area (not the mask area) for the small/medium/large
    ranges of mask AP."""
    dets = [{k: v for k, v in r.items() if not (task == "segm" and k == "bbox")} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(dets), task)
        if category_ids is not None:
            ev.params.catIds = list(category_ids)  # precision[..., k, ...] is class k
        if image_ids is not None:
            ev.params.imgIds = sorted(image_ids)
        ev.params.useCats = int(not agnostic)
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return ev


def coco_metrics(gt, results, class_names, category_ids=None, tasks=("bbox", "segm"),
                 agnostic=True, recall=True, image_ids=None):
    """COCO AP (and with ``recall`` AR) per task: overall, per class ("AP-<class>", ...) and with
    ``agnostic`` class-agnostic ("agnostic/AP", ...), in %; plus the PR curves for plots. With
    ``image_ids`` (a non-empty collection), of those images only.

    ``gt``: COCO object or json path; ``results``: COCO results with the dataset's category ids;
    ``category_ids``: the dataset category id of each class (default: gt's ids, sorted). No
    detections at all score 0 where the figure has ground truth and NaN where it has none.
    """
    gt = load_coco_api(gt)
    category_ids = list(category_ids) if category_ids is not None else sorted(gt.getCatIds())
    stats_names = COCO_STATS if recall else METRICS
    if image_ids is not None:
        image_ids = sorted(image_ids)
        kept = set(image_ids)
        results = [r for r in results if r["image_id"] in kept]
    out, curves = {}, {}
    for task in tasks:
        res = {}
        for is_agnostic in (False, True) if agnostic else (False,):
            ev = run_cocoeval(gt, results, task, category_ids, is_agnostic, image_ids) \
                if results else None
            prefix = "agnostic/" if is_agnostic else ""
            res.update({prefix + k: v for k, v in _stats(ev, gt, stats_names,
                                                          image_ids).items()})
            if is_agnostic:
                curves[(task, "tumor (any class)")] = ev.eval["precision"][:, :, 0, 0, -1] \
                    if ev else None
                continue
            for k, name in enumerate(class_names):
                if ev is None:
                    figures = no_detection_scores(gt, METRICS + ("AR100",) if recall else METRICS,
                                                  [category_ids[k]], image_ids)
                    res.update({f"{m}-{name}": v for m, v in figures.items()})
                    curves[(task, name)] = None
                    continue
                res.update({f"{m}-{name}": v
                            for m, v in per_class_metrics(ev.eval["precision"], k).items()})
                if recall:
                    r = ev.eval["recall"][:, k, 0, -1]
                    res[f"AR100-{name}"] = float(np.mean(r[r > -1]) * 100) if (r > -1).any() \
                        else math.nan
                curves[(task, name)] = ev.eval["precision"][:, :, k, 0, -1]
        out[task] = res
    return out, curves


def _stats(ev, gt, names, image_ids=None):
    if ev is None:
        return no_detection_scores(gt, names, image_ids=image_ids)
    return {m: float(s * 100) if s >= 0 else math.nan for m, s in zip(COCO_STATS, ev.stats)
            if m in names}


def no_detection_scores(coco_gt, metrics=METRICS, cat_ids=None, image_ids=None):
    """Every figure when there are no detections at all: 0 where the figure has ground truth
    (nothing is recalled), NaN where it has none (e.g. APs without small tumors)."""
    anns = coco_gt.loadAnns(coco_gt.getAnnIds(catIds=cat_ids or [], iscrowd=False))
    if image_ids is not None:
        kept = set(image_ids)
        anns = [a for a in anns if a["image_id"] in kept]
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
