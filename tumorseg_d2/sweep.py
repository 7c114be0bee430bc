"""Grid search over learning rate and training length that shares checkpoints between lengths.

With a learning rate that is constant after warm-up (or steps at fixed iterations) and a fixed seed,
the checkpoint at iteration k of a long run IS the model a k-iteration run would give. So the grid
(lengths x learning rates) needs one training per learning rate, to the longest length, evaluated on
validation at every length. Schedules that depend on SOLVER.MAX_ITER (cosine) train each length on
its own. The test split is evaluated once, for the point chosen on validation.

A trial is the plain function :func:`run_trial` of (config, learning rate, lengths, folder): run
one after another here, or as Ray Tune trials (``backend="ray"``).
"""
import argparse
import contextlib
import csv
import json
import logging
import math
import os
import time

from detectron2.data import MetadataCatalog
from detectron2.engine import HookBase, hooks
from detectron2.utils.env import seed_all_rng
from fvcore.common.config import CfgNode

from .checkpoint import SafeCheckpointer
from .config import flatten, get_tumorseg_cfg, merge_config
from .data import register_tumorseg
from .engine.hooks import EarlyStopping, ValidationLoss, validation_loader, validation_losses
from .engine.schedule import LENGTH_INDEPENDENT
from .engine.trainer import Trainer
from .evaluate import evaluate_split
from .evaluation import METRICS, OVERLAP_FIGURES, save_results
from .plot_metrics import read_metrics
from .plots import plt  # matplotlib, headless
from .report import fmt_value, markdown_table
from .rng import preserve_rng

logger = logging.getLogger("tumorseg_d2")

DEFAULT_ITERS = (1000, 1500, 2000, 2500, 3000)
DEFAULT_LRS = (5e-4, 1e-4, 5e-5)
CURVES = ("loss_box_reg", "loss_mask", "total_loss")
ROWS_FILE = "milestones.jsonl"


def shares_checkpoints(cfg):
    """True when the learning rate at an iteration does not depend on SOLVER.MAX_ITER."""
    return cfg.SOLVER.LR_SCHEDULER_NAME in LENGTH_INDEPENDENT


def plan_trials(lrs, lengths, shared):
    """[(lr, lengths of that trial)]: one trial per learning rate, or per (lr, length)."""
    lengths = sorted(set(lengths))
    if shared:
        return [(lr, lengths) for lr in lrs]
    return [(lr, [k]) for lr in lrs for k in lengths]


def trial_name(lr, lengths, shared):
    return f"lr{lr:g}" if shared else f"lr{lr:g}_iters{lengths[0]}"


def checkpoint_name(k):
    return f"model_after_{k}_iters"


def metric_mode(metric):
    return "min" if "loss" in metric else "max"


