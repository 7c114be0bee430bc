"""Grouped k-fold cross-validation (what ``tumorseg crossval`` runs): one config trained on each
fold of a DATASETS.SOURCE (``<name>_fold<k>_{train,valid,test}``, every patient tested exactly
once), each fold's chosen checkpoint evaluated on its test patients, one table of every figure per
fold with mean and standard deviation, and the per-patient Dice of all folds together.

Outputs in ``<output>``: ``fold<k>/`` (the training runs), ``evaluation/fold<k>/`` (their full
reports), ``crossval.md``, ``crossval.csv``, ``crossval.json`` and ``crossval.png`` (the
volumetric Dice of every patient, by fold).
"""
import logging
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..files import write_json  # noqa: E402
from ..tables import fmt_value, markdown_table, write_csv  # noqa: E402
from .compare import evaluate_run, train_run  # noqa: E402

logger = logging.getLogger("tumorseg_d2")
# (column, key of compare's row): the figures a fold reports, in order.
FIGURES = [
    ("test patients", "patients"), ("test slices", "images"), ("bbox AP50", "bbox_AP50"),
    ("segm AP50", "segm_AP50"), ("Dice (tumor slices)", "dice"), ("Dice pooled", "dice_pooled"),
    ("patient Dice", "patient_dice"), ("lesion sensitivity", "lesion_sensitivity"),
    ("slice sensitivity", "slice_sensitivity"), ("slice specificity", "slice_specificity"),
    ("false alarms per tumor-free slice", "false_alarms_per_tumor_free_slice"),
    ("training (min)", "training_minutes"),
]


def fold_opts(name, fold):
    """KEY VALUE overrides that train, choose and test on fold ``fold`` of source ``name``."""
    return ["DATASETS.TRAIN", f"('{name}_fold{fold}_train',)",
            "DATASETS.VAL", f"('{name}_fold{fold}_valid',)",
            "DATASETS.TEST", f"('{name}_fold{fold}_test',)"]


def run_crossval(config, name, folds, output, opts=(), threshold=0.5):
    """Train and evaluate every fold (finished folds are kept, interrupted ones resumed); writes
    the table and figure; returns (fold rows, summary)."""
    rows, patients = [], []
    for k in range(folds):
        fold = fold_opts(name, k)
        run = train_run(config, os.path.join(output, f"fold{k}"), list(opts) + fold)
        row, _, _, metrics = evaluate_run(run, "test", output, threshold, list(opts) + fold)
        patients += [dict(p, fold=k) for p in metrics["per_patient"]]
        rows.append(dict(row, fold=k))
        logger.info(f"[crossval] fold {k + 1}/{folds}: patient Dice "
                    f"{fmt_value(row['patient_dice'])}, slice Dice {fmt_value(row['dice'])}")
    summary = summarize(rows, patients)
    write_outputs(rows, patients, summary, output, threshold)
    return rows, summary


def summarize(rows, patients):
    """Mean and sd (n - 1) over the folds of each figure, and the volumetric Dice over all
    patients with tumor (each tested once)."""
    out = {}
    for _, key in FIGURES:
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))
                  and np.isfinite(r[key])]
        out[key] = {"mean": float(np.mean(values)) if values else float("nan"),
                    "sd": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"),
                    "folds": len(values)}
    dice = [p["volumetric_dice"] for p in patients if p["tumors"]
            and np.isfinite(p["volumetric_dice"])]
    out["all_patients"] = {
        "patients": len(patients), "with_tumor": len(dice),
        "volumetric_dice_mean": float(np.mean(dice)) if dice else float("nan"),
        "volumetric_dice_sd": float(np.std(dice, ddof=1)) if len(dice) > 1 else float("nan"),
        "volumetric_dice_median": float(np.median(dice)) if dice else float("nan")}
    return out


def write_outputs(rows, patients, summary, output, threshold):
    write_csv(os.path.join(output, "crossval.csv"), rows, ["fold"] + [k for _, k in FIGURES])
    write_json(os.path.join(output, "crossval.json"),
               {"folds": rows, "summary": summary, "patients": patients})
    cells = [[str(r["fold"])] + [fmt_value(r.get(k), "AP50" in k) for _, k in FIGURES]
             for r in rows]
    cells.append(["mean +/- sd"] + [
        f"{fmt_value(summary[k]['mean'], 'AP50' in k)} +/- {fmt_value(summary[k]['sd'], 'AP50' in k)}"
        for _, k in FIGURES])
    every = summary["all_patients"]
    text = "\n".join([
        f"# Cross-validation: {len(rows)} folds, split by patient", "",
        markdown_table(["fold"] + [c for c, _ in FIGURES], cells), "",
        f"All {every['patients']} patients, each tested once ({every['with_tumor']} with tumor): "
        f"volumetric Dice {fmt_value(every['volumetric_dice_mean'])} +/- "
        f"{fmt_value(every['volumetric_dice_sd'])} (median "
        f"{fmt_value(every['volumetric_dice_median'])}).", "",
        f"Score threshold {threshold}. AP50 in % (COCO, any tumor); Dice (tumor slices) is the "
        "mean over the slices with a tumor; patient Dice the mean volumetric Dice of a fold's "
        "patients with tumor; slice specificity the share of tumor-free slices without detection. "
        "sd: standard deviation over the folds (n - 1). Each fold's full report: "
        + ", ".join(f"[fold {r['fold']}]({r['evaluation']})" for r in rows) + ".", "",
        "![volumetric Dice per patient](crossval.png)", ""])
    with open(os.path.join(output, "crossval.md"), "w") as f:
        f.write(text)
    plot_patients(patients, len(rows), os.path.join(output, "crossval.png"))
    return text


def plot_patients(patients, folds, path):
    """crossval.png: each patient's volumetric Dice (a dot), by fold, with the fold's mean."""
    fig, ax = plt.subplots(figsize=(1.4 * folds + 2, 3.5))
    for k in range(folds):
        dice = [p["volumetric_dice"] for p in patients if p["fold"] == k and p["tumors"]
                and np.isfinite(p["volumetric_dice"])]
        xs = k + np.linspace(-0.15, 0.15, len(dice)) if len(dice) > 1 else [k] * len(dice)
        ax.scatter(xs, dice, s=18, alpha=0.7)
        if dice:
            ax.hlines(np.mean(dice), k - 0.3, k + 0.3, color="black")
    ax.set_xticks(range(folds), [f"fold {k}" for k in range(folds)])
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("volumetric Dice per patient")
    ax.set_title("Test patients of each fold (line: mean)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
