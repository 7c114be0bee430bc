"""The sweep's plan: the grid, which trials share checkpoints, what may choose (validation
figures) and how, and the bookkeeping that makes a rerun resume the same sweep."""
import json
import math
import os

from detectron2.data import MetadataCatalog

from ..config import flatten
from ..engine.schedule import LENGTH_INDEPENDENT
from ..evaluation.coco import METRICS
from ..evaluation.evaluators import OVERLAP_FIGURES
from ..files import write_json

DEFAULT_ITERS = (1000, 1500, 2000, 2500, 3000)
DEFAULT_LRS = (5e-4, 1e-4, 5e-5)


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


def valid_metrics(cfg):
    """Every figure a validation row records (and --metric may name): COCO AP per task, overall and
    per class; Dice, IoU and sensitivity (overlap/*, with masks); with TEST.VAL_LOSS, the
    validation loss and each of its parts, named after the model's training losses."""
    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    classes = MetadataCatalog.get(cfg.DATASETS.VAL[0]).get("thing_classes", [])
    names = list(METRICS) + [f"{m}-{c}" for m in METRICS for c in classes]
    overlap = [f"overlap/{k}" for k in OVERLAP_FIGURES] if cfg.MODEL.MASK_ON else []
    if cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN":
        losses = ["loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"] \
            + (["loss_mask"] if cfg.MODEL.MASK_ON else [])
    else:  # the pixel baselines: one loss per term of MODEL.PIXEL_SEG.LOSS
        losses = [f"loss_{term.lower()}" for term in cfg.MODEL.PIXEL_SEG.LOSS.split("+")]
    figures = [f"{t}/{n}" for t in tasks for n in names] + overlap
    if cfg.TEST.VAL_LOSS:  # TEST.VAL_LOSS False skips the loss pass over the validation split
        figures += ["validation_loss"] + [f"val_{x}" for x in losses]
    return figures


def choose_best(rows, metric):
    """The row with the best finite ``metric``; ties go to the shorter training."""
    sign = 1 if metric_mode(metric) == "max" else -1
    finite = [r for r in rows if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    if not finite:
        raise RuntimeError(f"No grid point has a finite validation {metric}; see results.md.")
    return max(finite, key=lambda r: (sign * r[metric], -r["iters"]))


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
    write_json(path, {"config": current})


def _comparable(cfg):
    """The config flattened, without what varies per trial or does not change results."""
    flat = flatten(cfg)
    for key in ("OUTPUT_DIR", "SOLVER.BASE_LR", "SOLVER.MAX_ITER", "MODEL.DEVICE",
                "DATALOADER.NUM_WORKERS", "DATASETS.TUMORSEG_ROOT", "DATASETS.SOURCE.ROOT"):
        flat.pop(key, None)
    return json.loads(json.dumps(flat))  # as stored: tuples become lists, at any depth


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
