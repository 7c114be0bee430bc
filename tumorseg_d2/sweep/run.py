"""Grid search over learning rate and training length that shares checkpoints between lengths.

With a learning rate that is constant after warm-up (or steps at fixed iterations) and a fixed seed,
the checkpoint at iteration k of a long run IS the model a k-iteration run would give. So the grid
(lengths x learning rates) needs one training per learning rate, to the longest length, evaluated on
validation at every length. Schedules that depend on SOLVER.MAX_ITER (cosine) train each length on
its own. The test split is evaluated once, for the point chosen on validation.

A trial is the plain function :func:`run_trial` of (config, learning rate, lengths, folder): run
one after another here, or as Ray Tune trials (``backend="ray"``).

The plan (:mod:`.plan`), one trial (:mod:`.trial`), where trials run (:mod:`.backends`) and the
results (:mod:`.results`); :func:`run_sweep` ties them together.
"""
import logging
import os
import time

from ..files import write_json
from .backends import run_trials_ray, run_trials_sequential
from .plan import (DEFAULT_ITERS, DEFAULT_LRS, choose_best, metric_mode, plan_trials,
                   remember_sweep, shares_checkpoints, trial_name, valid_metrics)
from .results import _cell, evaluate_best, plot_losses, plot_validation, test_split_table, write_table

logger = logging.getLogger("tumorseg_d2")


def run_sweep(cfg, lrs=DEFAULT_LRS, lengths=DEFAULT_ITERS, output="output/sweep",
              metric="segm/AP", backend="sequential", ray_address=None, resources=None):
    """Train and validate the grid, choose on validation, evaluate the choice on test; returns
    best.json's content."""
    if not cfg.DATASETS.VAL:
        raise ValueError("The sweep chooses on DATASETS.VAL, which is empty: set DATASETS.VAL "
                         "('tumorseg_valid',).")
    if metric not in valid_metrics(cfg):
        if "loss" in metric and not cfg.TEST.VAL_LOSS:
            raise ValueError(f"--metric {metric} needs the validation loss, which TEST.VAL_LOSS "
                             f"False turns off; drop that override or choose another metric.")
        raise ValueError(f"--metric {metric} is not measured on validation; choose one of "
                         f"{', '.join(valid_metrics(cfg))}.")
    lengths = sorted(set(lengths))
    shared = shares_checkpoints(cfg)
    trials = plan_trials(lrs, lengths, shared)
    trained = sum(max(ls) for _, ls in trials)
    separate = len(lrs) * sum(lengths)
    if not shared:
        logger.warning(
            f"[sweep] SOLVER.LR_SCHEDULER_NAME {cfg.SOLVER.LR_SCHEDULER_NAME} depends on "
            "SOLVER.MAX_ITER, so the checkpoint at k iterations of a longer run is not a k-iteration"
            f" run: each of the {len(trials)} grid points trains on its own ({trained:,} "
            f"iterations). Use WarmupMultiStepLR to share checkpoints.")
    os.makedirs(output, exist_ok=True)
    remember_sweep(cfg, output)
    dirs = [os.path.join(output, "trials", trial_name(lr, ls, shared)) for lr, ls in trials]
    start = time.time()
    if backend == "ray":
        rows = run_trials_ray(cfg, trials, dirs, output, ray_address, resources)
    else:
        rows = run_trials_sequential(cfg, trials, dirs)

    best = choose_best(rows, metric)
    best_dir = dirs[next(i for i, (lr, ls) in enumerate(trials)
                         if lr == best["lr"] and best["iters"] in ls)]
    table = write_table(rows, output)
    plots = plot_losses(trials, dirs, output, shared) + [plot_validation(rows, output, metric, best)]
    test = evaluate_best(cfg, best, best_dir, output) if cfg.DATASETS.TEST else None
    summary = {
        "metric": metric, "mode": metric_mode(metric), "value": best[metric],
        "lr": best["lr"], "iters": best["iters"],
        "checkpoint": os.path.abspath(os.path.join(best_dir, best["checkpoint"])),
        "validation": best, "validated_on": cfg.DATASETS.VAL[0],
        "test": None if test is None else {"dataset": cfg.DATASETS.TEST[0], "coco": test["coco"],
                                           "clinical": test["clinical"]["all classes"]},
        "seed": cfg.SEED, "shared_checkpoints": shared,
        "training_iterations": trained, "separate_runs_iterations": separate,
        "wall_s_this_run": round(time.time() - start, 1),
    }
    write_json(os.path.join(output, "best.json"), summary, indent=2)
    lines = [f"# Sweep: {len(lrs)} learning rates x {len(lengths)} lengths", "",
             f"Validation on `{cfg.DATASETS.VAL[0]}`; chosen by {metric} ({metric_mode(metric)}): "
             f"**lr {best['lr']:g}, {best['iters']} iterations** ({metric} "
             f"{_cell(metric, best[metric])}). AP in %, train_s = training seconds to reach the "
             "length, eval_s = validation seconds; per-class figures are in results.csv.", "",
             table, ""]
    if test is not None:
        lines += [f"## Test split `{cfg.DATASETS.TEST[0]}`, chosen point only", "", test_split_table(test),
                  ""]
    lines += [f"Training iterations: {trained:,} for {len(lrs) * len(lengths)} grid points "
              f"({len(lrs) * len(lengths)} separate runs: {separate:,}).", ""]
    lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    with open(os.path.join(output, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return summary
