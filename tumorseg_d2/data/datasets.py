"""Registration of the TumorSeg splits (Roboflow "TumorSegmentation" COCO export).

Names registered (lazily: nothing is read until a dataset is first used):

- ``tumorseg_{train,valid,test}``: two classes, the export's category ids 1 and 2 (named "0" and "1");
- ``tumorseg_agnostic_{train,valid,test}``: one class "tumor" (both categories merged), the
  setting some published results on this data use.

The export has a placeholder category (id 0, "Tumor", supercategory "none") that no annotation uses;
it is not a class. Contiguous class ids 0/1 map back to dataset ids 1/2 through
``thing_dataset_id_to_contiguous_id``, so results files carry the export's ids.

The root folder holds ``{train,valid,test}/_annotations.coco.json`` and the images. It is, in order:
the ``root`` passed to :func:`register_tumorseg` (the config key ``DATASETS.TUMORSEG_ROOT``),
``$DETECTRON2_DATASETS/tumorseg``, or ``datasets/tumorseg`` (Detectron2's convention).
"""
import logging
import os

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode, polygons_to_bitmask
from pycocotools import mask as mask_util

from ..files import load_json
from .check import validate_coco

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
ANNOTATION_FILE = "_annotations.coco.json"
# Export's category id -> (name, color). Id 0 is the unused placeholder and deliberately absent.
CATEGORIES = {1: "0", 2: "1"}
CLASS_COLORS = [(255, 64, 64), (64, 160, 255)]
AGNOSTIC_CLASS = "tumor"


class DatasetNotFoundError(FileNotFoundError):
    pass


def default_root():
    return os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "tumorseg")


def split_paths(root, split):
    """(json_file, image_root) of one split, or a DatasetNotFoundError that says how to fix it."""
    image_root = os.path.join(root, split)
    json_file = os.path.join(image_root, ANNOTATION_FILE)
    if not os.path.isfile(json_file):
        raise DatasetNotFoundError(
            f"TumorSeg split '{split}' not found: {os.path.abspath(json_file)} does not exist. "
            f"Put the Roboflow COCO export under {os.path.abspath(root)} (see datasets/README.md), "
            "or point the toolkit at it with DETECTRON2_DATASETS=<folder containing tumorseg/> or "
            "the config key DATASETS.TUMORSEG_ROOT <root>."
        )
    return json_file, image_root


def load_tumorseg(root, split, class_agnostic=False):
    """Load one split as Detectron2 dataset dicts with contiguous category ids."""
    json_file, image_root = split_paths(root, split)
    # The export's category ids are kept here and mapped below, so that the placeholder category
    # does not become a class.
    dicts = load_coco_dicts(json_file, image_root)
    id_map = contiguous_id_map(class_agnostic)
    for record in dicts:
        for ann in record.get("annotations", []):
            cat = ann["category_id"]
            if cat not in CATEGORIES:
                raise ValueError(
                    f"{json_file}: annotation of image '{record['file_name']}' has category_id "
                    f"{cat}; TumorSeg annotations use {sorted(CATEGORIES)} (id 0 is the export's "
                    "unused placeholder). Fix the annotation or use the original export."
                )
            ann["category_id"] = id_map[cat]
    return dicts


def rle_to_polygons(rle):
    """The outline of every region of an RLE mask as flat polygons (holes are filled: polygons
    in Detectron2 are a union)."""
    if isinstance(rle["counts"], list):  # uncompressed RLE
        rle = mask_util.frPyObjects(rle, *rle["size"])
    mask = mask_util.decode(rle)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def load_coco_dicts(json_file, image_root):
    """Detectron2 dataset dicts of a COCO instances file (as detectron2's load_coco_json, with the
    json's category ids), reading only the entries check.validate_coco accepts: a malformed entry
    is logged and left out, never a crash later (DATASETS.CHECK warn). RLE masks become polygons."""
    coco, dropped = validate_coco(load_json(json_file), image_root)
    for code, items in dropped.items():
        if code != "rle_segmentation":
            logger.warning(f"{json_file}: {len(items)} {code} entries left out, e.g. {items[0]}")
    by_image = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    dicts, converted = [], 0
    for im in sorted(coco["images"], key=lambda im: im["id"]):
        objs = []
        for ann in by_image.get(im["id"], []):
            if ann.get("ignore", 0) or ann.get("bbox") is None:
                continue
            obj = {"bbox": ann["bbox"], "bbox_mode": BoxMode.XYWH_ABS,
                   "category_id": ann["category_id"], "iscrowd": ann.get("iscrowd", 0)}
            seg = ann.get("segmentation")
            if isinstance(seg, dict):
                seg, converted = rle_to_polygons(seg), converted + 1
            if seg is not None:
                seg = [p for p in seg if len(p) >= 6]
                if not seg:  # as load_coco_json: an instance needs a drawable mask
                    continue
                obj["segmentation"] = seg
            objs.append(obj)
        dicts.append({"file_name": os.path.join(image_root, im["file_name"]),
                      "height": im["height"], "width": im["width"], "image_id": im["id"],
                      "annotations": objs})
    if converted:
        logger.info(f"{json_file}: {converted} RLE masks converted to polygons.")
    return dicts


