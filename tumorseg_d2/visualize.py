"""Pictures for judging a model by eye: overlays, per-image panels and contact sheets.

Colors come from the dataset's metadata (one per class, saturated so they stand out on grayscale
MRI); every box carries its class name and, for predictions, its score.
"""
import math
import os
import random

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from pycocotools import mask as mask_util
from tqdm import tqdm

from . import clinical
from .predictor import BatchPredictor

BAND = 28  # height of the title band above each tile
FONT = cv2.FONT_HERSHEY_SIMPLEX


def draw_overlay(image, boxes, classes, masks, names, colors, scores=None, show_boxes=True,
                 alpha=0.45):
    """RGB ``image`` with masks blended in their class color (outlined), and optionally boxes with
    "class score%" labels. Without boxes, exactly the mask pixels change."""
    out = image.astype(np.float32).copy()
    for mask, cls in zip(masks, classes):
        color = np.array(colors[cls], np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * color
    out = out.round().astype(np.uint8)
    for mask, cls in zip(masks, classes):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in colors[cls]), 1)
    if show_boxes:
        for k, (box, cls) in enumerate(zip(boxes, classes)):
            color = tuple(int(c) for c in colors[cls])
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            cv2.rectangle(out, (x0, y0), (x1, y1), color, 2)
            label = names[cls] if scores is None else f"{names[cls]} {100 * scores[k]:.0f}%"
            (tw, th), _ = cv2.getTextSize(label, FONT, 0.5, 1)
            ty = max(y0, th + 4)
            cv2.rectangle(out, (x0, ty - th - 4), (x0 + tw + 4, ty), (0, 0, 0), -1)
            cv2.putText(out, label, (x0 + 2, ty - 3), FONT, 0.5, color, 1, cv2.LINE_AA)
    return out


