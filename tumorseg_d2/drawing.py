"""Drawing: overlays of masks and boxes, titled tiles, per-image panels and contact sheets.

Colors come from the dataset's metadata (one per class, saturated so they stand out on grayscale
MRI); every box carries its class name and, for predictions, its score.
"""
import math
import os

import cv2
import numpy as np

from .data.datasets import CLASS_COLORS, truth_instances
from .predictions import above, mask_arrays

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


def draw_prediction(image, pred, metadata, threshold):
    """RGB ``image`` with a prediction record's detections scoring >= ``threshold``, labelled
    "class score%" in the dataset's class colors."""
    kept = above(pred, threshold)
    return draw_overlay(image, kept["boxes"], kept["classes"], mask_arrays(kept),
                        metadata.thing_classes, metadata.thing_colors, scores=kept["scores"])


def draw_truth(image, record, metadata):
    """RGB ``image`` with a dataset record's tumors, labelled by class."""
    boxes, classes, masks = truth_instances(record)
    return draw_overlay(image, boxes, classes, masks, metadata.thing_classes, metadata.thing_colors)


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
    kept = int((pred["scores"] >= score_threshold).sum())
    name = os.path.basename(record["file_name"])
    tiles = {
        name[:40]: image,
        f"truth ({len(record.get('annotations', []))})": draw_truth(image, record, metadata),
        f"prediction >= {score_threshold:.2f} ({kept})"
        + ("" if dice is None else f"  Dice {dice:.2f}"):
            draw_prediction(image, pred, metadata, score_threshold),
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


def resized_tile(image, title, size):
    """``image`` resized to ``size`` x ``size`` under a title band."""
    return titled(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA), title)


def save_rgb(path, image):
    """Write an RGB image (PNG by the extension), making its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    cv2.imwrite(path, image[:, :, ::-1])


def draw_disagreements(disagreements, boxes, image_dirs, folder, most=24, size=320):
    """Each pair of :func:`tumorseg_d2.data.check.disagreements` (the first ``most``) as two tiles
    side by side with their boxes by class, ``folder``/pair_NN.png, and contact_sheet.png; the
    written paths. ``boxes``: {(split, file): {class name: [xywh]}}; ``image_dirs``: {split:
    folder}."""
    from detectron2.data.detection_utils import read_image

    names = sorted({name for per_class in boxes.values() for name in per_class})
    colors = [CLASS_COLORS[k % len(CLASS_COLORS)] for k in range(len(names))]
    paths, panels = [], []
    for k, (a, b, what) in enumerate(disagreements[:most]):
        tiles = []
        for split, file in (a, b):
            image = read_image(os.path.join(image_dirs[split], file), format="RGB")
            labels = [(name, box) for name, per_class in boxes[(split, file)].items()
                      for box in per_class]
            drawn = draw_overlay(image, [(x, y, x + w, y + h) for _, (x, y, w, h) in labels],
                                 [names.index(name) for name, _ in labels], [], names, colors)
            scale = size / max(image.shape[:2])
            tiles.append(titled(cv2.resize(drawn, None, fx=scale, fy=scale,
                                           interpolation=cv2.INTER_AREA), f"{split}/{file}"))
        height = max(t.shape[0] for t in tiles)
        tiles = [np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0))) for t in tiles]
        panels.append(titled(np.hstack(tiles), what))
        paths.append(os.path.join(folder, f"pair_{k + 1:02d}.png"))
        save_rgb(paths[-1], panels[-1])
    if panels:
        paths.append(os.path.join(folder, "contact_sheet.png"))
        save_rgb(paths[-1], contact_sheet(panels, columns=3, tile_width=2 * size))
    return paths
