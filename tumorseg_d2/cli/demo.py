"""Train, evaluate on the test split and draw predictions: on the real TumorSeg data when found, else on a phantom.

  tumorseg demo                      (real data at $DETECTRON2_DATASETS/tumorseg or datasets/tumorseg)
  tumorseg demo --phantom --iters 20 --output /tmp/demo

The phantom is a synthetic data set written under the output folder. Sized for about 10 minutes
on 2 CPU cores.
"""
import os
import time

from ..config import config_path, derived, get_tumorseg_cfg, merge_config
from ..data.datasets import SPLITS, default_root, split_paths
from ..data.phantom import make_phantom_dataset
from ..engine.run import final_weights, setup, train_and_test
from ..evaluation.panels import visualize_split
from ..evaluation.report import format_results, summary_lines
from ..files import load_json
from .common import add_overrides, command_parser

CONFIG = "mask_rcnn_R_18_FPN_scratch_cpu_60min.yaml"
# Iterations of 8 images, 1.5-2.1 s each on 2 CPU cores at 320 px: under 12 minutes in all on the
# real data. The phantom is easy: AP50 is near 100 after 100 iterations.
ITERS = {"real": 240, "phantom": 150}


def recipe_schedule(iters):
    """Overrides that compress the CPU recipe's schedule (README, Performance) to ``iters``: the
    learning-rate cuts at the same fractions of the run, a warm-up of at most a fifth of it."""
    recipe = merge_config(get_tumorseg_cfg(), config_path(CONFIG))
    steps = tuple(max(1, round(s * iters / recipe.SOLVER.MAX_ITER)) for s in recipe.SOLVER.STEPS)
    return ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", str(steps),
            "SOLVER.WARMUP_ITERS", str(min(recipe.SOLVER.WARMUP_ITERS, iters // 5))]


def find_real_data():
    root = default_root()
    try:
        for split in SPLITS:
            split_paths(root, split)
    except FileNotFoundError:
        return None
    return root


def parse_args(argv=None):
    parser = command_parser("demo", __doc__)
    parser.add_argument("--output", default="output/demo")
    parser.add_argument("--iters", type=int, help="training iterations (default: by data set)")
    parser.add_argument("--phantom", action="store_true", help="use the phantom even if real data exists")
    parser.add_argument("--num-pictures", type=int, default=8)
    add_overrides(parser, "extra KEY VALUE config overrides")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    train_dir = os.path.join(args.output, "train")
    if os.path.isfile(os.path.join(train_dir, "last_checkpoint")):
        raise SystemExit(f"[demo] {args.output} holds an earlier demo run ({train_dir}), which a "
                         f"new one would overwrite: delete {args.output} to run the demo again, "
                         "or pass --output DIR to keep both.")
    root = None if args.phantom else find_real_data()
    if root:
        kind = "real"
        print(f"[demo] Using the real TumorSeg data at {os.path.abspath(root)}")
    else:
        kind = "phantom"
        root = os.path.join(args.output, "phantom", "tumorseg")
        if not os.path.isfile(os.path.join(root, "test", "_annotations.coco.json")):
            make_phantom_dataset(root)
        print(f"[demo] Real data not found at {os.path.abspath(default_root())}; using the synthetic "
              f"phantom data set written to {os.path.abspath(root)} (see datasets/README.md for the "
              "real data)")
    iters = args.iters or ITERS[kind]
    overrides = ["DATASETS.TUMORSEG_ROOT", root, "OUTPUT_DIR", train_dir,
                 *recipe_schedule(iters), "TEST.EVAL_PERIOD", str(max(iters // 2, 1)),
                 "SOLVER.CHECKPOINT_PERIOD", str(max(iters // 2, 1)),
                 # Validation AP still picks the best checkpoint; the loss pass would add a minute.
                 "TEST.VAL_LOSS", "False"] + args.opts
    cfg = setup(config_path(CONFIG), overrides, training=True)
    results = train_and_test(cfg)
    weights = final_weights(train_dir)
    cfg = derived(cfg, {"MODEL.WEIGHTS": weights})
    pictures_dir = os.path.join(args.output, "predictions")
    visualize_split(cfg, cfg.DATASETS.TEST[0], pictures_dir, args.num_pictures, sort="random")
    print(f"\n[demo] {kind} data, {iters} iterations, test split, weights {weights}:\n")
    print(format_results(results))
    test_name = cfg.DATASETS.TEST[0]
    report_dir = os.path.join(train_dir, "evaluation", test_name)
    print("\n".join(summary_lines(test_name, load_json(os.path.join(report_dir, "metrics.json")),
                                  report_dir)))
    print(f"\n[demo] metrics: {train_dir}/inference/{test_name}/metrics.json (COCO), "
          f"{report_dir}/metrics.json (every figure, intervals, leak-free subset)")
    print(f"[demo] pictures: {pictures_dir}/ ({args.num_pictures} panels: image, truth, "
          "prediction, mask probability; contact_sheet.png)")
    print(f"[demo] finished in {time.time() - start:.0f} s")
    return results
