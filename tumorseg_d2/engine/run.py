"""What tools/train_net.py runs: config set-up, training, and evaluation on the test split."""
import json
import logging
import os
import tempfile
import time

import torch
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import SafeCheckpointer, resolve_weights
from ..config import get_tumorseg_cfg, merge_config, validate_config
from ..data import register_tumorseg
from ..data.check import check_at_start
from ..files import lock_folder
from .trainer import Trainer, check_num_classes

logger = logging.getLogger("tumorseg_d2")


def setup(args, check=None):
    """Config from --config-file and KEY VALUE overrides; datasets registered and checked (``check``:
    the names to check; default: those the run reads); logging set up."""
    cfg = merge_config(get_tumorseg_cfg(), args.config_file, args.opts)
    validate_config(cfg)
    no_gpu = use_cpu_without_gpu(cfg)
    cfg.freeze()
    register_tumorseg(cfg.DATASETS.TUMORSEG_ROOT or None)
    check_num_classes(cfg)
    check_output_dir(cfg.OUTPUT_DIR)
    # One training per folder: a second would mix checkpoints and report the other's model.
    stale = lock_folder(cfg.OUTPUT_DIR) if not args.eval_only and comm.is_main_process() else None
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="tumorseg_d2")
    if stale:
        logger.info(f"Took over the lock of an earlier run that has ended ({stale}).")
    if no_gpu:
        logger.warning("No CUDA device: running on the CPU (MODEL.DEVICE cpu).")
    if check is None:
        check = cfg.DATASETS.TEST if args.eval_only else \
            cfg.DATASETS.TRAIN + cfg.DATASETS.VAL + cfg.DATASETS.TEST
    check_at_start(check, cfg.DATASETS.CHECK, logger)
    return cfg


def use_cpu_without_gpu(cfg):
    """Set MODEL.DEVICE cpu when it names CUDA and there is no GPU; True when it did."""
    no_gpu = cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available()
    if no_gpu:
        cfg.MODEL.DEVICE = "cpu"
    return no_gpu


def check_output_dir(path):
    """Fail at start-up, not at the first save, when OUTPUT_DIR cannot be written."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path) as probe:
            probe.write(b"tumorseg-d2")
            probe.flush()
    except OSError as e:
        raise OSError(f"OUTPUT_DIR {path} cannot be written ({type(e).__name__}: {e}). Set "
                      "OUTPUT_DIR to a folder you can write, e.g. OUTPUT_DIR output/run1.") from e


def final_weights(output_dir):
    """The checkpoint to report: the best on validation if one was kept, else the last."""
    for name in ("model_best.pth", "model_final.pth"):
        path = os.path.join(output_dir, name)
        if os.path.isfile(path):
            return path
    return SafeCheckpointer(None, save_dir=output_dir).get_checkpoint_file()


def write_training_summary(cfg, trainer, seconds):
    """OUTPUT_DIR/training_summary.json: wall seconds of training (summed over the sessions of a
    resumed run), iterations, images per second and trainable parameters; tools/compare.py reads
    it."""
    path = os.path.join(cfg.OUTPUT_DIR, "training_summary.json")
    if trainer.start_iter > 0 and os.path.isfile(path):
        with open(path) as f:
            seconds += json.load(f)["seconds"]
    # Trainer.train leaves iter at MAX_ITER when the run completes, at the last one run when a hook
    # (early stopping) ended it.
    iterations = trainer.iter + (1 if trainer.iter < trainer.max_iter else 0)
    summary = {
        "seconds": round(seconds, 1), "iterations": iterations,
        "images_per_second": round(iterations * cfg.SOLVER.IMS_PER_BATCH / max(seconds, 1e-9), 3),
        "parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
    }
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def main(args):
    return train_and_test(setup(args), args)


def train_and_test(cfg, args):
    """--eval-only: evaluate MODEL.WEIGHTS on DATASETS.TEST. Otherwise train, then evaluate the
    checkpoint chosen on validation on DATASETS.TEST."""
    if args.eval_only:
        if not cfg.MODEL.WEIGHTS:
            raise ValueError("--eval-only needs weights to evaluate: add MODEL.WEIGHTS <checkpoint>, "
                             "e.g. output/model_best.pth.")
        model = Trainer.build_model(cfg)
        SafeCheckpointer(model, save_dir=cfg.OUTPUT_DIR, same_classes=True).resume_or_load(
            resolve_weights(cfg.MODEL.WEIGHTS), resume=args.resume
        )
        return Trainer.test(cfg, model)

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    start = time.perf_counter()
    trainer.train()
    if comm.is_main_process():
        write_training_summary(cfg, trainer, time.perf_counter() - start)
    if not cfg.DATASETS.TEST:
        return None
    # Report on the test split with the checkpoint chosen on validation (never on test).
    weights = final_weights(cfg.OUTPUT_DIR)
    logger.info(f"Evaluating {weights} on {', '.join(cfg.DATASETS.TEST)}")
    model = trainer.model
    SafeCheckpointer(model, save_dir=cfg.OUTPUT_DIR, same_classes=True).load(weights)
    if comm.get_world_size() > 1:
        comm.synchronize()
    return Trainer.test(cfg, model)
