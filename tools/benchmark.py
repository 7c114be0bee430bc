#!/usr/bin/env python
"""Alias of ``tumorseg benchmark`` (``python tools/benchmark.py --help``)."""
from tumorseg_d2.cli.benchmark import main

if __name__ == "__main__":
    main()
