"""Side-by-side comparison of trained runs on one split: one table, one figure (what
``tumorseg compare`` runs).

A run is an OUTPUT_DIR of ``tumorseg train`` (its config.yaml, checkpoints and
training_summary.json). :func:`train_runs` first trains configs into ``<output>/<config name>``
(skipping runs that finished, resuming runs that were interrupted). Each run's checkpoint
(model_best.pth, else the last) is evaluated on the split by the evaluation pipeline, at the same
score threshold.

Outputs: ``compare.md`` and ``compare.csv`` (model, parameters, training time, inference seconds
per image, class-agnostic bbox AP / AP50, Dice, IoU, pixel precision / recall / F1, per-image
sensitivity), ``compare.png`` (the same images under each model) and each run's full evaluation in
``<output>/evaluation/<run>/``.
"""
import json
import logging
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image

from ..checkpoint import SafeCheckpointer
from ..config import get_tumorseg_cfg, merge_config
from ..data import register_datasets
from ..drawing import draw_prediction, draw_truth, resized_tile, save_rgb
from ..engine.run import final_weights, use_cpu_without_gpu
from ..engine.trainer import Trainer
from ..modeling.tta import augmentation_text
from ..predictions import dataset_category_ids, to_coco_results
from ..tables import fmt_value, markdown_table, write_csv
from . import clinical
from .bootstrap import Settings, SplitFigures, paired_difference, point_value
from .pipeline import (dataset_for, evaluate_predictions, evaluate_results, predict,
                       reference_datasets)
from .report import interval_text

logger = logging.getLogger("tumorseg_d2")
# (column, key in the row, percent?) of compare.md, in order.
COLUMNS = [
    ("model", "model", False), ("run", "run", False), ("parameters", "parameters", False),
    ("training (min)", "training_minutes", False), ("inference (s/image)", "seconds_per_image", False),
    ("bbox AP", "bbox_AP", True), ("bbox AP50", "bbox_AP50", True), ("Dice", "dice", False),
    ("IoU", "iou", False), ("pixel precision", "pixel_precision", False),
    ("pixel recall", "pixel_recall", False), ("pixel F1", "pixel_f1", False),
    ("per-image sensitivity", "slice_sensitivity", False),
    ("slice specificity", "slice_specificity", False),
    ("patient Dice", "patient_dice", False),
]
# (bootstrap figure, key in the row): the figures whose intervals and leak-free values compare
# reports, and whose paired differences it gives.
INTERVAL_FIGURES = [("bbox AP50", "bbox_AP50"), ("segm AP50", "segm_AP50"), ("Dice", "dice"),
                    ("lesion sensitivity", "lesion_sensitivity"),
                    ("slice specificity", "slice_specificity"), ("patient Dice", "patient_dice")]


# ---------------------------------------------------------------- training
def train_runs(configs, output, opts=(), seeds=None):
    """Train each config into ``output/<config name>`` (:func:`train_run`), or with ``seeds``
    once per seed into ``output/<config name>_seed<seed>`` (SEED set); returns the run folders,
    config by config."""
    for config in configs:
        if not os.path.isfile(config):
            raise FileNotFoundError(f"--train {config} does not exist; the baseline configs are in "
                                    "configs/baselines/.")
    runs = []
    for config in configs:
        name = os.path.join(output, os.path.splitext(os.path.basename(config))[0])
        if seeds is None:
            runs.append(train_run(config, name, opts))
        else:
            runs += [train_run(config, f"{name}_seed{seed}", list(opts) + ["SEED", str(seed)])
                     for seed in seeds]
    return runs


def train_run(config, run, opts=()):
    """Train ``config`` into ``run`` with ``tumorseg train`` (a process, its output in the run's
    train_stdout.log); returns ``run``. A run with training_summary.json is done; one with a
    checkpoint is resumed."""
    if os.path.isfile(os.path.join(run, "training_summary.json")):
        logger.info(f"{run}: trained already (training_summary.json); not retrained.")
        return run
    resume = os.path.isfile(os.path.join(run, "last_checkpoint"))
    cmd = [sys.executable, "-m", "tumorseg_d2", "train", "--config-file", config,
           *(["--resume"] if resume else []), "OUTPUT_DIR", run, *opts]
    logger.info(("Resuming" if resume else "Training") + f" {config} into {run}")
    os.makedirs(run, exist_ok=True)
    with open(os.path.join(run, "train_stdout.log"), "a") as log:
        if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode:
            raise RuntimeError(f"Training {config} failed; its output is in "
                               f"{os.path.join(run, 'train_stdout.log')}. Rerun the same "
                               "command to resume it once fixed.")
    return run


