#!/usr/bin/env python
"""Alias of ``tumorseg evaluate`` (``python tools/evaluate.py --help``)."""
from tumorseg_d2.cli.evaluate import main

if __name__ == "__main__":
    main()
