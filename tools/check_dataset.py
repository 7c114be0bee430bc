#!/usr/bin/env python
"""Check COCO splits for every defect; exit 1 on errors. Optionally write a corrected copy.

    python tools/check_dataset.py datasets/tumorseg [--json report.json] [--fix OUT] [--quick]
    python tools/check_dataset.py tumorseg_train tumorseg_valid tumorseg_test
"""
from tumorseg_d2.check_dataset import main

if __name__ == "__main__":
    main()
