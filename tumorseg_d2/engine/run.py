"""The config set-up every command shares, and training followed by evaluation on the test split
(what ``tumorseg train`` runs)."""
import argparse
import logging
import os
import tempfile

import torch
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import SafeCheckpointer, resolve_weights
from ..config import check_trainable, get_tumorseg_cfg, merge_config, validate_config
from ..data import register_datasets
from ..data.check import check_at_start
from ..files import (lock_folder, refuse_output_in_training_run, training_run_of,
                     write_json)
from ..evaluation.pipeline import evaluate_results
from ..evaluation.report import summary_lines
from ..modeling.tta import augmentation_text, augmented_model
from .trainer import Trainer, check_num_classes

logger = logging.getLogger("tumorseg_d2")


def setup(config_file, opts=(), *, training=False, resume=False, weights=None, check=None,
          output=None, args=None):
    """The config of a command, from a config file and KEY VALUE overrides (``weights``: sets
    MODEL.WEIGHTS); datasets registered and checked (``check``: the names to check; default: those
    the run reads); logging set up. ``args``: the command line, which Detectron2's default_setup
    logs (made from the values above when not given).

    Training (``training=True``) writes into OUTPUT_DIR, which must not hold another run's
    checkpoints unless it continues that run (``resume``, or ``args.resume``). Anything else writes into ``output``, a
    command's own folder, or else into OUTPUT_DIR, and never into a training run's folder: when
    OUTPUT_DIR is one (the evaluated run's own config), ``<OUTPUT_DIR>-eval`` is used instead."""
    opts = (["MODEL.WEIGHTS", weights] if weights else []) + list(opts)
    args = args or argparse.Namespace(config_file=config_file, opts=opts, eval_only=not training,
                                      resume=resume)
    cfg = merge_config(get_tumorseg_cfg(), config_file, opts)
    validate_config(cfg)
    if training:
        check_trainable(cfg)
    no_gpu = use_cpu_without_gpu(cfg)
    configured = cfg.OUTPUT_DIR
    if output is not None:
        cfg.OUTPUT_DIR = output
        refuse_output_in_training_run(output)
    elif not training:
        cfg.OUTPUT_DIR = beside_training_run(cfg.OUTPUT_DIR)
    cfg.freeze()
    register_datasets(cfg)
    check_num_classes(cfg)
    check_output_dir(cfg.OUTPUT_DIR)
    if training and not getattr(args, "resume", resume):
        refuse_new_training_over(cfg.OUTPUT_DIR)
    # One training per folder: a second would mix checkpoints and report the other's model.
    stale = lock_folder(cfg.OUTPUT_DIR) if training and comm.is_main_process() else None
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="tumorseg_d2")
    if stale:
        logger.info(f"Took over the lock of an earlier run that has ended ({stale}).")
    if output is None and cfg.OUTPUT_DIR != configured:
        logger.warning(f"OUTPUT_DIR {configured} holds a training run, which only its "
                       f"training writes: this evaluation writes into {cfg.OUTPUT_DIR} (set "
                       "OUTPUT_DIR to choose another folder).")
    if no_gpu:
        logger.warning("No CUDA device for this process: running on the CPU (MODEL.DEVICE cpu).")
    if check is None:
        check = cfg.DATASETS.TRAIN + cfg.DATASETS.VAL + cfg.DATASETS.TEST if training else \
            cfg.DATASETS.TEST
    check_at_start(check, cfg.DATASETS.CHECK, logger)
    return cfg


def beside_training_run(output_dir):
    """``output_dir``, or ``<output_dir>-eval`` when it is a training run's folder."""
    run = training_run_of(output_dir)
    if run is None:
        return output_dir
    if os.path.realpath(output_dir) != run:
        refuse_output_in_training_run(output_dir, "OUTPUT_DIR")
    return output_dir.rstrip("/\\") + "-eval"


def use_cpu_without_gpu(cfg):
    """Set MODEL.DEVICE cpu when it names CUDA and there is no GPU, or the processes were launched
    on the CPU (--num-processes); True when it did."""
    cpu_processes = torch.distributed.is_initialized() and \
        torch.distributed.get_backend() == "gloo"
    no_gpu = cfg.MODEL.DEVICE.startswith("cuda") and \
        (cpu_processes or not torch.cuda.is_available())
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


