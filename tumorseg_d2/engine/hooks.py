"""Training hooks: validation loss and early stopping; evaluation that leaves training untouched."""
import logging
import math

import torch
from detectron2.data import DatasetMapper, build_detection_test_loader
from detectron2.data import transforms as T
from detectron2.engine import HookBase
from detectron2.utils import comm

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

    Runs after the hook that computes the metric (EvalHook), at the same period.
    """

    def __init__(self, period, metric, patience, mode="max"):
        self._period, self._metric, self._patience = period, metric, patience
        self._better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
        self.best, self.bad_evals = None, 0

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