# ---------------------------------------------------------------- one trial
def trial_config(cfg, lr, lengths, out_dir):
    """The base config at this learning rate, trained to the longest length. Validation and test
    evaluation, best-checkpoint selection and early stopping are the sweep's own."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.BASE_LR = float(lr)
    cfg.SOLVER.MAX_ITER = max(lengths)
    cfg.OUTPUT_DIR = out_dir
    cfg.TEST.EVAL_PERIOD = 0
    cfg.TEST.VAL_LOSS = False
    cfg.TEST.BEST_METRIC = ""
    cfg.TEST.EARLY_STOP_PATIENCE = 0
    cfg.freeze()
    return cfg


def read_rows(out_dir):
    """{length: row} of the milestones a trial has evaluated."""
    path = os.path.join(out_dir, ROWS_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r["iters"]: r for r in rows}


class Milestones(HookBase):
    """At each length k: save ``model_after_{k}_iters.pth`` (full training state, so a resume can
    start there), evaluate it on DATASETS.VAL (COCO AP and validation loss) and append a row to
    milestones.jsonl. Also logs progress with the trial's and the sweep's remaining time."""

    def __init__(self, cfg, lengths, rows, progress):
        self.cfg, self.lengths, self.rows = cfg, sorted(lengths), rows
        self.progress = progress or {}
        self.train_seconds = 0.0
        self._val_loader = validation_loader(cfg, cfg.DATASETS.VAL[0])

    def state_dict(self):
        return {"train_seconds": self.train_seconds}

    def load_state_dict(self, state):
        self.train_seconds = state["train_seconds"]

    def before_train(self):
        self._start_iter, self._session_seconds = self.trainer.iter, 0.0
        for k in self.lengths:  # a milestone saved but not evaluated before an interruption
            path = os.path.join(self.cfg.OUTPUT_DIR, checkpoint_name(k) + ".pth")
            if k <= self.trainer.start_iter and k not in self.rows and os.path.isfile(path):
                model = Trainer.build_model(self.cfg)
                state = SafeCheckpointer(model).load(path).get("trainer", {})
                seconds = state.get("hooks", {}).get(type(self).__qualname__, {})
                self._evaluate(model, k, seconds.get("train_seconds", math.nan))
        self._last = time.perf_counter()

    def after_step(self):
        done = self.trainer.iter + 1
        elapsed = time.perf_counter() - self._last
        self.train_seconds += elapsed
        self._session_seconds += elapsed
        if done in self.lengths and done not in self.rows:
            self.trainer.checkpointer.save(checkpoint_name(done), iteration=self.trainer.iter)
            self._evaluate(self.trainer.model, done, self.train_seconds)
        if done % 20 == 0 or done in self.lengths:
            self._log_progress(done)
        self._last = time.perf_counter()

    def _evaluate(self, model, k, train_seconds):
        start = time.perf_counter()
        val_cfg = self.cfg.clone()
        val_cfg.defrost()
        val_cfg.DATASETS.TEST = self.cfg.DATASETS.VAL[:1]
        val_cfg.OUTPUT_DIR = os.path.join(self.cfg.OUTPUT_DIR, "validation", f"after_{k}_iters")
        val_cfg.freeze()
        was_training = model.training
        with preserve_rng():  # evaluating must not change what is trained next
            results = Trainer.test(val_cfg, model)
            losses = validation_losses(model, self._val_loader)
        model.train(was_training)
        row = {"lr": self.cfg.SOLVER.BASE_LR, "iters": k}
        row.update({f"{task}/{m}": v for task, res in results.items() for m, v in res.items()})
        row.update(losses)
        row.update(train_s=round(train_seconds, 1), eval_s=round(time.perf_counter() - start, 1),
                   checkpoint=checkpoint_name(k) + ".pth")
        # Undefined figures (no tumor of that size) are null, as in metrics.json.
        row = {k_: None if isinstance(v, float) and math.isnan(v) else v for k_, v in row.items()}
        with open(os.path.join(self.cfg.OUTPUT_DIR, ROWS_FILE), "a") as f:
            f.write(json.dumps(row) + "\n")
        self.rows[k] = row
        if hasattr(self.trainer, "storage"):
            self.trainer.storage.put_scalars(
                **{k_: v for k_, v in row.items()
                   if ("/" in k_ or "loss" in k_) and isinstance(v, (int, float))},
                smoothing_hint=False)

    def _log_progress(self, done):
        per_iter = self._session_seconds / max(done - self._start_iter, 1)
        evals = [r["eval_s"] for r in self.rows.values()]
        per_eval = sum(evals) / len(evals) if evals else 0.0
        left_here = (self.trainer.max_iter - done) * per_iter \
            + sum(k > done for k in self.lengths) * per_eval
        p = self.progress
        msg = (f"[sweep] trial {p.get('index', 1)}/{p.get('trials', 1)} (lr "
               f"{self.cfg.SOLVER.BASE_LR:g}): iteration {done}/{self.trainer.max_iter}, "
               f"trial left {_duration(left_here)}")
        if "iters_after" in p:
            left = left_here + p["iters_after"] * per_iter + p["evals_after"] * per_eval
            msg += f", sweep left {_duration(left)}"
        logger.info(msg)


class SweepTrainer(Trainer):
    """The project's trainer with the sweep's validation (at every length) instead of its own."""

    def __init__(self, cfg, lengths, rows, progress=None):
        self._milestones = Milestones(cfg, lengths, rows, progress)
        super().__init__(cfg)

    def build_hooks(self):
        own = (hooks.EvalHook, ValidationLoss, hooks.BestCheckpointer, EarlyStopping)
        ret = [h for h in super().build_hooks() if not isinstance(h, own)]
        writer_at = next((i for i, h in enumerate(ret) if isinstance(h, hooks.PeriodicWriter)),
                         len(ret))
        if writer_at < len(ret):  # at least 20 points per loss curve, even for short trials
            ret[writer_at]._period = max(1, min(20, self.cfg.SOLVER.MAX_ITER // 20))
        ret.insert(writer_at, self._milestones)  # so that the writer records its validation AP
        return ret


@contextlib.contextmanager
def trial_log(out_dir):
    """Copy the trial's log lines into <trial>/log.txt."""
    handler = logging.FileHandler(os.path.join(out_dir, "log.txt"))
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s"))
    names = ("detectron2", "tumorseg_d2", "fvcore")
    for name in names:
        logging.getLogger(name).addHandler(handler)
        if logging.getLogger(name).getEffectiveLevel() > logging.INFO:
            logging.getLogger(name).setLevel(logging.INFO)
    try:
        yield
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(handler)
        handler.close()


