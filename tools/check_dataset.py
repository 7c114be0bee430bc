#!/usr/bin/env python
"""Alias of ``tumorseg check`` (``python tools/check_dataset.py --help``)."""
from tumorseg_d2.cli.check import main

if __name__ == "__main__":
    main()
