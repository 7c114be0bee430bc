#!/usr/bin/env python
"""Alias of ``tumorseg compare`` (``python tools/compare.py --help``)."""
from tumorseg_d2.cli.compare import main

if __name__ == "__main__":
    main()
