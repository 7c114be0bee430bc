"""Random state: saved in checkpoints, restored on resume, and kept out of evaluation's way."""
import contextlib
import random

import numpy as np
import torch


def rng_state():
    """Python, NumPy and torch (CPU, CUDA) random states, in types torch.load(weights_only) takes."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    random.setstate(_as_tuples(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(obj):
    return tuple(_as_tuples(x) for x in obj) if isinstance(obj, (list, tuple)) else obj


@contextlib.contextmanager
def preserve_rng():
    """Run a block without consuming the random streams training draws from.

    Evaluation creates data loaders (which draw a seed) and validation losses sample proposals;
    wrapped in this, evaluating during training does not change the trained weights.
    """
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
