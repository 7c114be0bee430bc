#!/usr/bin/env python
"""Alias of ``tumorseg demo`` (``python tools/demo.py --help``)."""
from tumorseg_d2.cli.demo import main

if __name__ == "__main__":
    main()
