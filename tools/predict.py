#!/usr/bin/env python
"""Alias of ``tumorseg predict`` (``python tools/predict.py --help``)."""
from tumorseg_d2.cli.predict import main

if __name__ == "__main__":
    main()
