r"""Evaluate a checkpoint on a split: COCO AP, Dice/IoU, detection figures, plots and report.md.

  tumorseg evaluate --config-file configs/mask_rcnn_R_18_FPN_scratch_cpu.yaml \
      --weights output/run1/model_best.pth --split test --threshold-from valid
"""
import logging
import os

from ..checkpoint import SafeCheckpointer, resolve_weights
from ..data.check import check_at_start
from ..engine.run import setup
from ..engine.trainer import Trainer
from ..evaluation.pipeline import dataset_for, evaluate_split
from .common import add_overrides, command_parser

logger = logging.getLogger("tumorseg_d2")


def parse_args(argv=None):
    p = command_parser("evaluate", __doc__)
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
    add_overrides(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = setup(args.config_file, args.opts, weights=args.weights, check=(), output=args.output)
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
