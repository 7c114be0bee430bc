#!/usr/bin/env python
"""Predict on a folder, glob or files: one overlay PNG per image, optional COCO-style json.

    python tools/predict.py --config-file CFG --weights CKPT --input <folder|glob|file>... --output DIR
        [--score-threshold 0.5] [--save-json] [--batch-size 4] [KEY VALUE ...]
"""
from tumorseg_d2.predict import main

if __name__ == "__main__":
    main()
