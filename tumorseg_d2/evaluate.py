"""What tools/evaluate.py runs: batch inference on a split, then every figure and the report."""
import argparse
import logging
import os

from detectron2.data import DatasetCatalog

from . import clinical
from .checkpoint import SafeCheckpointer, resolve_weights
from .data.check import check_at_start
from .engine.run import setup
from .engine.trainer import Trainer
from .report import evaluate_predictions, predict

logger = logging.getLogger("tumorseg_d2")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Evaluate a checkpoint on a split: COCO AP, Dice/IoU, "
                                "detection figures, plots and report.md.")
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", required=True, help="checkpoint (.pth/.pkl) or detectron2:// URL")
    p.add_argument("--split", default="test", help="train, valid, test or a registered name")
    p.add_argument("--output", help="default: <OUTPUT_DIR>/evaluation/<dataset>, or "
                   "<OUTPUT_DIR>-eval/evaluation/<dataset> when OUTPUT_DIR is a training run")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--score-threshold", type=float, default=0.5)
    group.add_argument("--threshold-from", metavar="SPLIT",
                       help="choose the threshold that maximises lesion F1 on this split "
                            "(e.g. valid), then apply it; never the evaluated split")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def dataset_for(cfg, split):
    """A split name ('test') in the naming of the config's datasets (a class-agnostic config gets
    the one-class split), or a registered name as is."""
    if split in DatasetCatalog.list():
        return split
    named = (cfg.DATASETS.TEST or cfg.DATASETS.VAL or cfg.DATASETS.TRAIN)[0]
    return named.rsplit("_", 1)[0] + "_" + split


def evaluate_split(cfg, model, dataset_name, output_dir, threshold=0.5, threshold_from=None):
    """Evaluate ``model`` on a registered split; returns the metrics dict (also in metrics.json)."""
    source = "fixed"
    if threshold_from:
        if threshold_from == dataset_name:
            raise ValueError(f"--threshold-from {threshold_from} is the evaluated split; choose the "
                             "threshold on another split (e.g. valid) so the figures stay honest.")
        val_preds = predict(cfg, model, threshold_from)
        threshold, f1s = clinical.best_threshold(val_preds, DatasetCatalog.get(threshold_from))
        source = f"chosen on {threshold_from}: best lesion F1 {f1s[threshold]:.3f}"
        logger.info(f"Score threshold {threshold} ({source})")
    preds = predict(cfg, model, dataset_name)
    return evaluate_predictions(preds, dataset_name, output_dir, threshold, source)


def main(argv=None):
    args = parse_args(argv)
    train_args = argparse.Namespace(config_file=args.config_file, eval_only=True, resume=False,
                                    opts=["MODEL.WEIGHTS", args.weights] + args.opts)
    cfg = setup(train_args, check=(), output=args.output)
    name = dataset_for(cfg, args.split)
    threshold_from = dataset_for(cfg, args.threshold_from) if args.threshold_from else None
    check_at_start([name] + ([threshold_from] if threshold_from else []), cfg.DATASETS.CHECK,
                   logger)  # the splits this command reads, not the config's DATASETS.TEST
    output = args.output or os.path.join(cfg.OUTPUT_DIR, "evaluation", name)
    model = Trainer.build_model(cfg)
    SafeCheckpointer(model, same_classes=True).load(resolve_weights(args.weights))
    metrics = evaluate_split(cfg, model, name, output, args.score_threshold, threshold_from)
    summary = metrics["clinical"]["all classes"]
    print(f"{name}: bbox AP50 {metrics['coco']['bbox']['AP50']:.2f}, segm AP50 "
          f"{metrics['coco']['segm']['AP50']:.2f}, Dice {summary['dice_mean_per_image']:.3f} "
          f"(per image), sensitivity {summary['sensitivity']:.3f} at threshold "
          f"{metrics['score_threshold']}; report: {os.path.join(output, 'report.md')}")
    return metrics
