"""Pictures of predictions beside the ground truth."""
import os

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import ColorMode, Visualizer
from tqdm import tqdm


def _label(image, text):
    """Write ``text`` on a dark band above ``image`` (RGB)."""
    band = np.zeros((28, image.shape[1], 3), np.uint8)
    cv2.putText(band, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([band, image])


def side_by_side(record, instances, metadata):
    """RGB panel: the image with its ground truth (left) and with the predictions (right)."""
    image = read_image(record["file_name"], format="RGB")
    truth = Visualizer(image, metadata, instance_mode=ColorMode.SEGMENTATION)
    truth = truth.draw_dataset_dict(record).get_image()
    pred = Visualizer(image, metadata, instance_mode=ColorMode.SEGMENTATION)
    pred = pred.draw_instance_predictions(instances).get_image()
    name = os.path.basename(record["file_name"])
    return np.hstack([_label(truth, f"truth  {name}"),
                      _label(pred, f"prediction  ({len(instances)} above threshold)")])


def draw_split_predictions(cfg, dataset_name, output_dir, num_images=8, score_threshold=0.5):
    """Run the model of ``cfg`` (cfg.MODEL.WEIGHTS) on the first ``num_images`` images of a split
    and write one side-by-side PNG each; returns the paths written."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_threshold
    cfg.freeze()
    predictor = DefaultPredictor(cfg)
    metadata = MetadataCatalog.get(dataset_name)
    records = DatasetCatalog.get(dataset_name)[:num_images]
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for record in tqdm(records, desc=f"drawing predictions on {dataset_name}"):
        image = read_image(record["file_name"], format=cfg.INPUT.FORMAT)
        with torch.no_grad():
            instances = predictor(image)["instances"].to("cpu")
        panel = side_by_side(record, instances, metadata)
        path = os.path.join(output_dir, os.path.splitext(os.path.basename(record["file_name"]))[0]
                            + ".png")
        cv2.imwrite(path, panel[:, :, ::-1])
        paths.append(path)
    return paths
