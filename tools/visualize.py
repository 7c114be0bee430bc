#!/usr/bin/env python
"""Alias of ``tumorseg visualize`` (``python tools/visualize.py --help``)."""
from tumorseg_d2.cli.visualize import main

if __name__ == "__main__":
    main()
