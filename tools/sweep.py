#!/usr/bin/env python
"""Grid search over training length and learning rate with shared checkpoints.

    python tools/sweep.py --config-file configs/mask_rcnn_R_50_FPN_3x_adam.yaml \
        [--iters 1000 1500 2000 2500 3000] [--lrs 5e-4 1e-4 5e-5] [--metric segm/AP] \
        [--output output/sweep] [--backend sequential|ray] [KEY VALUE ...]
"""
from tumorseg_d2.sweep import main

if __name__ == "__main__":
    main()
