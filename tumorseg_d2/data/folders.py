"""Image/mask-pair folders as Detectron2 dataset dicts: one mask file per image, every connected
region of a mask one instance, an empty mask a tumor-free slice kept as a negative.

A mask is found beside its image by a suffix (``<stem>_mask.<ext>``, Kaggle's LGG layout), or at
the same relative path under a parallel folder (``masks/``, with ``images/`` holding the images).
Masks are ``.png``, ``.tif`` or ``.jpg``, single-channel (or channels all equal):

- binary (no ``values`` given): foreground is every non-zero pixel, or >= 128 for JPEG, whose lossy
  compression leaves faint non-zero pixels around the edges;
- label masks: ``values[k]`` is the pixel value of class k; other non-zero values are counted and
  reported, never guessed.

Regions are 8-connected. An instance is an RLE mask (holes kept), or with ``polygons=True`` the
outer contour of each region (Detectron2 polygons are a union, so holes are filled; the count of
filled holes is logged). Regions under ``min_area`` pixels are dropped and counted in the log.
"""
import logging
import os
from collections import Counter

import cv2
import numpy as np
from detectron2.structures import BoxMode
from PIL import Image
from pycocotools import mask as mask_util

from ..files import inside
from .patients import natural_key, patient_of, slice_of

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


class MaskFolderError(ValueError):
    pass


def find_pairs(root, mask_suffix="_mask", mask_dir="", image_dir=""):
    """Sorted [(image path, mask path or None)] of the images under ``root``.

    ``mask_dir`` given: images under ``root/image_dir`` and masks at the same relative path (any
    of the extensions) under ``root/mask_dir``; otherwise a mask is ``<stem><mask_suffix>.<ext>``
    beside its image, and files ending in the suffix are masks, not images."""
    if not os.path.isdir(root):
        raise MaskFolderError(f"Image/mask folder {root} does not exist: set DATASETS.SOURCE.ROOT "
                              "to the folder that holds the images and their masks.")
    image_root = os.path.join(root, image_dir) if image_dir else root
    pairs = []
    for folder, dirs, files in os.walk(image_root):
        dirs.sort()
        if mask_dir and inside(folder, os.path.join(root, mask_dir)):
            continue
        by_stem = {os.path.splitext(f)[0]: f for f in files
                   if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS}
        for stem, name in by_stem.items():
            if not mask_dir and mask_suffix and stem.endswith(mask_suffix):
                continue
            if mask_dir:
                rel = os.path.relpath(os.path.join(folder, stem), image_root)
                candidates = [os.path.join(root, mask_dir, rel + ext) for ext in IMAGE_EXTENSIONS]
                candidates += [os.path.join(root, mask_dir, rel + mask_suffix + ext)
                               for ext in IMAGE_EXTENSIONS] if mask_suffix else []
                mask = next((c for c in candidates if os.path.isfile(c)), None)
            else:
                mask = by_stem.get(stem + mask_suffix)
                mask = os.path.join(folder, mask) if mask else None
            pairs.append((os.path.join(folder, name), mask))
    return sorted(pairs, key=lambda p: natural_key(p[0]))


def read_mask(path, expected_size=None):
    """A mask file as a 2-D integer array; a clear error for unreadable, colour or wrongly sized
    masks. ``expected_size``: (width, height) of its image."""
    mask = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise MaskFolderError(f"Mask {path} cannot be read (missing, empty or not an image).")
    if mask.ndim == 3:
        if not all(np.array_equal(mask[..., 0], mask[..., c]) for c in range(1, mask.shape[2])):
            raise MaskFolderError(f"Mask {path} is a colour image whose channels differ: give "
                                  "single-channel masks (0 = background, or a label per class).")
        mask = mask[..., 0]
    if expected_size and (mask.shape[1], mask.shape[0]) != tuple(expected_size):
        raise MaskFolderError(f"Mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is "
                              f"{expected_size[0]}x{expected_size[1]}: masks must match their "
                              "images pixel for pixel.")
    return mask


def class_maps(mask, path, values=()):
    """[(class index, boolean map)] of a mask (one class when ``values`` is empty) and the count of
    pixels whose value names no class."""
    if not values:
        threshold = 128 if os.path.splitext(path)[1].lower() in (".jpg", ".jpeg") else 1
        return [(0, mask >= threshold)], 0
    maps = [(k, mask == v) for k, v in enumerate(values)]
    unknown = int(np.count_nonzero(~np.isin(mask, (0,) + tuple(values))))
    return maps, unknown


