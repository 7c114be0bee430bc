"""The sweep's results: the grid's table (Markdown and CSV), its plots, and the chosen point's
evaluation on the test split."""
import json
import logging
import math
import os

from ..checkpoint import SafeCheckpointer
from ..config import derived
from ..engine.trainer import Trainer
from ..evaluation.coco import METRICS
from ..evaluation.curves import plot_series, read_metrics
from ..evaluation.pipeline import evaluate_split
from ..evaluation.plots import plt
from ..files import write_json
from ..tables import fmt_value, markdown_table, write_csv

logger = logging.getLogger("tumorseg_d2")
CURVES = ("loss_box_reg", "loss_mask", "total_loss")


def table_columns(rows, per_class=True):
    keys = set().union(*rows)
    ap = [k for k in keys if "/" in k and (per_class or "-" not in k)]
    ap.sort(key=lambda k: (k.split("/")[0], "-" in k, _metric_rank(k), k))
    losses = sorted(k for k in keys if k.startswith("val_"))
    return ["lr", "iters"] + ap + ["validation_loss"] * ("validation_loss" in keys) + losses \
        + ["train_s", "eval_s"]


def _metric_rank(key):
    name = key.split("/")[1].split("-")[0]
    return METRICS.index(name) if name in METRICS else len(METRICS)


def write_table(rows, output):
    rows = sorted(rows, key=lambda r: (-r["lr"], r["iters"]))
    cols = table_columns(rows)
    write_csv(os.path.join(output, "results.csv"), rows, cols)
    cols = table_columns(rows, per_class=False)  # per-class figures: results.csv
    return markdown_table(cols, [[_cell(c, r.get(c)) for c in cols] for r in rows])


def _cell(col, v):
    if col == "lr":
        return f"{v:g}"
    if col.endswith("_s"):
        return f"{v:.0f}" if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"
    if "loss" in col and isinstance(v, float):
        return f"{v:.4f}"
    return fmt_value(v, pct=True) if isinstance(v, float) and "/" in col else fmt_value(v)


def plot_losses(trials, dirs, output, shared):
    """loss_box_reg.png, loss_mask.png, total_loss.png: training loss against iteration, one line
    per trial (Detectron2's metrics.json, median over 20 iterations)."""
    paths = []
    series = {}
    for (lr, lengths), d in zip(trials, dirs):
        label = f"lr {lr:g}" if shared else f"lr {lr:g}, {lengths[0]} it"
        try:
            series[label] = read_metrics(d)
        except FileNotFoundError:
            continue
    for key in CURVES:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        plot_series(ax, {label: s.get(key, []) for label, s in series.items()})
        ax.set(title=f"{key} (training)", yscale="log")
        if ax.lines:
            ax.legend()
        fig.tight_layout()
        paths.append(os.path.join(output, f"{key}.png"))
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)
    return paths


def plot_validation(rows, output, metric, best):
    """validation.png: validation AP and loss against training length, one line per lr."""
    keys = ["bbox/AP", "bbox/AP50", "segm/AP", "segm/AP50", "validation_loss"]
    keys = [k for k in keys if any(k in r for r in rows)]
    if metric not in keys:
        keys.append(metric)
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for ax, key in zip(axes.flat, keys):
        plot_series(ax, {f"lr {lr:g}": sorted((r["iters"], r.get(key, math.nan))
                                              for r in rows if r["lr"] == lr)
                         for lr in sorted({r["lr"] for r in rows}, reverse=True)})
        if key == metric:
            ax.plot([best["iters"]], [best[metric]], "k*", ms=14, label="chosen")
        ax.set(title=f"validation {key}" + (" (chosen by)" if key == metric else ""))
    axes.flat[0].legend()
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    path = os.path.join(output, "validation.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def evaluate_best(cfg, best, trial_dir, output):
    """The chosen checkpoint on the test split, once: COCO AP, clinical figures and report.md."""
    dataset = cfg.DATASETS.TEST[0]
    out = os.path.join(output, "test")
    weights = os.path.join(trial_dir, best["checkpoint"])
    done = os.path.join(out, "metrics.json")
    if os.path.isfile(done):
        previous = json.load(open(done))
        if previous.get("weights") == weights:
            logger.info(f"[sweep] test evaluation of {weights} done earlier; kept.")
            return previous
    cfg = derived(cfg, {"MODEL.WEIGHTS": weights})
    model = Trainer.build_model(cfg)
    SafeCheckpointer(model, same_classes=True).load(weights)
    metrics = evaluate_split(cfg, model, dataset, out)
    metrics["weights"] = weights
    write_json(done, metrics, indent=2)
    return metrics


def test_split_table(metrics):
    rows = [[task] + [fmt_value(res.get(m), True) for m in METRICS]
            for task, res in metrics["coco"].items()]
    summary = metrics["clinical"]["all classes"]
    clinical_keys = ("dice_mean_per_image", "iou_mean_per_image", "sensitivity", "precision")
    return (markdown_table(["task"] + list(METRICS), rows) + "\n\n"
            + markdown_table(list(clinical_keys), [[fmt_value(summary[k]) for k in clinical_keys]])
            + f"\n\n(score threshold {metrics['score_threshold']}; full report: test/report.md)")