def contiguous_id_map(class_agnostic):
    return {cat: 0 if class_agnostic else i for i, cat in enumerate(sorted(CATEGORIES))}


def dataset_files(name):
    """(json_file, image_root) of a registered dataset: a TumorSeg split, a COCO dataset
    registered with register_coco_instances or a COCO DATASETS.SOURCE (the whole json when the
    split is computed); None for image/mask folders, which have no json."""
    meta = MetadataCatalog.get(name)
    if meta.get("source_format") == "masks" or meta.get("source_json") == "":
        return None
    if meta.get("source_format") == "coco":
        return meta.source_json, meta.source_images
    if meta.get("tumorseg_split"):
        return split_paths(meta.get("dataset_root") or default_root(), meta.tumorseg_split)
    if meta.get("json_file") and meta.get("image_root"):
        return meta.json_file, meta.image_root
    raise ValueError(f"Dataset '{name}' has no json_file/image_root in its metadata; register it "
                     "with detectron2.data.datasets.register_coco_instances.")


def dataset_name(split, class_agnostic=False):
    return f"tumorseg_agnostic_{split}" if class_agnostic else f"tumorseg_{split}"


def register_tumorseg(root=None):
    """(Re-)register all TumorSeg names. ``root=None`` resolves the default root at load time."""
    for agnostic in (False, True):
        if agnostic:
            classes, colors = [AGNOSTIC_CLASS], CLASS_COLORS[:1]
            # Results of the one class are written with the export's first real category id.
            id_to_contiguous = {min(CATEGORIES): 0}
        else:
            classes, colors = [CATEGORIES[c] for c in sorted(CATEGORIES)], CLASS_COLORS
            id_to_contiguous = contiguous_id_map(False)
        for split in SPLITS:
            name = dataset_name(split, agnostic)
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
                # Drop metadata too: an evaluator may have cached a json_file made from the old root.
                MetadataCatalog.remove(name)
            DatasetCatalog.register(
                name,
                lambda split=split, agnostic=agnostic: load_tumorseg(
                    root or default_root(), split, agnostic
                ),
            )
            MetadataCatalog.get(name).set(
                thing_classes=classes,
                thing_colors=colors,
                thing_dataset_id_to_contiguous_id=id_to_contiguous,
                evaluator_type="coco",
                dataset_root=root or "",
                tumorseg_split=split,
            )


def truth_instances(record, cls=None):
    """(boxes XYXY (N, 4), classes (N,), masks [N x (H, W) bool]) of a record's tumors."""
    h, w = record["height"], record["width"]
    anns = [a for a in record.get("annotations", []) if cls is None or a["category_id"] == cls]
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
    masks = [annotation_mask(a["segmentation"], h, w) for a in anns]
    return (np.array(boxes, float).reshape(-1, 4), np.array([a["category_id"] for a in anns], int),
            masks)


def annotation_mask(segmentation, height, width):
    """An annotation's mask as a (H, W) bool array: polygons, or RLE (compressed or not)."""
    if isinstance(segmentation, dict):
        rle = segmentation if isinstance(segmentation["counts"], (str, bytes)) else \
            mask_util.frPyObjects(segmentation, height, width)
        return mask_util.decode(rle).astype(bool)
    return polygons_to_bitmask(segmentation, height, width)
