"""Benchmark tumorseg-d2 side by side with plain Detectron2; writes benchmark.json and benchmark.md.

  tumorseg benchmark --output output/benchmarks --sections limit,infer --repeats 3
  tumorseg benchmark --config-file configs/mask_rcnn_R_18_FPN_scratch_cpu_60min.yaml --images 16

MODEL.WEIGHTS defaults to the config's trained model (OUTPUT_DIR/model_best.pth, else
model_final.pth); without one the model is randomly initialized and the AP columns mean nothing.
"""
import logging
import os
import sys

from detectron2.utils.logger import setup_logger

from ..benchmark.speed import first_images, run_benchmarks, save_results
from ..config import config_path, get_tumorseg_cfg, merge_config, validate_config
from ..data import register_datasets
from ..engine.run import final_weights, use_cpu_without_gpu
from ..evaluation.pipeline import dataset_for
from ..files import refuse_output_in_training_run
from .common import add_overrides, command_parser

SECTIONS = ("limit", "train", "profile", "load", "infer", "eval", "stages")
DEFAULT_CONFIG = "mask_rcnn_R_18_FPN_scratch_cpu_60min.yaml"


def parse_args(argv=None):
    p = command_parser("benchmark", __doc__)
    p.add_argument("--config-file", help="default: the CPU recipe's, " + DEFAULT_CONFIG)
    p.add_argument("--output", default="output/benchmarks")
    p.add_argument("--split", default="test", help="the split inference and evaluation run on")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)} (limit always runs)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per inference/eval figure")
    p.add_argument("--images", type=int, help="only the split's first N images (a quick look)")
    p.add_argument("--train-iters", type=int, default=20, help="timed iterations per round")
    p.add_argument("--train-rounds", type=int, default=2)
    p.add_argument("--profile-iters", type=int, default=10,
                   help="profile: iterations of training under torch.profiler, after the warm-up")
    add_overrides(p)
    args = p.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"--sections: unknown {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="tumorseg_d2")
    setup_logger(name="detectron2")
    logging.getLogger("detectron2").setLevel(logging.WARNING)
    cfg = merge_config(get_tumorseg_cfg(), args.config_file or config_path(DEFAULT_CONFIG), args.opts)
    validate_config(cfg)
    use_cpu_without_gpu(cfg)
    if not cfg.MODEL.WEIGHTS:
        cfg.MODEL.WEIGHTS = final_weights(cfg.OUTPUT_DIR) or ""
    cfg.freeze()
    register_datasets(cfg)
    name = dataset_for(cfg, args.split)  # the one-class split for a class-agnostic config
    if args.images:
        name = first_images(name, args.images)
    command = "tumorseg benchmark " + " ".join(sys.argv[1:] if argv is None else argv)
    refuse_output_in_training_run(args.output)
    os.makedirs(args.output, exist_ok=True)

    def save(result):  # after every section: an interrupted run keeps what it measured
        result["command"] = command
        save_results(result, args.output)

    run_benchmarks(cfg, name, args.sections.split(","), save, repeats=args.repeats,
                   train_iters=args.train_iters, train_rounds=args.train_rounds,
                   profile_iters=args.profile_iters)
    with open(os.path.join(args.output, "benchmark.md")) as f:
        print(f.read())
    print(f"Written: {args.output}/benchmark.json, {args.output}/benchmark.md")