def run_trial(cfg, lr, lengths, out_dir, progress=None):
    """Train at ``lr`` to max(lengths), evaluating on validation at each length; returns the rows.

    ``cfg`` is a config (or its YAML dump, for other processes). A finished trial returns its rows
    without training; an unfinished one resumes from its last checkpoint in ``out_dir``.
    """
    if isinstance(cfg, str):
        cfg = CfgNode.load_cfg(cfg)
    cfg = trial_config(cfg, lr, lengths, out_dir)
    rows = read_rows(out_dir)
    if all(k in rows for k in lengths):
        logger.info(f"[sweep] trial lr {lr:g} finished earlier; its {len(lengths)} rows are kept.")
        return [rows[k] for k in sorted(lengths)]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    register_tumorseg(cfg.DATASETS.TUMORSEG_ROOT or None)
    with trial_log(out_dir):
        seed_all_rng(cfg.SEED)  # as tools/train_net.py (default_setup) does
        trainer = SweepTrainer(cfg, lengths, rows, progress)
        trainer.resume_or_load(resume=True)
        trainer.train()
        final = os.path.join(out_dir, "model_final.pth")
        if os.path.isfile(final):  # the same weights as the last length's checkpoint
            trainer.checkpointer.tag_last_checkpoint(checkpoint_name(max(lengths)) + ".pth")
            os.remove(final)
    return [rows[k] for k in sorted(lengths)]


def _duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# ---------------------------------------------------------------- running the trials
def run_trials_sequential(cfg, trials, dirs):
    """One trial after another, with the sweep's remaining time in the progress lines."""
    results = []
    for i, ((lr, lengths), out_dir) in enumerate(zip(trials, dirs)):
        later = list(zip(trials[i + 1:], dirs[i + 1:]))
        todo = [(ls, read_rows(d)) for (_, ls), d in later]
        progress = {"index": i + 1, "trials": len(trials),
                    "iters_after": sum(max(ls) - max(rows, default=0) for ls, rows in todo),
                    "evals_after": sum(k not in rows for ls, rows in todo for k in ls)}
        os.makedirs(out_dir, exist_ok=True)  # named below: it exists when the line is read
        logger.info(f"[sweep] trial {i + 1}/{len(trials)}: lr {lr:g}, lengths "
                    f"{', '.join(map(str, lengths))} -> {out_dir}")
        results += run_trial(cfg, lr, lengths, out_dir, progress)
    return results


def run_trials_ray(cfg, trials, dirs, output, address=None, resources=None):
    """Each trial as a Ray Tune trial on the cluster at ``address`` (None: a local Ray)."""
    try:
        import ray
        from ray import tune
    except ImportError as e:
        raise RuntimeError("--backend ray needs Ray Tune: pip install -e '.[ray]' (or "
                           "pip install 'ray[tune]'), or leave --backend at 'sequential'.") from e
    if not ray.is_initialized():
        ray.init(address=address, runtime_env={"env_vars": {
            k: v for k, v in os.environ.items() if k in ("DETECTRON2_DATASETS", "TUMORSEG_OFFLINE")
        }})
    cfg_yaml = cfg.dump()

    def trainable(config):
        lr, lengths, out_dir = config["trial"]
        rows = run_trial(cfg_yaml, lr, lengths, out_dir)
        tune.report({k: v for k, v in rows[-1].items() if isinstance(v, (int, float))})

    grid = [(lr, lengths, os.path.abspath(d)) for (lr, lengths), d in zip(trials, dirs)]
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources or {"cpu": 1}),
        param_space={"trial": tune.grid_search(grid)},
        run_config=tune.RunConfig(name="tune", storage_path=os.path.abspath(
            os.path.join(output, "ray")), verbose=1),
    )
    failed = [r for r in tuner.fit() if r.error]
    if failed:
        raise RuntimeError(f"{len(failed)} Ray trial(s) failed; the first error: {failed[0].error}"
                           " (trial logs: <output>/trials/*/log.txt). Rerun to resume.")
    return [row for (_, lengths), d in zip(trials, dirs) for row in
            sorted(read_rows(d).values(), key=lambda r: r["iters"]) if row["iters"] in lengths]


