"""Bootstrap confidence intervals of a split's headline figures, and paired differences of two
models on one split.

Definitions (also written into the report):
- Units: the split's slices are resampled in groups, so that correlated slices travel together:
  patients where the records carry patient ids, else pseudo-patients (chains of near-duplicate
  slices, :mod:`tumorseg_d2.data.leakage`). A resample draws as many units as the split has, with
  replacement; a unit drawn twice counts twice.
- Interval: the bias-corrected and accelerated (BCa) bootstrap of ``scipy.stats.bootstrap`` over
  ``resamples`` resamples drawn with a fixed seed. BCa rather than plain percentiles because AP
  can be biased upward on resamples (a repeated slice repeats its detections, and AP's precision
  envelope rises with the noise), which plain percentiles would carry into the interval. Where
  BCa has no answer (every resample gives the same value, as for a perfect model) or a figure is
  undefined in some resamples (e.g. specificity when no tumor-free slice was drawn), the interval
  is the (1 - level)/2 and (1 + level)/2 quantiles of the resamples where it is defined, and says
  so ("method": "percentile").
- Paired difference of models A and B on one split: each resample draws the same units for both,
  and the interval is that of A - B. An interval that excludes 0 says the difference is larger than
  what the choice of test slices alone would produce.
- Figures (:data:`FIGURES`): COCO bbox and segm AP and AP50 of any tumor (class-agnostic, in %;
  pycocotools' per-image matches re-accumulated for each resample exactly as ``COCOeval``
  accumulates them); Dice per tumor slice, lesion sensitivity and slice specificity
  (:mod:`clinical`); with patient ids, the mean volumetric Dice per patient (:mod:`patients`).
"""
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import DegenerateDataWarning, bootstrap

from . import clinical
from .coco import load_coco_api, run_cocoeval
from .patients import patient_rows

FIGURES = ("bbox AP", "bbox AP50", "segm AP", "segm AP50", "Dice", "lesion sensitivity",
           "slice specificity", "patient Dice")
PERCENT = {"bbox AP", "bbox AP50", "segm AP", "segm AP50"}


@dataclass
class Settings:
    resamples: int = 1000
    seed: int = 0
    level: float = 0.95
    method: str = "BCa"

    @classmethod
    def of(cls, cfg):
        """The config's TEST.BOOTSTRAP."""
        b = cfg.TEST.BOOTSTRAP
        return cls(int(b.RESAMPLES), int(b.SEED), float(b.LEVEL))


class ResampledAP:
    """COCO AP and AP50 (all areas, at most 100 detections per image, class-agnostic) of any
    multiset of a split's images, from one ``COCOeval.evaluate`` of every image."""

    def __init__(self, gt, results, task):
        gt = load_coco_api(gt)
        self.image_index = {image_id: i for i, image_id in enumerate(sorted(gt.getImgIds()))}
        ignored = np.array([bool(a.get("iscrowd", 0)) for a in gt.dataset["annotations"]])
        truths = np.bincount([self.image_index[a["image_id"]] for a, crowd in
                              zip(gt.dataset["annotations"], ignored) if not crowd],
                             minlength=len(self.image_index))
        empty = (np.zeros(0), np.zeros((10, 0), bool), np.zeros((10, 0), bool), 0)
        self.images = [empty[:3] + (int(n),) for n in truths]
        self.rec_thresholds = np.linspace(0.0, 1.00, 101)
        if not results:
            return
        ev = run_cocoeval(gt, results, task, agnostic=True)
        self.rec_thresholds = ev.params.recThrs
        max_det = ev.params.maxDets[-1]
        # evalImgs is ordered [category][area range][image]; agnostic: one category, "all" first.
        for i, e in enumerate(ev.evalImgs[:len(ev.params.imgIds)]):
            if e is None:
                continue
            matched = np.asarray(e["dtMatches"][:, :max_det]) > 0
            ignore = np.asarray(e["dtIgnore"][:, :max_det]).astype(bool)
            self.images[self.image_index[ev.params.imgIds[i]]] = (
                np.asarray(e["dtScores"][:max_det]), matched & ~ignore, ~matched & ~ignore,
                int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)))

    def __call__(self, image_indices):
        """(AP, AP50) in % of the images at ``image_indices`` (repeats count); NaN without truth.

        As ``COCOeval.accumulate``: detections sorted by score (stable), cumulative true and false
        positives, precision made monotone from the right, read at 101 recall thresholds."""
        parts = [self.images[i] for i in image_indices]
        truths = sum(p[3] for p in parts)
        if not truths:
            return float("nan"), float("nan")
        scores = np.concatenate([p[0] for p in parts])
        order = np.argsort(-scores, kind="mergesort")
        tp = np.cumsum(np.concatenate([p[1] for p in parts], axis=1)[:, order], axis=1)
        fp = np.cumsum(np.concatenate([p[2] for p in parts], axis=1)[:, order], axis=1)
        recall = tp / truths
        precision = tp / (tp + fp + np.spacing(1))
        precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        q = np.zeros((precision.shape[0], len(self.rec_thresholds)))
        for t in range(precision.shape[0]):
            at = np.searchsorted(recall[t], self.rec_thresholds, side="left")
            inside = at < precision.shape[1]
            q[t, inside] = precision[t, at[inside]]
        return float(q.mean() * 100), float(q[0].mean() * 100)


