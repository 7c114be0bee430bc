"""A stand-in model that predicts a dataset's ground truth: the known answer every evaluation
path must score perfectly."""
import numpy as np
import torch
from detectron2.data import DatasetCatalog

from ..predictions import to_instances
from ..data.datasets import truth_instances


class GroundTruthModel(torch.nn.Module):
    """A stand-in model whose predictions are a dataset's ground truth (score 1).

    Fed through the normal evaluation path (loader, inference_on_dataset, evaluator), it must score
    AP 100 on every split: anything less is a bug in loading, id mapping or evaluation.
    """

    def __init__(self, dataset_name):
        super().__init__()
        self._records = {r["image_id"]: r for r in DatasetCatalog.get(dataset_name)}

    def forward(self, batched_inputs):
        return [{"instances": to_instances(truth_record(self._records[x["image_id"]]))}
                for x in batched_inputs]


def truth_record(record):
    """A dataset record's tumors as a prediction record (score 1, masks as an array)."""
    h, w = record["height"], record["width"]
    boxes, classes, masks = truth_instances(record)
    return {"image_id": record["image_id"], "height": h, "width": w, "boxes": boxes,
            "scores": np.ones(len(classes)), "classes": classes,
            "masks": np.stack(masks) if masks else np.zeros((0, h, w), bool)}