# ---------------------------------------------------------------- one run
def run_config(run, opts=()):
    """The config a run was trained with (its config.yaml), on the CPU if there is no GPU."""
    path = os.path.join(run, "config.yaml")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: {run} is not a training run's output "
                                "folder (OUTPUT_DIR), or its training never started.")
    cfg = merge_config(get_tumorseg_cfg(), path, opts)
    use_cpu_without_gpu(cfg)
    return cfg


def model_name(cfg):
    arch = cfg.MODEL.META_ARCHITECTURE
    tta = " + TTA" if cfg.TEST.AUG.ENABLED else ""
    if arch == "GeneralizedRCNN":
        return f"Mask R-CNN R{cfg.MODEL.RESNETS.DEPTH}-FPN {cfg.INPUT.MIN_SIZE_TEST} px{tta}"
    return f"{arch} {cfg.MODEL.PIXEL_SEG.INPUT_SIZE} px, {cfg.MODEL.PIXEL_SEG.LOSS}{tta}"


def run_labels(runs):
    """A name per run folder, for its table row and its ``evaluation/<label>`` folder: the folder's
    own name, or, where two runs share it (seed 0 of two recipes), as much of the path above it as
    tells them apart, so that neither report overwrites the other."""
    paths = [os.path.abspath(r).split(os.sep) for r in runs]
    labels = []
    for i, path in enumerate(paths):
        others = [q for j, q in enumerate(paths) if j != i]
        for depth in range(1, len(path) + 1):
            label = "/".join(path[-depth:])
            if all("/".join(q[-depth:]) != label for q in others):
                break
        labels.append(label)
    return labels


def evaluate_run(run, split, output, threshold, opts=(), label=None):
    """Evaluate a run's chosen checkpoint on ``split`` into ``output/evaluation/<label>``
    (default: the run folder's name); returns (row, predictions, dataset name, metrics)."""
    cfg = run_config(run, opts)
    register_datasets(cfg)
    name = dataset_for(cfg, split)
    weights = final_weights(run)
    if weights is None or not os.path.isfile(weights):
        raise FileNotFoundError(f"{run} has no checkpoint (model_best.pth, model_final.pth or "
                                "last_checkpoint): train it first, or rerun with --train.")
    model = Trainer.build_model(cfg)
    SafeCheckpointer(model, same_classes=True).load(weights)
    start = time.perf_counter()
    preds = predict(cfg, model, name)
    seconds = time.perf_counter() - start
    label = label or os.path.basename(os.path.normpath(run))
    folder = os.path.join(output, "evaluation", label)
    metrics = evaluate_predictions(preds, name, folder, threshold, "fixed",
                                   reference_datasets(cfg), Settings.of(cfg),
                                   augmentation_text(cfg, model))
    summary_path = os.path.join(run, "training_summary.json")
    trained = {}
    if os.path.isfile(summary_path):
        with open(summary_path) as f:
            trained = json.load(f)
    row = metrics_row(metrics, folder, output, model=model_name(cfg), run=label,
                      weights=os.path.basename(weights),
                      parameters=sum(p.numel() for p in model.parameters()),
                      training_minutes=trained["seconds"] / 60 if "seconds" in trained else None,
                      iterations=trained.get("iterations"),
                      seconds_per_image=seconds / max(len(preds), 1))
    return row, preds, name, metrics


def evaluate_results_file(label, results_file, run, split, output, threshold, opts=()):
    """Score another tool's COCO results json for ``split`` as named by ``run``'s config, into
    ``output/evaluation/<label>``; returns what :func:`evaluate_run` returns."""
    cfg = run_config(run, opts)
    register_datasets(cfg)
    name = dataset_for(cfg, split)
    folder = os.path.join(output, "evaluation", label)
    metrics, preds = evaluate_results(cfg, results_file, name, folder, threshold)
    row = metrics_row(metrics, folder, output, model=f"{label} (results file)", run=label,
                      weights=os.path.basename(results_file), parameters=None,
                      training_minutes=None, iterations=None, seconds_per_image=None)
    return row, preds, name, metrics


def metrics_row(metrics, folder, output, **fields):
    """compare's row: ``fields`` (model, run, weights, size and timing) and the figures."""
    figures = metrics["clinical"]["all classes"]
    return {
        **fields,
        # Class-agnostic: the pixel networks see one class; a two-class Mask R-CNN is scored alike.
        "bbox_AP": metrics["coco"]["bbox"]["agnostic/AP"],
        "bbox_AP50": metrics["coco"]["bbox"]["agnostic/AP50"],
        "dice": figures["dice_mean_per_image"], "iou": figures["iou_mean_per_image"],
        "pixel_precision": figures["pixel_precision"], "pixel_recall": figures["pixel_recall"],
        "pixel_f1": figures["pixel_f1"], "slice_sensitivity": figures["slice_sensitivity"],
        "segm_AP50": metrics["coco"].get("segm", {}).get("agnostic/AP50"),
        "dice_pooled": figures["dice_pooled"], "lesion_sensitivity": figures["sensitivity"],
        "slice_specificity": figures["slice_specificity"],
        "false_alarms_per_tumor_free_slice": figures["false_alarms_per_tumor_free_slice"],
        "patient_dice": metrics["patients"].get("volumetric_dice_mean"),
        "patients": metrics["patients"].get("patients"), "images": metrics["images"],
        "evaluation": os.path.relpath(os.path.join(folder, "report.md"), output),
        **interval_columns(metrics),
    }