def refuse_new_training_over(output_dir):
    """A new training (no --resume) in a folder that holds another run's checkpoints would
    overwrite them, its config.yaml and its metrics.json: refuse before writing anything."""
    last = os.path.join(output_dir, "last_checkpoint")
    if os.path.isfile(last):
        with open(last) as f:
            checkpoint = f.read().strip()
        raise FileExistsError(
            f"OUTPUT_DIR {output_dir} already holds a training run (last checkpoint: "
            f"{checkpoint}); a new training there would overwrite its checkpoints, config.yaml "
            "and metrics.json. Continue it with --resume, set OUTPUT_DIR to another folder, or "
            "delete the folder first.")


def final_weights(output_dir):
    """The checkpoint to report: the best on validation if one was kept, else the last."""
    for name in ("model_best.pth", "model_final.pth"):
        path = os.path.join(output_dir, name)
        if os.path.isfile(path):
            return path
    return SafeCheckpointer(None, save_dir=output_dir).get_checkpoint_file()


def write_training_summary(cfg, trainer):
    """OUTPUT_DIR/training_summary.json: wall seconds of training (each iteration counted once over
    the sessions of a resumed run: the work a killed session did after its last checkpoint is not
    counted), iterations, images per second, trainable parameters and the sessions themselves;
    ``tumorseg compare`` reads it."""
    sessions = trainer.sessions()
    seconds = sum(s["seconds"] for s in sessions)
    iterations = trainer.iterations_done()
    trained = sum(s["to"] - s["from"] for s in sessions)
    summary = {
        "seconds": round(seconds, 1), "iterations": iterations,
        "images_per_second": round(trained * cfg.SOLVER.IMS_PER_BATCH / max(seconds, 1e-9), 3),
        "parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "sessions": sessions,
    }
    if trained != iterations:  # checkpoints from before sessions were recorded
        summary["note"] = (f"the sessions cover {trained} of the {iterations} iterations (the "
                           "others were trained by a version that did not record them)")
    write_json(os.path.join(cfg.OUTPUT_DIR, "training_summary.json"), summary)
    return summary


def train_and_test(cfg, eval_only=False, resume=False):
    """``eval_only``: evaluate MODEL.WEIGHTS on DATASETS.TEST. Otherwise train (``resume``: from
    OUTPUT_DIR's last checkpoint), then evaluate the checkpoint chosen on validation on
    DATASETS.TEST."""
    if eval_only:
        if not cfg.MODEL.WEIGHTS:
            raise ValueError("--eval-only needs weights to evaluate: add MODEL.WEIGHTS <checkpoint>, "
                             "e.g. output/model_best.pth.")
        model = Trainer.build_model(cfg)
        SafeCheckpointer(model, save_dir=cfg.OUTPUT_DIR, same_classes=True).resume_or_load(
            resolve_weights(cfg.MODEL.WEIGHTS), resume=resume
        )
        return test_and_report(cfg, model)

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    if comm.is_main_process():
        write_training_summary(cfg, trainer)
    if not cfg.DATASETS.TEST:
        return None
    comm.synchronize()  # the main process has written the last checkpoints
    # Report on the test split with the checkpoint chosen on validation (never on test).
    weights = final_weights(cfg.OUTPUT_DIR)
    logger.info(f"Evaluating {weights} on {', '.join(cfg.DATASETS.TEST)}")
    model = trainer.model
    SafeCheckpointer(model, save_dir=cfg.OUTPUT_DIR, same_classes=True).load(weights)
    return test_and_report(cfg, model)


def test_and_report(cfg, model):
    """Trainer.test on DATASETS.TEST (Detectron2's figures, ``inference/<split>/``), then the full
    report of ``tumorseg evaluate`` (clinical figures, intervals, leak-free subset, plots:
    ``evaluation/<split>/``) from the detections the test saved, so no second inference."""
    augmentation = augmentation_text(cfg, model)
    results = Trainer.test(cfg, augmented_model(cfg, model))
    if not (comm.is_main_process() and cfg.MODEL.MASK_ON):  # the report scores masks
        return results
    for name in cfg.DATASETS.TEST:
        detections = os.path.join(cfg.OUTPUT_DIR, "inference", name, "coco_instances_results.json")
        output = os.path.join(cfg.OUTPUT_DIR, "evaluation", name)
        metrics, _ = evaluate_results(cfg, detections, name, output,
                                      augmentation=augmentation)
        logger.info("\n".join(summary_lines(name, metrics, output)))
    return results