# ---------------------------------------------------------------- choosing and reporting
def valid_metrics(cfg):
    """Every figure a validation row records (and --metric may name): COCO AP per task, overall and
    per class; Dice, IoU and sensitivity (overlap/*, with masks); the validation loss and each of
    its parts, named after the model's training losses."""
    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    classes = MetadataCatalog.get(cfg.DATASETS.VAL[0]).get("thing_classes", [])
    names = list(METRICS) + [f"{m}-{c}" for m in METRICS for c in classes]
    overlap = [f"overlap/{k}" for k in OVERLAP_FIGURES] if cfg.MODEL.MASK_ON else []
    if cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN":
        losses = ["loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"] \
            + (["loss_mask"] if cfg.MODEL.MASK_ON else [])
    else:  # the pixel baselines: one loss per term of MODEL.PIXEL_SEG.LOSS
        losses = [f"loss_{term.lower()}" for term in cfg.MODEL.PIXEL_SEG.LOSS.split("+")]
    return [f"{t}/{n}" for t in tasks for n in names] + overlap + ["validation_loss"] \
        + [f"val_{x}" for x in losses]


def choose_best(rows, metric):
    """The row with the best finite ``metric``; ties go to the shorter training."""
    sign = 1 if metric_mode(metric) == "max" else -1
    finite = [r for r in rows if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    if not finite:
        raise RuntimeError(f"No grid point has a finite validation {metric}; see results.md.")
    return max(finite, key=lambda r: (sign * r[metric], -r["iters"]))


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
    with open(os.path.join(output, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
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
        for label, s in series.items():
            points = s.get(key, [])
            if points:
                ax.plot(*zip(*points), label=label, marker="o" if len(points) < 15 else None, ms=3)
        ax.set(title=f"{key} (training)", xlabel="training iterations", yscale="log")
        ax.grid(alpha=0.3)
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
        for lr in sorted({r["lr"] for r in rows}, reverse=True):
            pts = sorted((r["iters"], r.get(key, math.nan)) for r in rows if r["lr"] == lr)
            ax.plot(*zip(*pts), marker="o", label=f"lr {lr:g}")
        if key == metric:
            ax.plot([best["iters"]], [best[metric]], "k*", ms=14, label="chosen")
        ax.set(title=f"validation {key}" + (" (chosen by)" if key == metric else ""),
               xlabel="training iterations")
        ax.grid(alpha=0.3)
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
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = weights
    cfg.freeze()
    model = Trainer.build_model(cfg)
    SafeCheckpointer(model, same_classes=True).load(weights)
    metrics = evaluate_split(cfg, model, dataset, out)
    metrics["weights"] = weights
    save_results(metrics, done)
    return metrics


def test_split_table(metrics):
    rows = [[task] + [fmt_value(res.get(m), True) for m in METRICS]
            for task, res in metrics["coco"].items()]
    summary = metrics["clinical"]["all classes"]
    clinical_keys = ("dice_mean_per_image", "iou_mean_per_image", "sensitivity", "precision")
    return (markdown_table(["task"] + list(METRICS), rows) + "\n\n"
            + markdown_table(list(clinical_keys), [[fmt_value(summary[k]) for k in clinical_keys]])
            + f"\n\n(score threshold {metrics['score_threshold']}; full report: test/report.md)")


# ---------------------------------------------------------------- the sweep
def remember_sweep(cfg, output):
    """sweep.json holds the sweep's config; a rerun in the same folder must use the same one."""
    path = os.path.join(output, "sweep.json")
    current = _comparable(cfg)
    if os.path.isfile(path):
        previous = json.load(open(path))["config"]
        changed = sorted(k for k in set(previous) | set(current)
                         if previous.get(k) != current.get(k))
        if changed:
            detail = "; ".join(f"{k}: {previous.get(k)!r} -> {current.get(k)!r}"
                               for k in changed[:5])
            raise ValueError(
                f"{output} holds a sweep with another config ({detail}). Resuming it would mix "
                "two experiments: rerun with the same config, use another --output, or delete "
                f"{output} to start over.")
    with open(path, "w") as f:
        json.dump({"config": current}, f, indent=1)


def _comparable(cfg):
    """The config flattened, without what varies per trial or does not change results."""
    flat = flatten(cfg)
    for key in ("OUTPUT_DIR", "SOLVER.BASE_LR", "SOLVER.MAX_ITER", "MODEL.DEVICE",
                "DATALOADER.NUM_WORKERS", "DATASETS.TUMORSEG_ROOT"):
        flat.pop(key, None)
    return json.loads(json.dumps(flat))  # as stored: tuples become lists, at any depth


def run_sweep(cfg, lrs=DEFAULT_LRS, lengths=DEFAULT_ITERS, output="output/sweep",
              metric="segm/AP", backend="sequential", ray_address=None, resources=None):
    """Train and validate the grid, choose on validation, evaluate the choice on test; returns
    best.json's content."""
    if not cfg.DATASETS.VAL:
        raise ValueError("The sweep chooses on DATASETS.VAL, which is empty: set DATASETS.VAL "
                         "('tumorseg_valid',).")
    if metric not in valid_metrics(cfg):
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
    save_results(summary, os.path.join(output, "best.json"))
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


# ---------------------------------------------------------------- command line
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Grid search over training length and learning rate: one training per "
        "learning rate with a checkpoint at every length, chosen on validation, the choice "
        "evaluated on test. Rerun the same command to resume.")
    p.add_argument("--config-file", required=True)
    p.add_argument("--iters", type=int, nargs="+", default=list(DEFAULT_ITERS),
                   help="training lengths (default: %(default)s)")
    p.add_argument("--lrs", type=float, nargs="+", default=list(DEFAULT_LRS),
                   help="learning rates, SOLVER.BASE_LR (default: %(default)s)")
    p.add_argument("--metric", default="segm/AP",
                   help="validation figure that chooses (default: %(default)s; losses are "
                   "minimised, the rest maximised)")
    p.add_argument("--output", default="output/sweep")
    p.add_argument("--backend", choices=("sequential", "ray"), default="sequential",
                   help="'ray': trials as Ray Tune trials (pip install -e '.[ray]')")
    p.add_argument("--ray-address", help="an existing Ray cluster, e.g. 'auto' (default: a local "
                   "Ray); <output> must be on storage every node sees")
    p.add_argument("--cpus-per-trial", type=float, default=1)
    p.add_argument("--gpus-per-trial", type=float, default=0)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def sweep_seed(output, configured):
    """The seed fixes data order and initialisation, which sharing checkpoints relies on: the
    config's SEED (file or override) if set, else the one this sweep folder used before, else a
    new random one."""
    if configured >= 0:
        return configured
    path = os.path.join(output, "sweep.json")
    if os.path.isfile(path):
        return json.load(open(path))["config"]["SEED"]
    return int.from_bytes(os.urandom(2), "little")


def main(argv=None):
    from .engine.run import setup  # sets up logging in the sweep folder

    args = parse_args(argv)
    if any(k <= 0 for k in args.iters) or any(lr <= 0 for lr in args.lrs):
        raise SystemExit("--iters and --lrs take positive values.")
    configured = merge_config(get_tumorseg_cfg(), args.config_file, args.opts).SEED
    opts = list(args.opts) + ["SEED", str(sweep_seed(args.output, configured)),
                              "OUTPUT_DIR", args.output]
    cfg = setup(argparse.Namespace(config_file=args.config_file, opts=opts, eval_only=False,
                                   resume=True))
    resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    best = run_sweep(cfg, args.lrs, args.iters, args.output, args.metric, args.backend,
                     args.ray_address, resources)
    print(f"\n[sweep] chosen on {best['validated_on']} by {best['metric']}: lr {best['lr']:g}, "
          f"{best['iters']} iterations ({best['metric']} {best['value']:.4g})")
    if best["test"]:
        coco = best["test"]["coco"]
        print(f"[sweep] test split {best['test']['dataset']}, chosen point: " + ", ".join(
            f"{task} AP {res['AP']:.1f} AP50 {res['AP50']:.1f}" for task, res in coco.items()))
    print(f"[sweep] training iterations: {best['training_iterations']:,} for "
          f"{len(args.lrs) * len(set(args.iters))} grid points (separate runs would need "
          f"{best['separate_runs_iterations']:,})")
    written = [name for name in ("results.csv", "best.json", "validation.png", "test/report.md")
               if os.path.isfile(os.path.join(args.output, name))]
    print(f"[sweep] results: {os.path.join(args.output, 'results.md')} (and "
          f"{', '.join(written)} in {args.output})")
    return best
