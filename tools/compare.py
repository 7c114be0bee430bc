#!/usr/bin/env python
"""Compare trained runs on one split: compare.md / compare.csv and compare.png.

    python tools/compare.py RUN_DIR [RUN_DIR ...] [--output DIR] [--split test]
    python tools/compare.py --train configs/baselines/*_cpu.yaml --output output/baselines
"""
from tumorseg_d2.compare import main

if __name__ == "__main__":
    main()