def titled(tile, title):
    """``tile`` under a dark band with ``title``, shrunk to fit the tile's width."""
    band = np.zeros((BAND, tile.shape[1], 3), np.uint8)
    width = cv2.getTextSize(title, FONT, 0.55, 1)[0][0]
    size = min(0.55, 0.55 * (tile.shape[1] - 12) / max(width, 1))
    cv2.putText(band, title, (6, 19), FONT, size, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([band, tile])


def probability_tile(image, probability):
    """Per-pixel mask probability as a heat map (inferno: black 0 -> yellow 1) over the dimmed
    image, so the map can be placed on the anatomy."""
    heat = cv2.applyColorMap((np.clip(probability, 0, 1) * 255).astype(np.uint8),
                             cv2.COLORMAP_INFERNO)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(np.float32)
    return (0.35 * image + 0.65 * heat).round().astype(np.uint8)


def panel(image, record, pred, metadata, score_threshold, dice=None, scale=1.0):
    """Image | truth | prediction | mask probability, each with a title band (RGB). ``scale``
    resizes the tiles before the titles are written, so small panels stay legible."""
    names, colors = metadata.thing_classes, metadata.thing_colors
    t_boxes, t_classes, t_masks = clinical.truth_instances(record)
    keep = pred["scores"] >= score_threshold
    p_masks = [mask_util.decode(r).astype(bool) for r, k in zip(pred["masks"], keep) if k]
    name = os.path.basename(record["file_name"])
    tiles = {
        name[:40]: image,
        f"truth ({len(t_boxes)})": draw_overlay(image, t_boxes, t_classes, t_masks, names, colors),
        f"prediction >= {score_threshold:.2f} ({int(keep.sum())})"
        + ("" if dice is None else f"  Dice {dice:.2f}"):
            draw_overlay(image, pred["boxes"][keep], pred["classes"][keep], p_masks, names, colors,
                         scores=pred["scores"][keep]),
        "mask probability (all detections)": probability_tile(image, pred["probability"]),
    }
    if scale != 1.0:
        tiles = {t: cv2.resize(v, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                 for t, v in tiles.items()}
    return np.hstack([titled(v, t) for t, v in tiles.items()])


def contact_sheet(panels, columns=2, tile_width=960):
    """Panels scaled to ``tile_width`` and laid out in a grid, left to right, top to bottom."""
    scaled = [cv2.resize(p, (tile_width, round(p.shape[0] * tile_width / p.shape[1])),
                         interpolation=cv2.INTER_AREA) for p in panels]
    h = max(p.shape[0] for p in scaled)
    rows = math.ceil(len(scaled) / columns)
    sheet = np.zeros((rows * h, columns * tile_width, 3), np.uint8)
    for k, p in enumerate(scaled):
        r, c = divmod(k, columns)
        sheet[r * h:r * h + p.shape[0], c * tile_width:(c + 1) * tile_width] = p
    return sheet


def save_rgb(path, image):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    cv2.imwrite(path, image[:, :, ::-1])


def visualize_split(cfg, dataset_name, output_dir, num=8, sort="worst", score_threshold=0.5,
                    seed=0, batch_size=4, scale=1.0):
    """Panels for ``num`` images of a split, chosen by per-image Dice (worst/best) or at random;
    writes one PNG per image and ``contact_sheet.png``; returns the rows of the chosen images."""
    if sort not in ("worst", "best", "random"):
        raise ValueError(f"sort must be worst, best or random, got {sort!r}")
    metadata = MetadataCatalog.get(dataset_name)
    records = DatasetCatalog.get(dataset_name)
    if sort == "random":
        records = random.Random(seed).sample(records, min(num, len(records)))
    predictor = BatchPredictor(cfg, batch_size=batch_size)
    preds = predictor([r["file_name"] for r in records], masks="rle", probability=True)
    rows = []
    for record, pred in zip(records, preds):
        pred["image_id"], pred["rles"] = record["image_id"], pred["masks"]
        rows.append(clinical.image_row(pred, record, score_threshold))
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["dice"], rows[i]["file_name"]),
                   reverse=(sort == "best"))
    chosen = order[:num] if sort != "random" else list(range(len(rows)))[:num]
    panels = []
    for i in tqdm(chosen, desc="drawing panels"):
        image = read_image(records[i]["file_name"], format="RGB")
        p = panel(image, records[i], preds[i], metadata, score_threshold, rows[i]["dice"], scale)
        stem = os.path.splitext(os.path.basename(records[i]["file_name"]))[0]
        save_rgb(os.path.join(output_dir, f"{len(panels):03d}_{stem}.png"), p)
        panels.append(p)
    sheet = contact_sheet(panels, tile_width=min(960, panels[0].shape[1]) if panels else 960)
    save_rgb(os.path.join(output_dir, "contact_sheet.png"), sheet)
    return [rows[i] for i in chosen]


def main(argv=None):
    import argparse
    import logging

    from .data.check import check_at_start
    from .engine.run import setup
    from .evaluate import dataset_for

    p = argparse.ArgumentParser(description="Panels (image, truth, prediction, mask probability) "
                                "for images of a split, and a contact sheet.")
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--output", required=True)
    p.add_argument("--num", type=int, default=8)
    p.add_argument("--sort", choices=("worst", "best", "random"), default="worst")
    p.add_argument("--score-threshold", type=float, default=0.5)
    p.add_argument("--scale", type=float, default=1.0, help="resize the PNGs (e.g. 0.4)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    cfg = setup(argparse.Namespace(config_file=args.config_file, eval_only=True, resume=False,
                                   opts=["MODEL.WEIGHTS", args.weights] + args.opts),
                check=(), output=args.output)
    name = dataset_for(cfg, args.split)
    check_at_start([name], cfg.DATASETS.CHECK, logging.getLogger("tumorseg_d2"))
    rows = visualize_split(cfg, name, args.output, args.num, args.sort,
                           args.score_threshold, scale=args.scale)
    print(f"{len(rows)} panels ({args.sort} by Dice) and contact_sheet.png in {args.output}")
    return rows
