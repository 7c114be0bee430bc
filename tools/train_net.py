#!/usr/bin/env python
"""Alias of ``tumorseg train`` (``python tools/train_net.py --help``)."""
from tumorseg_d2.cli.train import main

if __name__ == "__main__":
    main()
