r"""Panels (image, truth, prediction, mask probability) for images of a split, and a contact sheet.

  tumorseg visualize --config-file configs/mask_rcnn_R_18_FPN_scratch_cpu.yaml \
      --weights output/run1/model_best.pth --split test --num 8 --sort worst --output output/panels
"""
import logging

from ..data.check import check_at_start
from ..engine.run import setup
from ..evaluation.panels import visualize_split
from ..evaluation.pipeline import dataset_for
from .common import add_overrides, command_parser


def main(argv=None):
    p = command_parser("visualize", __doc__)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--output", required=True)
    p.add_argument("--num", type=int, default=8)
    p.add_argument("--sort", choices=("worst", "best", "random"), default="worst")
    p.add_argument("--score-threshold", type=float, default=0.5)
    p.add_argument("--scale", type=float, default=1.0, help="resize the PNGs (e.g. 0.4)")
    add_overrides(p)
    args = p.parse_args(argv)
    cfg = setup(args.config_file, args.opts, weights=args.weights, check=(), output=args.output)
    name = dataset_for(cfg, args.split)
    check_at_start([name], cfg.DATASETS.CHECK, logging.getLogger("tumorseg_d2"))
    rows = visualize_split(cfg, name, args.output, args.num, args.sort,
                           args.score_threshold, scale=args.scale)
    print(f"{len(rows)} panels ({args.sort} by Dice) and contact_sheet.png in {args.output}")
    return rows
