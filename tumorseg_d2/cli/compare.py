r"""Compare trained runs on one split: a Markdown + CSV table and a figure of the same images under each model.

  tumorseg compare output/run1 output/run2 --output output/compare
  tumorseg compare --train configs/baselines/unet_cpu.yaml configs/baselines/encoder_decoder_2level_cpu.yaml \
      --output output/baselines SOLVER.MAX_ITER 500

--train first trains each config into OUTPUT/<config name> (finished runs are skipped, interrupted
ones resumed); KEY VALUE overrides (last on the line) apply to every training and evaluation.
"""
import logging
import os

from detectron2.data import DatasetCatalog
from detectron2.utils.logger import setup_logger

from ..evaluation.compare import evaluate_run, train_runs, write_figure, write_table
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
    p.add_argument("--output", default="output/compare")
    p.add_argument("--split", default="test")
    p.add_argument("--score-threshold", type=float, default=0.5)
    p.add_argument("--images", type=int, default=4, help="images in compare.png")
    p.add_argument("--opts", nargs="+", default=[],
                   help="KEY VALUE config overrides (the same as giving them last)")
    args = p.parse_intermixed_args(argv)
    args.runs, opts_after_runs = split_overrides(args.runs)
    args.train, opts_after_train = split_overrides(args.train)
    args.opts = opts_after_train + opts_after_runs + list(args.opts)
    if len(args.opts) % 2:
        p.error(f"config overrides come in KEY VALUE pairs; got {' '.join(args.opts)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    refuse_output_in_training_run(args.output)
    os.makedirs(args.output, exist_ok=True)
    setup_logger(args.output, name="tumorseg_d2")
    setup_logger(args.output, name="detectron2", abbrev_name="d2")
    runs = list(args.runs) + train_runs(args.train, args.output, args.opts)
    if not runs:
        raise SystemExit("Nothing to compare: give run folders (OUTPUT_DIRs) or --train CONFIG ...")
    evaluated = []
    for run in runs:
        row, preds, name = evaluate_run(run, args.split, args.output, args.score_threshold,
                                        args.opts)
        evaluated.append({"row": row, "dataset": name,
                          "preds": {p["image_id"]: p for p in preds},
                          "records": {r["file_name"]: r for r in DatasetCatalog.get(name)}})
        logger.info(f"{row['run']}: bbox AP50 {row['bbox_AP50']:.2f}, Dice {row['dice']:.3f}")
    rows = [e["row"] for e in evaluated]
    table = write_table(rows, args.output, args.split, args.score_threshold)
    write_figure(os.path.join(args.output, "compare.png"), evaluated, args.score_threshold,
                 args.images)
    print(table)
    print(f"\nTable: {os.path.join(args.output, 'compare.md')} (and .csv); figure: "
          f"{os.path.join(args.output, 'compare.png')}")
    return rows
