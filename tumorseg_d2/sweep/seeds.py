"""One sweep over several seeds: the grid trained once per seed (``<output>/seed<k>``, each a
complete sweep that resumes), the validation figure averaged over the seeds at every grid point,
the point chosen on that mean, and the chosen point's checkpoint of every seed evaluated on the
test split, reported as mean +/- sd. A single run varies by several AP points with its seed, so
a choice on one seed partly chooses noise."""
import csv
import logging
import math
import os

import numpy as np

from ..config import derived
from ..evaluation.plots import plt
from ..files import write_json
from ..tables import fmt_value, markdown_table, write_csv
from .plan import checkpoint_name, metric_mode, shares_checkpoints, trial_name
from .results import evaluate_best
from .run import run_sweep

logger = logging.getLogger("tumorseg_d2")
# (label, key of the test metrics' all-classes summary or COCO "<task>/<figure>")
TEST_FIGURES = (("bbox AP50", "bbox/AP50"), ("segm AP50", "segm/AP50"),
                ("Dice", "dice_mean_per_image"), ("lesion sensitivity", "sensitivity"))


def run_seeded_sweep(cfg, seeds, lrs, lengths, output, metric, **backend):
    """The sweep of ``run_sweep`` once per seed, chosen on the mean over the seeds; returns the
    summary written to ``<output>/best.json``."""
    lengths = sorted(set(lengths))
    folders = {}
    for seed in seeds:
        folder = os.path.join(output, f"seed{seed}")
        logger.info(f"[sweep] seed {seed}: {folder}")
        # Each seed's own test evaluation is left out: the test split sees the mean's choice only.
        run_sweep(derived(cfg, {"SEED": seed, "OUTPUT_DIR": folder, "DATASETS.TEST": ()}),
                  lrs, lengths, folder, metric, **backend)
        folders[seed] = folder
    grid = mean_grid({seed: read_rows(folder) for seed, folder in folders.items()}, metric)
    best = choose_on_mean(grid, metric)
    tests = {}
    if cfg.DATASETS.TEST:
        shared = shares_checkpoints(cfg)
        trial_lengths = lengths if shared else [best["iters"]]
        for seed, folder in folders.items():
            trial = os.path.join(folder, "trials", trial_name(best["lr"], trial_lengths, shared))
            tests[seed] = evaluate_best(derived(cfg, {"SEED": seed}),
                                        {"checkpoint": checkpoint_name(best["iters"]) + ".pth"},
                                        trial, folder)
    return write_outputs(grid, best, tests, output, metric, seeds,
                         cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)


def read_rows(folder):
    """A seed's grid (its results.csv), numbers as floats."""
    with open(os.path.join(folder, "results.csv")) as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def mean_grid(rows_by_seed, metric):
    """[{lr, iters, mean, sd, seeds, <metric>@seed<k>...}] over the grid points every seed has."""
    points = {}
    for seed, rows in rows_by_seed.items():
        for r in rows:
            points.setdefault((r["lr"], int(r["iters"])), {})[seed] = r.get(metric, math.nan)
    grid = []
    for (lr, iters), values in sorted(points.items(), key=lambda p: (-p[0][0], p[0][1])):
        finite = [v for v in values.values() if isinstance(v, float) and math.isfinite(v)]
        grid.append({"lr": lr, "iters": iters, "mean": _mean(finite),
                     "sd": float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan,
                     "seeds": len(finite), **{f"seed{s}": v for s, v in sorted(values.items())}})
    return grid


def choose_on_mean(grid, metric):
    """The grid point with the best mean over all seeds; ties go to the shorter training."""
    full = max(p["seeds"] for p in grid) if grid else 0
    candidates = [p for p in grid if p["seeds"] == full and math.isfinite(p["mean"])]
    if not candidates:
        raise RuntimeError(f"No grid point has a finite validation {metric} for every seed.")
    sign = 1 if metric_mode(metric) == "max" else -1
    return max(candidates, key=lambda p: (sign * p["mean"], -p["iters"]))


