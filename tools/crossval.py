#!/usr/bin/env python
"""Alias of ``tumorseg crossval`` (``python tools/crossval.py --help``)."""
from tumorseg_d2.cli.crossval import main

if __name__ == "__main__":
    main()