def regions(binary, min_area=0):
    """(list of boolean masks of the 8-connected regions, count of regions under ``min_area``)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8),
                                                               connectivity=8)
    kept, dropped = [], 0
    for k in range(1, count):
        if stats[k, cv2.CC_STAT_AREA] < min_area:
            dropped += 1
            continue
        kept.append(labels == k)
    return kept, dropped


def region_annotation(region, category_id, polygons=False):
    """A Detectron2 annotation for one region: XYWH box and an RLE (holes kept) or the outer
    contour polygons; None when a polygon cannot be drawn (fewer than 3 points)."""
    ys, xs = np.nonzero(region)
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()),
           float(ys.max() + 1 - ys.min())]
    if polygons:
        contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE)
        segmentation = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
        if not segmentation:
            return None
    else:
        rle = mask_util.encode(np.asfortranarray(region.astype(np.uint8)))
        segmentation = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
    return {"bbox": box, "bbox_mode": BoxMode.XYWH_ABS, "category_id": category_id,
            "iscrowd": 0, "segmentation": segmentation}


def has_hole(region):
    filled = np.zeros(region.shape, np.uint8)
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(filled, contours, -1, 1, -1)
    return bool(np.count_nonzero(filled) > np.count_nonzero(region))


def load_mask_folder(root, mask_suffix="_mask", mask_dir="", image_dir="", values=(),
                     min_area=0, polygons=False, patient_pattern="", slice_pattern=r"(\d+)$",
                     on_error="refuse"):
    """Dataset dicts of every image/mask pair under ``root`` (image ids 0.. in sorted order), each
    with ``patient_id`` (None without a pattern) and ``slice_index``.

    An image without a mask, or a mask that cannot be used, raises MaskFolderError naming it
    (``on_error="refuse"``), or is left out and logged (``"warn"``)."""
    pairs = find_pairs(root, mask_suffix, mask_dir, image_dir)
    if not pairs:
        raise MaskFolderError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) under {root}.")
    dicts, problems, tally = [], [], Counter()
    for image_path, mask_path in pairs:
        try:
            if mask_path is None:
                where = f"under {os.path.join(root, mask_dir)}" if mask_dir else \
                    f"beside it (<name>{mask_suffix}.<ext>)"
                raise MaskFolderError(f"Image {image_path} has no mask {where}: add it (an empty "
                                      "mask marks a tumor-free slice) or remove the image.")
            try:
                with Image.open(image_path) as im:
                    width, height = im.size
            except OSError as e:
                raise MaskFolderError(f"Image {image_path} cannot be read ({e}).") from e
            mask = read_mask(mask_path, (width, height))
            annotations = []
            maps, unknown = class_maps(mask, mask_path, values)
            tally["unknown label pixels"] += unknown
            for k, binary in maps:
                found, dropped = regions(binary, min_area)
                tally["regions under MIN_AREA dropped"] += dropped
                for region in found:
                    if polygons and has_hole(region):
                        tally["holes filled (polygon masks)"] += 1
                    ann = region_annotation(region, k, polygons)
                    if ann is None:
                        tally["regions too small for a polygon dropped"] += 1
                    else:
                        annotations.append(ann)
        except MaskFolderError as e:
            if on_error != "warn":
                raise
            problems.append(str(e))
            continue
        relative = os.path.relpath(image_path, os.path.join(root, image_dir))
        dicts.append({"file_name": image_path, "mask_file": mask_path, "height": height,
                      "width": width, "image_id": len(dicts), "annotations": annotations,
                      "patient_id": patient_of(relative, patient_pattern),
                      "slice_index": slice_of(image_path, slice_pattern)})
    for problem in problems:
        logger.warning(f"Left out: {problem}")
    empty = sum(not d["annotations"] for d in dicts)
    logger.info(f"{root}: {len(dicts)} image/mask pairs, {sum(len(d['annotations']) for d in dicts)}"
                f" regions, {empty} tumor-free slices (kept as negatives)"
                + "".join(f", {n} {what}" for what, n in sorted(tally.items()) if n))
    if tally["unknown label pixels"]:
        logger.warning(f"{root}: {tally['unknown label pixels']} mask pixels have a value that is "
                       f"not in DATASETS.SOURCE.MASK_VALUES {tuple(values)}; they are background.")
    return dicts
