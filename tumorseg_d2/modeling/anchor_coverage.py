"""How well the RPN's anchors fit a dataset's boxes at the training input size.

The RPN learns a box from the anchors whose IoU with it reaches the upper value of
``MODEL.RPN.IOU_THRESHOLDS`` (0.7). A box that no anchor reaches still gets its best anchor
(Detectron2's low-quality match), but then trains on that one positive, from an anchor that needs
a large correction. With one anchor size per FPN level an octave apart, a box whose side falls
between two sizes reaches at best about 0.5-0.7: on TumorSeg at 320 px, 62% of the training boxes
(README "Performance").
"""
import math

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, BoxMode, pairwise_iou


def has_rpn(cfg):
    return (cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
            and cfg.MODEL.PROPOSAL_GENERATOR.NAME == "RPN")


def training_sizes(cfg):
    """The shortest-edge sizes training resizes to: every listed size ("choice"), or the two
    ends of the range ("range")."""
    sizes = list(cfg.INPUT.MIN_SIZE_TRAIN)
    if cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "range":
        sizes = [min(sizes), max(sizes)]
    return sorted(set(sizes))


def feature_strides(cfg):
    """({feature name: stride} of the RPN's input features, the size the backbone pads its input
    to a multiple of)."""
    from detectron2.modeling import build_backbone

    backbone = build_backbone(cfg)
    shapes = backbone.output_shape()
    return ({f: shapes[f].stride for f in cfg.MODEL.RPN.IN_FEATURES},
            max(backbone.size_divisibility, 1))


def three_scales_per_level(sizes):
    """Each level's first anchor size times 2^0, 2^(1/3), 2^(2/3) (RetinaNet's octave scales):
    the suggestion when one size per level leaves boxes uncovered."""
    scaled = [[round(level[0] * 2 ** (k / 3), 2) for k in range(3)] for level in sizes]
    return [[int(x) if x == int(x) else x for x in level] for level in scaled]


def anchor_coverage(cfg, dataset_dicts):
    """Per training box and training size: the best anchor IoU and the number of positive
    anchors (Detectron2's RPN matcher, low-quality matches allowed).

    Returns {"boxes", "iou_threshold", "best_iou_median", "uncovered_fraction" (boxes whose best
    anchor IoU is below the threshold, so that they train on their best anchor alone),
    "positives_per_box_mean", "uncovered": [(file_name, [x0, y0, x1, y1] in the file's pixels)],
    "sizes", "anchor_sizes"}; "boxes" counts each box once, the fractions and means are over
    (box, training size) pairs, "uncovered" lists a box once.
    """
    strides, divisibility = feature_strides(cfg)
    generator = build_anchor_generator(cfg, [ShapeSpec(stride=s) for s in strides.values()])
    matcher = Matcher(cfg.MODEL.RPN.IOU_THRESHOLDS, cfg.MODEL.RPN.IOU_LABELS,
                      allow_low_quality_matches=True)
    threshold = cfg.MODEL.RPN.IOU_THRESHOLDS[-1]
    anchors_of = {}
    best, positives, uncovered, count = [], [], {}, 0
    for record in dataset_dicts:
        boxes = [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS)
                 for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
        if not boxes:
            continue
        count += len(boxes)
        h, w = record["height"], record["width"]
        for size in training_sizes(cfg):
            new_h, new_w = T.ResizeShortestEdge.get_output_shape(h, w, size, cfg.INPUT.MAX_SIZE_TRAIN)
            shape = tuple(math.ceil(x / divisibility) * divisibility for x in (new_h, new_w))
            if shape not in anchors_of:
                grids = [torch.zeros(1, 1, math.ceil(shape[0] / s), math.ceil(shape[1] / s))
                         for s in strides.values()]
                anchors_of[shape] = Boxes.cat(generator(grids))
            scaled = torch.tensor(boxes, dtype=torch.float32) * torch.tensor(
                [new_w / w, new_h / h, new_w / w, new_h / h])
            iou = pairwise_iou(Boxes(scaled), anchors_of[shape])
            matched, labels = matcher(iou)
            top = iou.max(dim=1).values
            for i, box in enumerate(boxes):
                best.append(float(top[i]))
                positives.append(int(((matched == i) & (labels == 1)).sum()))
                if top[i] < threshold:
                    uncovered[(record["file_name"], i)] = [round(float(v), 1) for v in box]
    best = np.array(best)
    return {
        "boxes": count, "iou_threshold": threshold,
        "best_iou_median": float(np.median(best)) if len(best) else None,
        "uncovered_fraction": float((best < threshold).mean()) if len(best) else 0.0,
        "positives_per_box_mean": float(np.mean(positives)) if positives else None,
        "uncovered": [(f, box) for (f, _), box in uncovered.items()],
        "sizes": training_sizes(cfg),
        "anchor_sizes": [list(s) for s in cfg.MODEL.ANCHOR_GENERATOR.SIZES],
    }