def interval_columns(metrics):
    """Row entries: each :data:`INTERVAL_FIGURES` figure's interval (``<key>_low``/``_high``) and
    leak-free value (``leak_free_<key>``), and the leak-free subset's size."""
    figures = metrics["bootstrap"].get("figures") or {}
    free = metrics.get("leak_free")
    out = {"leak_free_images": free["images"] if free else None}
    for figure, key in INTERVAL_FIGURES:
        entry = figures.get(figure) or {}
        out[f"{key}_low"], out[f"{key}_high"] = entry.get("low"), entry.get("high")
    for figure, key in INTERVAL_FIGURES:
        out[f"leak_free_{key}"] = point_value(free, figure) if free else None
    return out


def paired_differences(evaluated, pairs=None):
    """[(run, base run, {figure: interval of run - base})] for each (run index, base index) of
    ``pairs`` (default: every run against the first), on the same resamples of the same units
    (:func:`bootstrap.paired_difference`)."""
    pairs = [(k, 0) for k in range(1, len(evaluated))] if pairs is None else pairs
    if not pairs:
        return []
    boot = evaluated[0]["metrics"]["bootstrap"]
    if not boot.get("resamples"):
        return []
    settings = Settings(boot["resamples"], boot["seed"], boot["level"], boot["method"])
    figures = {k: split_figures(evaluated[k]) for pair in pairs for k in pair}
    out = []
    for k, base in pairs:
        a, b = figures[k], figures[base]
        run, base_run = evaluated[k]["row"]["run"], evaluated[base]["row"]["run"]
        if a.units != b.units or [r["image_id"] for r in a.rows] != \
                [r["image_id"] for r in b.rows]:
            logger.warning(f"{run} was evaluated on other images or units than {base_run}: no "
                           "paired difference.")
            continue
        out.append((run, base_run, paired_difference(a, b, settings)))
    return out


def split_figures(evaluated):
    """The :class:`SplitFigures` of one evaluated run (its predictions and its rows)."""
    meta = MetadataCatalog.get(evaluated["dataset"])
    folder = os.path.dirname(os.path.join(evaluated["output"], evaluated["row"]["evaluation"]))
    gt = os.path.join(folder, f"{evaluated['dataset']}_coco_format.json")
    results = to_coco_results(list(evaluated["preds"].values()), dataset_category_ids(meta))
    return SplitFigures(gt, results, evaluated["metrics"]["per_image"])


# ---------------------------------------------------------------- outputs
def write_table(rows, output, split, threshold, differences=()):
    """compare.md (the table, the intervals, the leak-free figures and the paired differences)
    and compare.csv; returns the main table."""
    write_csv(os.path.join(output, "compare.csv"), rows)
    cells = []
    for r in rows:
        cells.append([fmt_value(r[k]) if r[k] is None else
                      f"{r[k]:,}" if k == "parameters" else
                      f"{r[k]:.1f}" if k == "training_minutes" else
                      f"{r[k]:.3f}" if k == "seconds_per_image" else
                      fmt_value(r[k], pct) for _, k, pct in COLUMNS])
    table = markdown_table([c for c, _, _ in COLUMNS], cells)
    machine = f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, " \
              f"{torch.get_num_threads()} threads"
    text = "\n".join([
        f"# Comparison on the {split} split", "",
        table, "",
        f"bbox AP / AP50: COCO, class-agnostic (any tumor), in %. At score >= {threshold}: Dice and "
        "IoU are means over the images with a tumor; pixel precision, recall and F1 pool every "
        "pixel of the split; per-image sensitivity is the share of slices with a tumor on which "
        "every tumor was found (box IoU >= 0.5); slice specificity the share of tumor-free slices "
        "without detection (n/a: the split has none); patient Dice the mean volumetric Dice of "
        "the patients with tumor (n/a: no patient ids). Training: wall minutes (training_summary.json). "
        "Inference: wall seconds of the evaluation pass (data loading included) per image, batch 1.",
        f"Machine: {machine}.", "",
        "Each run's full report (per-class figures, PR curves, HD95): "
        + ", ".join(f"[{r['run']}]({r['evaluation']})" for r in rows) + ".", ""]
        + uncertainty_lines(rows, differences))
    with open(os.path.join(output, "compare.md"), "w") as f:
        f.write(text)
    return table


