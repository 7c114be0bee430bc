"""Evaluation: the figures and how they are computed.

- :mod:`.metrics`: one function per pixel or box metric (Dice, IoU, HD95, ...), with its definition;
- :mod:`.clinical`: lesion matching, per-slice rows and their split summaries (sensitivity, ...);
- :mod:`.coco`: COCO AP with pycocotools, the one COCOeval path;
- :mod:`.evaluators`: the trainer's Detectron2 evaluators;
- :mod:`.pipeline`: predict a split and score it (metrics.json, report.md, plots);
- :mod:`.report`, :mod:`.plots`, :mod:`.curves`, :mod:`.panels`: what people read and look at;
- :mod:`.bootstrap`: confidence intervals and paired differences (patients resampled);
- :mod:`.compare`: several trained runs (and other tools' results) side by side;
- :mod:`.ground_truth`: a model predicting the truth, the known answer for tests;
- :mod:`.label_copy`: the labels of near-identical training slices as a model's predictions.
"""
from .evaluators import OVERLAP_FIGURES, OverlapEvaluator, TumorCOCOEvaluator
from .ground_truth import GroundTruthModel
from .pipeline import dataset_for, evaluate_predictions, evaluate_results, evaluate_split, predict

__all__ = ["GroundTruthModel", "OVERLAP_FIGURES", "OverlapEvaluator", "TumorCOCOEvaluator",
           "dataset_for", "evaluate_predictions", "evaluate_results", "evaluate_split", "predict"]
