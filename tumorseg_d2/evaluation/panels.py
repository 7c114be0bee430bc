"""Panels of a split's images (image, truth, prediction, mask probability), chosen by per-image
Dice or at random, and their contact sheet (what ``tumorseg visualize`` and the demo draw)."""
import os
import random

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from tqdm import tqdm

from ..drawing import contact_sheet, panel, save_rgb
from ..predictor import BatchPredictor, dropping_scores_below
from . import clinical

# The probability tile shows the masks of the detections scoring at least Detectron2's default
# box-head threshold, whatever lower one a config keeps for AP (the masks of up to 100 unlikely
# boxes otherwise).
PROBABILITY_MIN_SCORE = 0.05


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
    box_head_cfg = dropping_scores_below(cfg, min(PROBABILITY_MIN_SCORE, score_threshold))
    predictor = BatchPredictor(box_head_cfg, batch_size=batch_size)
    preds = predictor([r["file_name"] for r in records], masks="rle", probability=True)
    rows = []
    for record, pred in zip(records, preds):
        pred["image_id"] = record["image_id"]
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
