"""Learning-rate schedules computed from the iteration alone."""
import bisect

import torch

# Schedules whose learning rate at an iteration does not depend on SOLVER.MAX_ITER.
LENGTH_INDEPENDENT = ("WarmupMultiStepLR",)


# _LRScheduler, not LRScheduler: Detectron2's LRScheduler hook saves the state of _LRScheduler
# subclasses only, and --resume must find the schedule where it was.
class WarmupMultiStepLR(torch.optim.lr_scheduler._LRScheduler):
    """Detectron2's WarmupMultiStepLR (warm-up, then x GAMMA at each of STEPS), in iterations.

    Detectron2 evaluates its schedule at iteration / MAX_ITER, so one iteration's rate differs in
    its last bits between runs of different lengths. Here it depends on the iteration only: the
    first k iterations of a long run are exactly a k-iteration run, which the sweep relies on.
    """

    def __init__(self, optimizer, steps, gamma, warmup_factor, warmup_iters, warmup_method,
                 last_epoch=-1):
        if warmup_method not in ("linear", "constant"):
            raise ValueError(f"SOLVER.WARMUP_METHOD is {warmup_method!r}; use 'linear' or "
                             "'constant'.")
        self.steps, self.gamma = sorted(steps), gamma
        self.warmup_factor, self.warmup_iters = warmup_factor, warmup_iters
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def factor(self, it):
        warmup = 1.0
        if it < self.warmup_iters:
            if self.warmup_method == "constant":
                warmup = self.warmup_factor
            else:
                alpha = it / self.warmup_iters
                warmup = self.warmup_factor * (1 - alpha) + alpha
        return warmup * self.gamma ** bisect.bisect_right(self.steps, it)

    def get_lr(self):
        return [base_lr * self.factor(self.last_epoch) for base_lr in self.base_lrs]


def build_lr_scheduler(cfg, optimizer):
    """WarmupMultiStepLR in iterations; other schedules (WarmupCosineLR) are Detectron2's."""
    if cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupMultiStepLR":
        s = cfg.SOLVER
        return WarmupMultiStepLR(optimizer, s.STEPS, s.GAMMA, s.WARMUP_FACTOR, s.WARMUP_ITERS,
                                 s.WARMUP_METHOD)
    from detectron2.solver import build_lr_scheduler as detectron2_scheduler

    return detectron2_scheduler(cfg, optimizer)
