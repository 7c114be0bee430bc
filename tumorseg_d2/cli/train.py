"""Train Mask R-CNN (or a pixel baseline) from a config, then evaluate on the test split; or evaluate a checkpoint.

  tumorseg train --config-file configs/mask_rcnn_R_18_FPN_scratch_cpu.yaml OUTPUT_DIR output/run1
  tumorseg train --config-file configs/mask_rcnn_R_18_FPN_scratch_cpu.yaml --resume OUTPUT_DIR output/run1
  tumorseg train --config-file ... --eval-only MODEL.WEIGHTS output/run1/model_best.pth
  tumorseg train --config-file ... --num-gpus 0 --num-processes 2    (CPU processes, gloo)
  tumorseg train --config-file ... --num-gpus 8 [--num-machines M --machine-rank R --dist-url URL]
"""
from detectron2.engine import default_argument_parser

from ..engine.launch import launch
from ..engine.run import setup, train_and_test


def parse_args(argv=None):
    summary, _, example = __doc__.partition("\n")
    parser = default_argument_parser(epilog=f"example:{example.rstrip()}")
    parser.prog, parser.description = "tumorseg train", summary
    parser.add_argument("--num-processes", type=int, default=0,
                        help="CPU processes per machine (gloo backend), instead of one per GPU; "
                             "use with --num-gpus 0")
    args = parser.parse_args(argv)
    if args.num_processes > 0 and args.num_gpus > 1:
        parser.error("--num-processes runs CPU processes; --num-gpus N runs one per GPU: "
                     "give one of them (--num-gpus 0 --num-processes N for the CPU).")
    return args


def run(args):
    """One process's work (launch starts one per GPU or CPU process)."""
    cfg = setup(args.config_file, args.opts, training=not args.eval_only, args=args)
    return train_and_test(cfg, eval_only=args.eval_only, resume=args.resume)


def main(argv=None):
    args = parse_args(argv)
    print("Command Line Args:", args)
    return launch(run, args.num_gpus, num_processes=args.num_processes,
                  num_machines=args.num_machines, machine_rank=args.machine_rank,
                  dist_url=args.dist_url, args=(args,))
