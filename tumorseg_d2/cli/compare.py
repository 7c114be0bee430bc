r"""Compare trained runs on one split: a Markdown + CSV table and a figure of the same images under each model.

  tumorseg compare output/run1 output/run2 --output output/compare
  tumorseg compare --train configs/baselines/unet_cpu.yaml configs/baselines/encoder_decoder_2level_cpu.yaml \
      --output output/baselines SOLVER.MAX_ITER 500
  tumorseg compare output/run1 --tta --output output/tta TEST.AUG.MIN_SIZES "(224, 256, 288)"

--train first trains each config into OUTPUT/<config name> (finished runs are skipped, interrupted
ones resumed); KEY VALUE overrides (last on the line) apply to every training and evaluation.
--results NAME=JSON scores another tool's COCO results for the split (named by the first run's
config) with the same evaluator, intervals and paired differences.
--tta evaluates each run again with test-time augmentation (TEST.AUG.ENABLED True) as
"<run>+TTA", and gives each augmented run's difference from its plain run, with intervals (and
each plain run's from the first).
"""
import logging
import os

from detectron2.data import DatasetCatalog
from detectron2.utils.logger import setup_logger

from ..evaluation.compare import (evaluate_results_file, evaluate_run, paired_differences,
                                  run_labels, train_runs, write_figure, write_table)
from ..files import refuse_output_in_training_run
from .common import command_parser, split_overrides

logger = logging.getLogger("tumorseg_d2")


def parse_args(argv=None):
    """As documented: ``RUN_DIR... [--train CONFIG...] [--output DIR] [KEY VALUE...]``, the
    overrides last, as for tools/train_net.py; they start at the first KEY (e.g. SOLVER.MAX_ITER)."""
    p = command_parser("compare", __doc__)
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="OUTPUT_DIRs of training runs, "
                   "then KEY VALUE config overrides for every training and evaluation")
    p.add_argument("--train", nargs="+", default=[], metavar="CONFIG",
                   help="train these configs into OUTPUT/<config name> first (skips finished runs)")
    p.add_argument("--seeds", type=int, metavar="N", help="with --train: train each config N "
                   "times (SEED 0..N-1, into <config name>_seed<k>) and report mean and spread")
    p.add_argument("--output", default="output/compare")
    p.add_argument("--split", default="test")
    p.add_argument("--score-threshold", type=float, default=0.5)
    p.add_argument("--images", type=int, default=4, help="images in compare.png")
    p.add_argument("--results", nargs="+", default=[], metavar="NAME=JSON",
                   help="another tool's COCO results for the split, compared as run NAME")
    p.add_argument("--tta", action="store_true", help="also evaluate each run with test-time "
                   "augmentation (TEST.AUG.*), and give the gain with its interval")
    p.add_argument("--opts", nargs="+", default=[],
                   help="KEY VALUE config overrides (the same as giving them last)")
    args = p.parse_intermixed_args(argv)
    args.runs, opts_after_runs = split_overrides(args.runs)
    args.train, opts_after_train = split_overrides(args.train)
    args.results, opts_after_results = split_overrides(args.results)
    args.opts = opts_after_train + opts_after_runs + opts_after_results + list(args.opts)
    for entry in args.results:
        if "=" not in entry or not entry.split("=", 1)[0]:
            p.error(f"--results takes NAME=JSON (e.g. yolo=output/yolo/results.json); got {entry}")
    if args.seeds is not None and (args.seeds < 1 or not args.train):
        p.error("--seeds N (N >= 1) trains each --train config N times; give --train CONFIG ...")
    if len(args.opts) % 2:
        p.error(f"config overrides come in KEY VALUE pairs; got {' '.join(args.opts)}")
    return args


def evaluated_entry(row, preds, name, metrics, output):
    """What the table, the paired differences and the figure need of one evaluated run."""
    return {"row": row, "dataset": name, "metrics": metrics, "output": output,
            "preds": {p["image_id"]: p for p in preds},
            "records": {r["file_name"]: r for r in DatasetCatalog.get(name)}}


def main(argv=None):
    args = parse_args(argv)
    refuse_output_in_training_run(args.output)
    os.makedirs(args.output, exist_ok=True)
    setup_logger(args.output, name="tumorseg_d2")
    setup_logger(args.output, name="detectron2", abbrev_name="d2")
    seeds = list(range(args.seeds)) if args.seeds else None
    trained = train_runs(args.train, args.output, args.opts, seeds)
    runs = list(args.runs) + trained
    if not runs:
        raise SystemExit("Nothing to compare: give run folders (OUTPUT_DIRs) or --train CONFIG ...")
    evaluated, pairs = [], []
    for run, run_label in zip(runs, run_labels(runs)):
        variants = [(run_label, [])] + ([(run_label + "+TTA", ["TEST.AUG.ENABLED", "True"])]
                                        if args.tta else [])
        for label, extra in variants:
            row, preds, name, metrics = evaluate_run(run, args.split, args.output,
                                                     args.score_threshold, args.opts + extra,
                                                     label)
            if extra:  # this run with augmentation against itself without
                pairs.append((len(evaluated), len(evaluated) - 1))
            elif args.tta and evaluated:  # this run against the first, both without
                pairs.append((len(evaluated), 0))
            evaluated.append(evaluated_entry(row, preds, name, metrics, args.output))
            logger.info(f"{row['run']}: bbox AP50 {row['bbox_AP50']:.2f}, Dice "
                        f"{row['dice']:.3f}, {row['seconds_per_image']:.3f} s per image")
    for entry in args.results:
        label, path = entry.split("=", 1)
        row, preds, name, metrics = evaluate_results_file(label, path, runs[0], args.split,
                                                          args.output, args.score_threshold,
                                                          args.opts)
        evaluated.append(evaluated_entry(row, preds, name, metrics, args.output))
    rows = [e["row"] for e in evaluated]
    if seeds and not args.tta:  # each config against the first config, seed by seed
        first = len(args.runs)
        pairs = [(first + c * len(seeds) + k, first + k)
                 for c in range(1, len(args.train)) for k in range(len(seeds))]
    table = write_table(rows, args.output, args.split, args.score_threshold,
                        paired_differences(evaluated, pairs if args.tta or seeds else None))
    write_figure(os.path.join(args.output, "compare.png"), evaluated, args.score_threshold,
                 args.images)
    print(table)
    print(f"\nTable: {os.path.join(args.output, 'compare.md')} (and .csv); figure: "
          f"{os.path.join(args.output, 'compare.png')}")
    return rows
