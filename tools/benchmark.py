#!/usr/bin/env python
"""Benchmark tumorseg-d2 side by side with plain Detectron2; writes benchmark.json and benchmark.md.

    python tools/benchmark.py [--config-file configs/mask_rcnn_R_18_FPN_scratch_cpu_60min.yaml]
        [--output output/benchmarks] [--sections limit,train,load,infer,eval] [--repeats 3]
        [KEY VALUE ...]

MODEL.WEIGHTS defaults to the config's trained model (OUTPUT_DIR/model_best.pth, else
model_final.pth); without one the model is randomly initialized and the AP columns mean nothing.
"""
import argparse
import json
import logging
import os
import sys

from detectron2.utils.logger import setup_logger

from tumorseg_d2.benchmark import markdown, run_benchmarks
from tumorseg_d2.config import get_tumorseg_cfg, merge_config, validate_config
from tumorseg_d2.data import register_tumorseg
from tumorseg_d2.evaluate import dataset_for
from tumorseg_d2.files import refuse_output_in_training_run
from tumorseg_d2.engine.run import final_weights, use_cpu_without_gpu

SECTIONS = ("limit", "train", "load", "infer", "eval")
DEFAULT_CONFIG = "configs/mask_rcnn_R_18_FPN_scratch_cpu_60min.yaml"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config-file", default=DEFAULT_CONFIG)
    p.add_argument("--output", default="output/benchmarks")
    p.add_argument("--split", default="test", help="the split inference and evaluation run on")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)} (limit always runs)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per inference/eval figure")
    p.add_argument("--images", type=int, help="only the split's first N images (a quick look)")
    p.add_argument("--train-iters", type=int, default=20, help="timed iterations per round")
    p.add_argument("--train-rounds", type=int, default=2)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
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
    cfg = merge_config(get_tumorseg_cfg(), args.config_file, args.opts)
    validate_config(cfg)
    use_cpu_without_gpu(cfg)
    if not cfg.MODEL.WEIGHTS:
        cfg.MODEL.WEIGHTS = final_weights(cfg.OUTPUT_DIR) or ""
    cfg.freeze()
    register_tumorseg(cfg.DATASETS.TUMORSEG_ROOT or None)
    name = dataset_for(cfg, args.split)  # the one-class split for a class-agnostic config
    if args.images:
        name = first_images(name, args.images)
    command = "python tools/benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv)
    refuse_output_in_training_run(args.output)
    os.makedirs(args.output, exist_ok=True)

    def save(result):  # after every section: an interrupted run keeps what it measured
        result["command"] = command
        with open(os.path.join(args.output, "benchmark.json"), "w") as f:
            json.dump(result, f, indent=2)
        with open(os.path.join(args.output, "benchmark.md"), "w") as f:
            f.write(markdown(result) + "\n")

    run_benchmarks(cfg, name, args.sections.split(","), save, repeats=args.repeats,
                   train_iters=args.train_iters, train_rounds=args.train_rounds)
    with open(os.path.join(args.output, "benchmark.md")) as f:
        print(f.read())
    print(f"Written: {args.output}/benchmark.json, {args.output}/benchmark.md")


def first_images(name, n):
    """A split registered under a new name with only its first ``n`` images."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    subset = f"{name}_first{n}"
    if subset not in DatasetCatalog.list():
        DatasetCatalog.register(subset, lambda: DatasetCatalog.get(name)[:n])
        meta = MetadataCatalog.get(name).as_dict()
        meta.pop("name")
        meta.pop("json_file", None)  # the subset's COCO file is written from its records
        MetadataCatalog.get(subset).set(**meta)
    return subset


if __name__ == "__main__":
    main()
