#!/usr/bin/env python
"""Evaluate a checkpoint on a split: COCO AP, Dice/IoU, detection figures, plots and report.md.

    python tools/evaluate.py --config-file CFG --weights CKPT [--split test] [--output DIR]
        [--score-threshold T | --threshold-from valid] [KEY VALUE ...]
"""
from tumorseg_d2.evaluate import main

if __name__ == "__main__":
    main()
