r"""Grouped k-fold cross-validation of a config on its DATASETS.SOURCE: train and test every fold (each patient tested once), one table with every figure per fold and mean +/- sd.

  tumorseg crossval --config-file configs/lgg/unet_lgg_cpu.yaml --output output/lgg/crossval_unet

Rerun the same command to resume (finished folds are kept). KEY VALUE overrides (last on the
line) apply to every fold; DATASETS.SOURCE.FOLDS sets the number of folds.
"""
import logging
import os

from detectron2.utils.logger import setup_logger

from ..config import get_tumorseg_cfg, merge_config
from ..evaluation.crossval import run_crossval
from ..files import refuse_output_in_training_run
from .common import add_overrides, command_parser

logger = logging.getLogger("tumorseg_d2")


def parse_args(argv=None):
    p = command_parser("crossval", __doc__)
    p.add_argument("--config-file", required=True)
    p.add_argument("--output", default="output/crossval")
    p.add_argument("--score-threshold", type=float, default=0.5)
    add_overrides(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = merge_config(get_tumorseg_cfg(), args.config_file, args.opts)
    source = cfg.DATASETS.SOURCE
    if not source.NAME or source.FOLDS < 2:
        raise SystemExit(f"{args.config_file} has no DATASETS.SOURCE with folds (NAME "
                         f"{source.NAME!r}, FOLDS {source.FOLDS}): cross-validation splits a "
                         "dataset registered from the config by patient; see README 'Your own "
                         "data'.")
    refuse_output_in_training_run(args.output)
    os.makedirs(args.output, exist_ok=True)
    setup_logger(args.output, name="tumorseg_d2")
    rows, summary = run_crossval(args.config_file, source.NAME, source.FOLDS, args.output,
                                 args.opts, args.score_threshold)
    print(open(os.path.join(args.output, "crossval.md")).read())
    print(f"Table: {os.path.join(args.output, 'crossval.md')} (and .csv, .json); figure: "
          f"{os.path.join(args.output, 'crossval.png')}")
    return rows, summary