def test_figure(metrics, key):
    if "/" in key:
        task, name = key.split("/")
        return metrics["coco"][task][name]
    return metrics["clinical"]["all classes"][key]


def write_outputs(grid, best, tests, output, metric, seeds, test_dataset):
    """seeds.md, seeds.csv, seeds.png and best.json; returns best.json's content."""
    write_csv(os.path.join(output, "seeds.csv"), grid)
    pct = "/" in metric and "loss" not in metric
    table = markdown_table(
        ["lr", "iters", f"mean {metric}", "sd"] + [f"seed {s}" for s in seeds],
        [[f"{p['lr']:g}", str(p["iters"]), fmt_value(p["mean"], pct), fmt_value(p["sd"], pct)]
         + [fmt_value(p.get(f"seed{s}"), pct) for s in seeds] for p in grid])
    test = {}
    for label, key in TEST_FIGURES:
        values = [test_figure(m, key) for m in tests.values()]
        values = [v for v in values if v is not None and math.isfinite(v)]
        test[label] = {"mean": _mean(values), "sd": float(np.std(values, ddof=1))
                       if len(values) > 1 else math.nan,
                       "per_seed": {s: test_figure(m, key) for s, m in tests.items()}}
    summary = {"metric": metric, "mode": metric_mode(metric), "seeds": list(seeds),
               "lr": best["lr"], "iters": best["iters"], "mean": best["mean"], "sd": best["sd"],
               "test_dataset": test_dataset, "test": test if tests else None}
    write_json(os.path.join(output, "best.json"), summary, indent=2)
    lines = [f"# Sweep over {len(seeds)} seeds", "",
             f"Each seed's full sweep is in `seed<k>/`. Chosen on the mean validation {metric} "
             f"({metric_mode(metric)}) over seeds {', '.join(map(str, seeds))}: **lr "
             f"{best['lr']:g}, {best['iters']} iterations** ({fmt_value(best['mean'], pct)} +/- "
             f"{fmt_value(best['sd'], pct)}).", "", table, ""]
    if tests:
        lines += [f"## Test split `{test_dataset}`: the chosen point of every seed", "",
                  markdown_table(["figure", "mean +/- sd"] + [f"seed {s}" for s in tests], [
                      [label, f"{fmt_value(v['mean'], 'AP' in label)} +/- "
                              f"{fmt_value(v['sd'], 'AP' in label)}"]
                      + [fmt_value(v["per_seed"][s], "AP" in label) for s in tests]
                      for label, v in test.items()]),
                  "", "AP50 in %; Dice is the mean over tumor slices, sensitivity the share of "
                  "tumors found, at score 0.5. sd: standard deviation over the seeds (n - 1).",
                  ""]
    lines += ["![validation mean and spread by seed](seeds.png)", ""]
    with open(os.path.join(output, "results.md"), "w") as f:
        f.write("\n".join(lines))
    plot_grid(grid, best, metric, os.path.join(output, "seeds.png"))
    return summary


def plot_grid(grid, best, metric, path):
    """seeds.png: the mean validation figure (+/- sd over seeds) against length, per lr."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for lr in sorted({p["lr"] for p in grid}, reverse=True):
        points = [p for p in grid if p["lr"] == lr]
        ax.errorbar([p["iters"] for p in points], [p["mean"] for p in points],
                    yerr=[0 if math.isnan(p["sd"]) else p["sd"] for p in points], capsize=3,
                    marker="o", label=f"lr {lr:g}")
    ax.plot([best["iters"]], [best["mean"]], "k*", ms=14, label="chosen")
    ax.set(xlabel="iterations", ylabel=f"validation {metric} (mean +/- sd over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _mean(values):
    return float(np.mean(values)) if len(values) else math.nan
