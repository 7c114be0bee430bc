#!/usr/bin/env python
"""Alias of ``tumorseg benchmark-eval`` (``python tools/benchmark_eval.py --help``)."""
from tumorseg_d2.cli.benchmark_eval import main

if __name__ == "__main__":
    main()
