"""Training hooks: validation loss, checkpoint selection and early stopping whose state survives
--resume; event writers that a resumed run does not make repeat an iteration."""
import contextlib
import json
import logging
import math
import os

import torch
from detectron2.data import DatasetMapper, build_detection_test_loader
from detectron2.data import transforms as T
from detectron2.engine import HookBase, hooks
from detectron2.utils import comm
from detectron2.utils.events import EventWriter

from ..data.loader import NamingMapper
from ..rng import preserve_rng

logger = logging.getLogger(__name__)


def validation_loader(cfg, dataset_name):
    """Training-mode inputs (with annotations) resized as at test time, without random flips."""
    mapper = DatasetMapper(
        cfg, is_train=True,
        augmentations=[T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)],
    )
    return build_detection_test_loader(cfg, dataset_name, mapper=NamingMapper(mapper))


@torch.no_grad()
def validation_losses(model, loader):
    """The mean of each training loss over a loader, as ``val_<loss>``, and their sum as
    ``validation_loss``. Batch norm is frozen meanwhile so validation images never update its
    running statistics; the random streams are left as they were."""
    was_training = model.training
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    totals, count = {}, 0
    try:
        with preserve_rng():
            for inputs in loader:
                if not inputs[0]["instances"].has("gt_boxes") or len(inputs[0]["instances"]) == 0:
                    continue  # images without tumors give no box or mask loss
                for k, v in model(inputs).items():
                    totals[k] = totals.get(k, 0.0) + float(v)
                count += 1
    finally:
        model.train(was_training)
    totals = {k: comm.all_gather(v) for k, v in totals.items()}
    count = sum(comm.all_gather(count))
    means = {f"val_{k}": sum(v) / max(count, 1) for k, v in totals.items()}
    means["validation_loss"] = sum(means.values())
    return means


class ValidationLoss(HookBase):
    """Every ``period`` iterations (and at the end), :func:`validation_losses` on a split, logged
    as ``val_<loss>`` and ``validation_loss``."""

    def __init__(self, cfg, dataset_name, period):
        self._period = period
        self._loader = validation_loader(cfg, dataset_name)

    def _do(self):
        # The weights that validation judges (the moving average with MODEL_EMA).
        with getattr(self.trainer, "validated_weights", contextlib.nullcontext)():
            means = validation_losses(self.trainer.model, self._loader)
        self.trainer.storage.put_scalars(**means, smoothing_hint=False)
        logger.info("Validation loss: " + ", ".join(f"{k}={v:.4f}" for k, v in means.items()))

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if self._period > 0 and next_iter % self._period == 0 and next_iter != self.trainer.max_iter:
            self._do()

    def after_train(self):
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self._do()


class EarlyStopping(HookBase):
    """Ask the trainer to stop when ``metric`` has not improved for ``patience`` evaluations.

    Runs after the hook that computes the metric (EvalHook), at the same period. Its best value and
    count of evaluations without improvement are saved in checkpoints, so a resumed run stops
    where an uninterrupted one would.
    """

    def __init__(self, period, metric, patience, mode="max"):
        self._period, self._metric, self._patience = period, metric, patience
        self._better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
        self.best, self.bad_evals = None, 0

    def state_dict(self):
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state):
        self.best, self.bad_evals = state["best"], state["bad_evals"]

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if next_iter % self._period or next_iter == self.trainer.max_iter:
            return
        entry = self.trainer.storage.latest().get(self._metric)
        if entry is None or entry[1] != self.trainer.iter:
            return
        value = entry[0]
        if not math.isnan(value) and (self.best is None or self._better(value, self.best)):
            self.best, self.bad_evals = value, 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self._patience:
            logger.info(f"Early stopping at iteration {next_iter}: {self._metric} has not improved "
                        f"on {self.best} for {self.bad_evals} evaluations.")
            self.trainer.request_stop()


class BestCheckpointer(hooks.BestCheckpointer):
    """Detectron2's BestCheckpointer (``model_best.pth`` by a validation metric) whose best value
    is saved in checkpoints: v0.6 keeps it in memory only, so after --resume the first validation
    overwrote ``model_best.pth`` however bad it was. The best is also updated before saving, so
    ``model_best.pth`` holds its own value when training resumes from it."""

    def state_dict(self):
        return {"best_metric": self.best_metric, "best_iter": self.best_iter}

    def load_state_dict(self, state):
        self.best_metric, self.best_iter = state["best_metric"], state["best_iter"]

    def _best_checking(self):
        entry = self.trainer.storage.latest().get(self._val_metric)
        if entry is None:
            self._logger.warning(f"Validation metric {self._val_metric} was not computed; "
                                 "model_best.pth is not updated.")
            return
        value, iteration = entry
        previous, previous_iter = self.best_metric, self.best_iter
        if previous is not None and not self._compare(value, previous):
            self._logger.info(f"{self._val_metric} {value:0.5f} is not better than "
                              f"{previous:0.5f} (iteration {previous_iter}); model_best.pth kept.")
            return
        if self._update_best(value, iteration):
            # The validation after training runs at iteration max_iter, one past the last trained;
            # a checkpoint names the last iteration done (as model_final.pth does), so that
            # --resume with a larger SOLVER.MAX_ITER continues at max_iter, skipping none.
            done = min(iteration, self.trainer.max_iter - 1)
            self._checkpointer.save(self._file_prefix, iteration=done)
            self._logger.info(f"Saved model_best.pth: {self._val_metric} {value:0.5f} at iteration "
                              f"{iteration}" + ("" if previous is None else
                                               f" (best before: {previous:0.5f})"))


class FlushBeforeCheckpoint(HookBase):
    """Write the pending metrics (metrics.json, TensorBoard) just before each periodic checkpoint,
    so that a run resumed from that checkpoint finds every iteration up to it recorded."""

    def __init__(self, writer_hook, period):
        self._writers = [w for w in writer_hook._writers if isinstance(w, DeferredWriter)]
        self._period = period

    def after_step(self):
        if self._period > 0 and (self.trainer.iter + 1) % self._period == 0:
            for w in self._writers:
                w.write()


class DeferredWriter(EventWriter):
    """An event writer made at its first write, once --resume has set the start iteration."""

    def __init__(self, make):
        self._make, self._writer = make, None

    def write(self):
        if self._writer is None:
            self._writer = self._make()
        self._writer.write()

    def close(self):
        if self._writer is not None:
            self._writer.close()


def drop_metrics_from(path, start_iter):
    """Remove the rows of ``path`` (Detectron2's metrics.json) at iterations >= ``start_iter``: a
    resumed run computes them again, and an earlier run in the folder is replaced. Returns how
    many were dropped."""
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    keep = [line for line in lines if _iteration(line) < start_iter]
    if len(keep) < len(lines) or (lines and not lines[-1].endswith("\n")):
        with open(path, "w") as f:
            f.writelines(keep)
    return len(lines) - len(keep)


def _iteration(line):
    try:
        return int(json.loads(line)["iteration"])
    except (ValueError, TypeError, KeyError):
        return math.inf  # a row cut short by a kill: dropped
