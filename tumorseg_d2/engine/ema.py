"""An exponential moving average of the model's weights (MODEL_EMA), the weights that validation
judges and that evaluation and prediction load.

Training from scratch ends with weights that still move from batch to batch; their average over
the last few hundred iterations is a smoother model at no training cost (Polyak averaging; the
EMA of YOLOX, timm and d2go). The average covers the buffers too (batch norm's running
statistics), so the averaged model evaluates as it is, without recomputing them.

Checkpoints keep the trained weights under ``model`` (what --resume continues) and the average
under ``ema``; SafeCheckpointer loads the average for evaluation and prediction."""
import contextlib
import logging

import torch
from detectron2.engine import HookBase
from torch.nn.parallel import DataParallel, DistributedDataParallel

logger = logging.getLogger(__name__)


def unwrapped(model):
    return model.module if isinstance(model, (DataParallel, DistributedDataParallel)) else model


def ema_decay(decay, updates):
    """The decay of update number ``updates`` (1, 2, ...): ``min(decay, (1 + n) / (10 + n))``,
    TensorFlow's ExponentialMovingAverage with num_updates, so that the average is not dominated by
    the random initial weights early in training."""
    return min(decay, (1 + updates) / (10 + updates))


class ModelEMA:
    """``weights``: a float copy of a model's state dict, moved towards the model's by
    ``average <- d * average + (1 - d) * current`` at each :meth:`update`, ``d`` by
    :func:`ema_decay`. Integer buffers (batch norm's batch count) are copied."""

    def __init__(self, model, decay):
        self.decay = decay
        self.reset(model)

    def reset(self, model):
        """Start the average afresh from the model's current weights."""
        self.updates = 0
        self.weights = {k: v.detach().clone().float() if v.is_floating_point() else v.clone()
                        for k, v in unwrapped(model).state_dict().items()}

    @torch.no_grad()
    def update(self, model):
        self.updates += 1
        d = ema_decay(self.decay, self.updates)
        current = unwrapped(model).state_dict()
        averaged, latest = [], []
        for k, v in self.weights.items():
            if v.is_floating_point():
                averaged.append(v)
                latest.append(current[k].detach().float())
            else:
                v.copy_(current[k])
        torch._foreach_lerp_(averaged, latest, 1.0 - d)

    @contextlib.contextmanager
    def applied_to(self, model):
        """Within the block the model holds the averaged weights; its own come back after."""
        model = unwrapped(model)
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.weights)
        try:
            yield model
        finally:
            model.load_state_dict(own)

    def state_dict(self):
        return {"model": self.weights, "decay": self.decay, "updates": self.updates}

    def load_state_dict(self, state):
        missing = set(self.weights) - set(state["model"])
        if missing:
            raise KeyError(f"The checkpoint's moving average (ema) lacks {sorted(missing)[:3]}: it "
                           "was saved for another model.")
        # Checkpoints load on the CPU; the average lives where the model does.
        self.weights = {k: state["model"][k].to(v.device, copy=True)
                        for k, v in self.weights.items()}
        self.updates = int(state["updates"])
        if state["decay"] != self.decay:
            logger.info(f"MODEL_EMA.DECAY {self.decay} from here on; the checkpoint's average was "
                        f"made with {state['decay']}.")


class EMAHook(HookBase):
    """Update the trainer's :class:`ModelEMA` after each optimizer step; placed before the hooks
    that validate, so a validation at iteration i judges the average including step i."""

    def __init__(self, ema):
        self.ema = ema

    def after_step(self):
        self.ema.update(self.trainer.model)
