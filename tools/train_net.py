#!/usr/bin/env python
"""Train Mask R-CNN on TumorSeg, then evaluate on the test split; or evaluate a checkpoint.

Detectron2's command line:
    python tools/train_net.py --config-file configs/mask_rcnn_R_50_FPN_3x_adam.yaml [--resume]
        [--eval-only] [--num-gpus N] [--num-machines M --machine-rank R --dist-url URL] [KEY VALUE ...]
"""
from detectron2.engine import default_argument_parser, launch

from tumorseg_d2.engine.run import main

if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