class SplitFigures:
    """The :data:`FIGURES` of any multiset of a split's units (patients or pseudo-patients).

    ``rows``: the split's per-image rows (:func:`clinical.rows_for`, class-agnostic), each with
    its ``"unit"`` (a row without one is a unit of its own); ``gt``, ``results``: the split's COCO
    ground truth and results; ``ap``: their :class:`ResampledAP` per task, if built already."""

    def __init__(self, gt, results, rows, ap=None):
        self.rows = rows
        units = [r.get("unit", f"image {r['image_id']}") for r in rows]
        self.units = list(dict.fromkeys(units))
        index = {name: k for k, name in enumerate(self.units)}
        self.unit_rows = [[] for _ in self.units]
        for i, unit in enumerate(units):
            self.unit_rows[index[unit]].append(i)
        self.ap = ap or {task: ResampledAP(gt, results, task) for task in ("bbox", "segm")}
        self.image_index = next(iter(self.ap.values())).image_index
        self.patient_dice = None  # volumetric Dice of each unit that is a patient with tumor
        if rows and all(r.get("patient_id") is not None and u == r["patient_id"]
                        for r, u in zip(rows, units)):
            patients = [patient_rows([rows[i] for i in part])[0] for part in self.unit_rows]
            self.patient_dice = [p["volumetric_dice"] if p["tumors"] else np.nan
                                 for p in patients]

    def __call__(self, unit_indices):
        """The figures (:data:`FIGURES` order) of the units at ``unit_indices`` (repeats count)."""
        rows = [self.rows[i] for u in unit_indices for i in self.unit_rows[u]]
        images = [self.image_index[r["image_id"]] for r in rows]
        values = []
        for task in ("bbox", "segm"):
            values += list(self.ap[task](images)) if task in self.ap else [np.nan, np.nan]
        s = clinical.summarize(rows)
        values += [s["dice_mean_per_image"], s["sensitivity"], s["slice_specificity"]]
        dice = [self.patient_dice[u] for u in unit_indices] if self.patient_dice else []
        dice = [d for d in dice if not np.isnan(d)]
        values.append(float(np.mean(dice)) if dice else np.nan)
        return np.array(values, float)


def intervals(statistic, units, settings=Settings(), names=FIGURES):
    """{name: {"value", "low", "high", "undefined_resamples", "method"}} of ``statistic`` (a
    callable of unit indices returning a vector in ``names`` order) over ``units`` units; "value"
    is the statistic of the split as it is."""
    value = statistic(np.arange(units))
    methods = [settings.method] * len(names)
    if units < 2:
        low = high = np.full(len(names), np.nan)
        undefined = np.full(len(names), settings.resamples)
    else:
        with warnings.catch_warnings():  # degenerate and undefined resamples: handled below
            warnings.simplefilter("ignore", DegenerateDataWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            result = bootstrap((np.arange(units),), statistic, n_resamples=settings.resamples,
                               confidence_level=settings.level, method=settings.method,
                               vectorized=False, random_state=settings.seed)
        draws = result.bootstrap_distribution
        undefined = np.isnan(draws).sum(axis=-1)
        low, high = (np.array(v, float).reshape(-1) for v in result.confidence_interval)
        # Where the chosen method has no answer (BCa when every resample gives the same value, or
        # a figure undefined in some resamples, e.g. specificity when no tumor-free slice was
        # drawn): the percentile interval of the resamples where the figure is defined.
        tails = [50 * (1 - settings.level), 50 * (1 + settings.level)]
        fallback = np.isnan(low) | np.isnan(high) | (undefined > 0)
        for k in np.flatnonzero(fallback & (undefined < draws.shape[-1])):
            low[k], high[k] = np.nanpercentile(draws[k], tails)
            methods[k] = "percentile"
    return {name: {"value": _float(v), "low": _float(lo), "high": _float(hi),
                   "undefined_resamples": int(n), "method": method}
            for name, v, lo, hi, n, method in zip(names, value, low, high, undefined, methods)}


def split_intervals(gt, results, rows, settings=Settings(), unit_kind="patient", ap=None):
    """The bootstrap section of metrics.json for one split (or part of one): the settings, the
    units and, with resamples, each figure's value and interval."""
    figures = SplitFigures(gt, results, rows, ap)
    out = {"unit": unit_kind, "units": len(figures.units), **asdict(settings)}
    if not settings.resamples:
        return out
    out["figures"] = intervals(figures, len(figures.units), settings)
    return out


def paired_difference(figures_a, figures_b, settings=Settings()):
    """Intervals of A - B for two :class:`SplitFigures` of the same split and units."""
    if figures_a.units != figures_b.units:
        raise ValueError("A paired difference needs the same split and units for both models.")

    def difference(unit_indices):
        return figures_a(unit_indices) - figures_b(unit_indices)

    return intervals(difference, len(figures_a.units), settings)


def point_value(part, figure):
    """A figure of metrics.json (or of its "leak_free" part) as evaluated, without resampling."""
    if not part or not part.get("clinical"):
        return None
    clinical = part["clinical"]["all classes"]
    task, _, ap = figure.partition(" ")
    if task in ("bbox", "segm"):
        return (part.get("coco") or {}).get(task, {}).get(f"agnostic/{ap}")
    return {"Dice": clinical.get("dice_mean_per_image"),
            "lesion sensitivity": clinical.get("sensitivity"),
            "slice specificity": clinical.get("slice_specificity"),
            "patient Dice": (part.get("patients") or {}).get("volumetric_dice_mean")}[figure]


def _float(v):
    return None if v is None or np.isnan(v) else float(v)
