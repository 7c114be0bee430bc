#!/usr/bin/env python
"""Alias of ``tumorseg plot`` (``python tools/plot_metrics.py --help``)."""
from tumorseg_d2.cli.plot import main

if __name__ == "__main__":
    main()
