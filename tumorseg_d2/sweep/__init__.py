"""The learning-rate x training-length sweep (``tumorseg sweep``): :mod:`.plan`, :mod:`.trial`,
:mod:`.backends`, :mod:`.results`, tied together by :func:`run_sweep` (:mod:`.run`); over
several seeds by :func:`~.seeds.run_seeded_sweep`."""
from .plan import DEFAULT_ITERS, DEFAULT_LRS, choose_best, sweep_seed, valid_metrics
from .run import run_sweep
from .trial import run_trial

__all__ = ["DEFAULT_ITERS", "DEFAULT_LRS", "choose_best", "run_sweep", "run_trial", "sweep_seed",
           "valid_metrics"]
