#!/usr/bin/env python
"""Training curves (losses, learning rate, validation AP and loss) of one or several runs.

    python tools/plot_metrics.py OUTPUT_DIR [OUTPUT_DIR ...] [--output curves.png]
"""
from tumorseg_d2.plot_metrics import main

if __name__ == "__main__":
    main()
