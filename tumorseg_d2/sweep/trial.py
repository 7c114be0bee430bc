"""One trial of the sweep: train at one learning rate to the longest length, saving and
validating a checkpoint at every length (milestones.jsonl); resumable."""
import contextlib
import json
import logging
import math
import os
import time

from detectron2.engine import HookBase, hooks
from detectron2.utils.env import seed_all_rng
from fvcore.common.config import CfgNode

from ..checkpoint import SafeCheckpointer
from ..config import derived
from ..data import register_datasets
from ..engine.hooks import EarlyStopping, ValidationLoss, validation_loader, validation_losses
from ..engine.trainer import Trainer
from ..files import append_jsonl
from ..rng import preserve_rng
from .plan import checkpoint_name

logger = logging.getLogger("tumorseg_d2")
ROWS_FILE = "milestones.jsonl"


def trial_config(cfg, lr, lengths, out_dir):
    """The base config at this learning rate, trained to the longest length. Validation and test
    evaluation, best-checkpoint selection and early stopping are the sweep's own."""
    return derived(cfg, {"SOLVER.BASE_LR": float(lr), "SOLVER.MAX_ITER": max(lengths),
                         "OUTPUT_DIR": out_dir, "TEST.EVAL_PERIOD": 0,
                         "TEST.BEST_METRIC": "", "TEST.EARLY_STOP_PATIENCE": 0})


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
    milestones.jsonl; the validation loss only with TEST.VAL_LOSS. Also logs progress with the trial's and the sweep's remaining time."""

    def __init__(self, cfg, lengths, rows, progress):
        self.cfg, self.lengths, self.rows = cfg, sorted(lengths), rows
        self.progress = progress or {}
        self.train_seconds = 0.0
        self._val_loader = validation_loader(cfg, cfg.DATASETS.VAL[0]) \
            if cfg.TEST.VAL_LOSS else None

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
        val_cfg = derived(self.cfg, {
            "DATASETS.TEST": self.cfg.DATASETS.VAL[:1],
            "OUTPUT_DIR": os.path.join(self.cfg.OUTPUT_DIR, "validation", f"after_{k}_iters")})
        was_training = model.training
        with preserve_rng():  # evaluating must not change what is trained next
            results = Trainer.test(val_cfg, model)
            losses = validation_losses(model, self._val_loader) if self._val_loader else {}
        model.train(was_training)
        row = {"lr": self.cfg.SOLVER.BASE_LR, "iters": k}
        row.update({f"{task}/{m}": v for task, res in results.items() for m, v in res.items()})
        row.update(losses)
        row.update(train_s=round(train_seconds, 1), eval_s=round(time.perf_counter() - start, 1),
                   checkpoint=checkpoint_name(k) + ".pth")
        # Undefined figures (no tumor of that size) are null, as in metrics.json.
        row = {k_: None if isinstance(v, float) and math.isnan(v) else v for k_, v in row.items()}
        append_jsonl(os.path.join(self.cfg.OUTPUT_DIR, ROWS_FILE), row)
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
    register_datasets(cfg)
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
