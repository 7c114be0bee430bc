"""Benchmarks that write JSON: :mod:`.speed` (training, data loading, inference and evaluation
beside plain Detectron2, against the machine's limit) and :mod:`.evaluation` (the evaluation of
predictions alone)."""
