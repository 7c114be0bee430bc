#!/usr/bin/env python
"""Train, evaluate on the test split and draw predictions (real data if found, else a phantom).

    python tools/demo.py [--output output/demo] [--iters N] [--phantom] [KEY VALUE ...]
"""
from tumorseg_d2.demo import run

if __name__ == "__main__":
    run()
