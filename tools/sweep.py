#!/usr/bin/env python
"""Alias of ``tumorseg sweep`` (``python tools/sweep.py --help``)."""
from tumorseg_d2.cli.sweep import main

if __name__ == "__main__":
    main()
