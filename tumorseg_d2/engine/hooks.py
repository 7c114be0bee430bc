"""Training hooks: validation loss and early stopping."""
import logging
import math

import torch
from detectron2.data import DatasetMapper, build_detection_test_loader
from detectron2.data import transforms as T
from detectron2.engine import HookBase
from detectron2.utils import comm

logger = logging.getLogger(__name__)


class ValidationLoss(HookBase):
    """Every ``period`` iterations (and at the end), the mean of each training loss on a split.

    Losses need the model in training mode; batch-norm layers are switched to eval mode meanwhile so
    that validation images never update their running statistics. Images are resized as at test
    time, without random flips. Logged as ``val_<loss>`` and ``validation_loss`` (their sum).
    """

    def __init__(self, cfg, dataset_name, period):
        self._period = period
        mapper = DatasetMapper(
            cfg, is_train=True,
            augmentations=[T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)],
        )
        self._loader = build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @torch.no_grad()
    def _compute(self):
        model = self.trainer.model
        was_training = model.training
        model.train()
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in norms:
            m.eval()
        totals, count = {}, 0
        try:
            for inputs in self._loader:
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

    def _do(self):
        means = self._compute()
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
