"""tumorseg-d2: finding and outlining brain tumors in MRI slices with Detectron2.

Three layers: the library (``config``, ``checkpoint``, ``files``, ``rng``, ``predictor``,
``predictions``, ``drawing``, ``tables``, ``data/``, ``engine/``, ``modeling/``, ``sweep/``,
``benchmark/``), the evaluation (``evaluation/``) and the command line (``cli/``, the
``tumorseg`` command). Only ``cli/`` parses arguments.
"""
__version__ = "0.1.0"
