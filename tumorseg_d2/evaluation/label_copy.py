"""A stand-in model that copies labels: each slice that leaks gets the labels of its most similar
slice in the reference datasets.

On the leaking slices its figures say how well the labels of a near-identical slice (a
neighbouring slice of the same patient, or the same slice exported twice) predict a slice's own
labels: what a model that had memorised the training labels would score there. Where the labels
of near-identical slices disagree (:func:`tumorseg_d2.data.check.label_agreement`), that is below
100, in the units a model is scored in. It is no bound: a model that places its box between two
disagreeing labels can match both, and so score above the copy.

Definitions: a slice leaks as in :mod:`tumorseg_d2.data.leakage` (its patient, or its
pseudo-patient of chained near duplicates, has a slice in a reference dataset). Its copy is the
reference slice of that patient or pseudo-patient whose difference hash is most similar to its
own; the copied boxes and masks are scaled to the slice's size, each scored with that
similarity. Slices that do not leak get no detections.
"""
import cv2
import numpy as np
from detectron2.data import DatasetCatalog

from ..data.leakage import fingerprints, leakage, readable_references
from .ground_truth import truth_record


def label_copy_predictions(dataset_name, references):
    """(prediction records of every slice of ``dataset_name``, {image id: the file it copies})."""
    records = DatasetCatalog.get(dataset_name)
    leaks = leakage(dataset_name, references)
    if leaks.leak_free is None:
        raise ValueError(f"Copying labels needs reference datasets to copy from (the datasets "
                         f"that trained the model: DATASETS.TRAIN, DATASETS.VAL); {dataset_name} "
                         "was given none that can be read.")
    _, reference_records = readable_references(leaks.references)
    hashes = fingerprints([r["file_name"] for r in records + reference_records])
    own, theirs = hashes[:len(records)], hashes[len(records):]
    leaking = set(leaks.units) - set(leaks.leak_free)
    by_unit = {}  # patient or pseudo-patient -> its readable reference slices
    for k, unit in enumerate(leaks.reference_units):
        if theirs[k] is not None:
            by_unit.setdefault(unit, []).append(k)
    preds, sources = [], {}
    for record, fingerprint in zip(records, own):
        candidates = by_unit.get(leaks.units[record["image_id"]], [])
        if record["image_id"] not in leaking or fingerprint is None or not candidates:
            preds.append(copied_record(record, None, 0.0))
            continue
        similarity = [float(np.mean(fingerprint == theirs[k])) for k in candidates]
        best = candidates[int(np.argmax(similarity))]
        preds.append(copied_record(record, reference_records[best], max(similarity)))
        sources[record["image_id"]] = reference_records[best]["file_name"]
    return preds, sources


def copied_record(record, source, score):
    """``source``'s labels as a prediction record of ``record`` (boxes and masks scaled to its
    size, all scored ``score``); no detections without a source."""
    h, w = record["height"], record["width"]
    copied = {"image_id": record["image_id"], "height": h, "width": w, "boxes": np.zeros((0, 4)),
              "scores": np.zeros(0), "classes": np.zeros(0, int),
              "masks": np.zeros((0, h, w), bool)}
    if source is None:
        return copied
    labels = truth_record(source)
    sx, sy = w / source["width"], h / source["height"]
    masks = [cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
             for m in labels["masks"]]
    copied.update(boxes=labels["boxes"] * [sx, sy, sx, sy], classes=labels["classes"],
                  scores=np.full(len(labels["classes"]), score))
    if masks:
        copied["masks"] = np.stack(masks)
    return copied