def seed_summary(rows):
    """[(config, seeds, {key: (mean, sd)})] of the configs with two or more runs named
    ``<config>_seed<seed>``."""
    groups = {}
    for r in rows:
        config, sep, seed = r["run"].rpartition("_seed")
        if sep and seed.isdigit():
            groups.setdefault(config, []).append(r)
    out = []
    for config, part in groups.items():
        if len(part) < 2:  # one run has no spread
            continue
        stats = {}
        for _, key in INTERVAL_FIGURES:
            values = [r[key] for r in part if isinstance(r[key], (int, float))
                      and np.isfinite(r[key])]
            stats[key] = (float(np.mean(values)) if values else float("nan"),
                          float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"))
        out.append((config, len(part), stats))
    return out


def uncertainty_lines(rows, differences):
    """compare.md's seed spread, intervals, leak-free figures and paired differences."""
    names = [f for f, _ in INTERVAL_FIGURES]
    lines = []
    seeded = seed_summary(rows)
    if seeded:
        lines += ["## Across seeds", "",
                  "Mean +/- standard deviation (n - 1) over the runs of each config trained with "
                  "SEED 0, 1, ... (`--seeds`): what a rerun of the same recipe varies by.", "",
                  markdown_table(["config", "seeds"] + names, [
                      [config, str(n)] + [f"{fmt_value(m, pct)} +/- {fmt_value(sd, pct)}"
                                          for (m, sd), pct in
                                          ((stats[k], f in ("bbox AP50", "segm AP50"))
                                           for f, k in INTERVAL_FIGURES)]
                      for config, n, stats in seeded]), ""]
    lines += ["## 95% intervals", "",
             "Bootstrap over the split's patients or pseudo-patients (each run's report.md says "
             "which, how many and how often); AP50 in %.", "",
             markdown_table(["run"] + names, [[r["run"]] + [interval_text(f, {
                 "value": r[k], "low": r[f"{k}_low"], "high": r[f"{k}_high"]})
                 for f, k in INTERVAL_FIGURES] for r in rows]), ""]
    if any(r["leak_free_images"] is not None for r in rows):
        lines += ["## Leak-free subset", "",
                  "The test slices that no training or validation slice leaks into (same patient, "
                  "or the same chain of near duplicates); each run's report.md has its "
                  "intervals.", "",
                  markdown_table(["run", "slices"] + names, [
                      [r["run"], fmt_value(r["leak_free_images"])]
                      + [fmt_value(r[f"leak_free_{k}"], f in ("bbox AP50", "segm AP50"))
                         for f, k in INTERVAL_FIGURES] for r in rows]), ""]
    if differences:
        lines += ["## Paired differences", "",
                  "Each run minus another (the first, or with --tta its own run without "
                  "augmentation), with the 95% bootstrap interval of the difference: "
                  "both models on the same resampled units. An interval that excludes 0 is a "
                  "difference larger than the choice of test patients alone would make.", "",
                  markdown_table(["run", "minus"] + names, [
                      [run, base] + [interval_text(f, d[f]) for f in names]
                      for run, base, d in differences]), ""]
    return lines


def figure_images(records, count):
    """``count`` images spread evenly over the split sorted by file name, with a tumor."""
    candidates = sorted((r for r in records if r.get("annotations")), key=lambda r: r["file_name"])
    if not candidates:
        return []
    picks = np.linspace(0, len(candidates) - 1, min(count, len(candidates))).round().astype(int)
    return [candidates[i]["file_name"] for i in sorted(set(picks))]


def write_figure(path, runs, threshold, count=4, tile=256):
    """compare.png: one row per image (truth, then each run's detections at the threshold)."""
    files = figure_images(DatasetCatalog.get(runs[0]["dataset"]), count)
    rows = []
    for file_name in files:
        image = read_image(file_name, format="RGB")
        tiles = []
        for k, run in enumerate(runs):
            meta = MetadataCatalog.get(run["dataset"])
            record = run["records"][file_name]
            if k == 0:
                tiles.append(resized_tile(draw_truth(image, record, meta), "truth", tile))
            pred = run["preds"][record["image_id"]]
            dice = clinical.image_row(pred, record, threshold)["dice"]
            tiles.append(resized_tile(draw_prediction(image, pred, meta, threshold),
                                      f"{run['row']['run']}  Dice {dice:.2f}", tile))
        rows.append(np.hstack(tiles))
    if rows:
        save_rgb(path, np.vstack(rows))
    return files
