"""Time the evaluation of a split's predictions (not the inference); writes JSON.

  tumorseg benchmark-eval --split test --repeats 3 --output output/benchmarks/eval.json
"""
import json

from ..config import config_path, get_tumorseg_cfg, merge_config
from ..benchmark.evaluation import time_evaluation
from ..data import register_tumorseg
from ..evaluation.pipeline import dataset_for
from ..files import write_json
from .common import command_parser


def main(argv=None):
    p = command_parser("benchmark-eval", __doc__)
    p.add_argument("--config-file", default=None,
                   help="the split's classes follow its datasets (one class for a class-agnostic "
                   "config such as configs/baselines/*); default: the CPU recipe's")
    p.add_argument("--split", default="test")
    p.add_argument("--root", help="dataset root (default: $DETECTRON2_DATASETS/tumorseg)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", default="output/benchmarks/eval.json")
    args = p.parse_args(argv)
    config = args.config_file or config_path("mask_rcnn_R_18_FPN_scratch_cpu_60min.yaml")
    cfg = merge_config(get_tumorseg_cfg(), config, [])
    register_tumorseg(args.root)
    result = time_evaluation(dataset_for(cfg, args.split), args.repeats)
    write_json(args.output, result, indent=2)
    print(json.dumps(result, indent=2))
    return result
