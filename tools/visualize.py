#!/usr/bin/env python
"""Panels (image, truth, prediction, mask probability) for images of a split, and a contact sheet.

    python tools/visualize.py --config-file CFG --weights CKPT --split test --output DIR
        [--num 8] [--sort worst|best|random] [--score-threshold 0.5] [KEY VALUE ...]
"""
from tumorseg_d2.visualize import main

if __name__ == "__main__":
    main()
