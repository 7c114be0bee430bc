r"""Evaluate a checkpoint on a split (COCO AP, Dice/IoU, detection figures, plots, report.md) or on a volume with its mask (volumetric Dice, HD95 in mm, volume error).

  tumorseg evaluate --config-file configs/mask_rcnn_R_18_FPN_scratch_cpu.yaml \
      --weights output/run1/model_best.pth --split test --threshold-from valid
  tumorseg evaluate --config-file ... --weights ... --volume brain.nii.gz --truth brain_mask.nii.gz \
      --output output/volume_eval
  tumorseg evaluate --config-file configs/lgg/unet_lgg_cpu.yaml --results other_tool.json \
      --split test --output output/other_tool_eval

--results scores another tool's COCO results json for the split (its image and category ids)
with exactly the same figures, intervals and report. --label-copy scores the labels themselves:
each slice that leaks (a near-identical slice, or its patient, is in DATASETS.TRAIN or
DATASETS.VAL) predicted by the labels of its most similar slice there; the report's "leaking"
column is how well near-identical slices' labels agree, in AP.
"""
import logging
import os

from ..checkpoint import SafeCheckpointer, resolve_weights
from ..data.check import check_at_start
from ..data.volumes import (AXES, DEFAULT_PERCENTILES, read_truth_mask, read_volume,
                            write_mask_nifti)
from ..engine.run import setup
from ..engine.trainer import Trainer
from ..evaluation.pipeline import (dataset_for, evaluate_label_copy, evaluate_results,
                                   evaluate_split)
from ..evaluation.report import summary_lines
from ..evaluation.volumes import volume_figures
from ..files import write_json
from ..predictor import BatchPredictor, dropping_scores_below, predict_volume
from .common import add_overrides, command_parser

logger = logging.getLogger("tumorseg_d2")


def parse_args(argv=None):
    p = command_parser("evaluate", __doc__)
    p.add_argument("--config-file", required=True)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", help="checkpoint (.pth/.pkl) or detectron2:// URL")
    source.add_argument("--results", metavar="JSON", help="COCO results of the split made by "
                        "any tool, scored instead of a checkpoint's predictions")
    source.add_argument("--label-copy", action="store_true",
                        help="score, instead of a model, each leaking slice's copy of the labels "
                             "of its most similar slice in DATASETS.TRAIN and DATASETS.VAL: what "
                             "the labels of near-identical slices score against each other")
    p.add_argument("--split", default="test", help="train, valid, test or a registered name")
    p.add_argument("--output", help="default: <OUTPUT_DIR>/evaluation/<dataset>, or "
                   "<OUTPUT_DIR>-eval/evaluation/<dataset> when OUTPUT_DIR is a training run")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--score-threshold", type=float, default=0.5)
    group.add_argument("--threshold-from", metavar="SPLIT",
                       help="choose the threshold that maximises lesion F1 on this split "
                            "(e.g. valid), then apply it; never the evaluated split")
    volumes = p.add_argument_group("a volume instead of a split")
    volumes.add_argument("--volume", help="NIfTI file, DICOM file or DICOM series folder")
    volumes.add_argument("--truth", help="its ground-truth mask (NIfTI on the volume's voxel grid)")
    volumes.add_argument("--axis", choices=tuple(AXES), default="axial")
    volumes.add_argument("--volume-index", type=int, help="the volume of a 4-D NIfTI")
    volumes.add_argument("--window", choices=("auto", "dicom", "percentile"), default="auto")
    volumes.add_argument("--percentiles", type=float, nargs=2, metavar=("LOW", "HIGH"),
                         default=list(DEFAULT_PERCENTILES))
    add_overrides(p)
    args = p.parse_args(argv)
    if bool(args.volume) != bool(args.truth):
        p.error("--volume and --truth go together: the volume and its ground-truth mask.")
    if args.volume and args.threshold_from:
        p.error("--threshold-from chooses on a split; with --volume give --score-threshold.")
    if (args.results or args.label_copy) and (args.volume or args.threshold_from):
        p.error(f"{'--results' if args.results else '--label-copy'} scores a split at "
                "--score-threshold; --volume and --threshold-from need a checkpoint (--weights).")
    return args


def evaluate_volume(cfg, args, output):
    """Volumetric figures of the model on ``args.volume`` against ``args.truth``, written with the
    predicted mask into ``output``."""
    volume = read_volume(args.volume, args.axis, args.volume_index)
    truth = read_truth_mask(args.truth, volume)
    predictor = BatchPredictor(dropping_scores_below(cfg, args.score_threshold))
    _, window, _, mask, _ = predict_volume(predictor, volume, args.score_threshold, args.window,
                                           args.percentiles)
    figures = volume_figures(mask, truth, volume.spacing)
    figures.update(volume=args.volume, truth=args.truth, window=window,
                   score_threshold=args.score_threshold, spacing_mm=volume.spacing)
    os.makedirs(output, exist_ok=True)
    write_mask_nifti(volume, mask, os.path.join(output, "mask.nii.gz"))
    write_json(os.path.join(output, "volume_metrics.json"), figures)
    unit = "mm" if volume.spacing else "voxels"
    print(f"{volume.name}: volumetric Dice {figures['dice']:.3f}, HD95 {figures['hd95']:.2f} "
          f"{unit}, volume {figures['volume_predicted']:.2f} vs {figures['volume_true']:.2f} "
          f"{'ml' if volume.spacing else 'voxels'}; per slice: Dice {figures['slice_dice_mean']:.3f}"
          f", sensitivity {figures['slice_sensitivity']:.3f}; "
          f"{os.path.join(output, 'volume_metrics.json')}")
    return figures


def main(argv=None):
    args = parse_args(argv)
    cfg = setup(args.config_file, args.opts, weights=args.weights, check=(), output=args.output)
    if args.volume:
        volume_name = os.path.basename(os.path.normpath(args.volume)).split(".")[0]
        return evaluate_volume(cfg, args, args.output or
                               os.path.join(cfg.OUTPUT_DIR, "evaluation", volume_name))
    name = dataset_for(cfg, args.split)
    threshold_from = dataset_for(cfg, args.threshold_from) if args.threshold_from else None
    check_at_start([name] + ([threshold_from] if threshold_from else []), cfg.DATASETS.CHECK,
                   logger)  # the splits this command reads, not the config's DATASETS.TEST
    output = args.output or os.path.join(cfg.OUTPUT_DIR, "evaluation", name)
    if args.results:
        metrics, _ = evaluate_results(cfg, args.results, name, output, args.score_threshold)
        return print_summary(name, metrics, output)
    if args.label_copy:
        return print_summary(name, evaluate_label_copy(cfg, name, output, args.score_threshold),
                             output)
    model = Trainer.build_model(cfg)
    SafeCheckpointer(model, same_classes=True).load(resolve_weights(args.weights))
    metrics = evaluate_split(cfg, model, name, output, args.score_threshold, threshold_from)
    return print_summary(name, metrics, output)


def print_summary(name, metrics, output):
    print("\n".join(summary_lines(name, metrics, output)))
    return metrics
