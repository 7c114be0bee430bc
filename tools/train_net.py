#!/usr/bin/env python
"""Train Mask R-CNN on TumorSeg, then evaluate on the test split; or evaluate a checkpoint.

Detectron2's command line:
    python tools/train_net.py --config-file configs/mask_rcnn_R_50_FPN_3x_adam.yaml [--resume]
        [--eval-only] [--num-gpus N] [--num-machines M --machine-rank R --dist-url URL] [KEY VALUE ...]
and, without GPUs, N processes per machine on the CPU (gloo backend):
    python tools/train_net.py --config-file ... --num-gpus 0 --num-processes N [--dist-url auto]
"""
from detectron2.engine import default_argument_parser

from tumorseg_d2.engine.launch import launch
from tumorseg_d2.engine.run import main

if __name__ == "__main__":
    parser = default_argument_parser()
    parser.add_argument("--num-processes", type=int, default=0,
                        help="CPU processes per machine (gloo backend), instead of one per GPU; "
                             "use with --num-gpus 0")
    args = parser.parse_args()
    if args.num_processes > 0 and args.num_gpus > 1:
        parser.error("--num-processes runs CPU processes; --num-gpus N runs one per GPU: "
                     "give one of them (--num-gpus 0 --num-processes N for the CPU).")
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_processes=args.num_processes, num_machines=args.num_machines,
           machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
