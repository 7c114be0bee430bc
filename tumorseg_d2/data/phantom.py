"""Synthetic MRI-like phantoms in the TumorSeg export's layout, for tests and for the demo.

Each image is a 640x640 grayscale slice stored as a 3-channel JPEG: a skull ring, a textured brain
ellipse and, usually, one tumor. The two classes look different, so a detector can learn them:

- category 1 ("0", glioma-like): a large irregular blob inside the brain, ring-enhancing with a
  darker core;
- category 2 ("1", meningioma/pituitary-like): a smaller, compact, uniformly bright round lesion.

The annotation file reproduces the export's quirks: a placeholder category id 0 that no annotation
uses, image and annotation ids starting at 0, float boxes, and masks that are either the 4-corner
rectangle of the box (``mask_style="box"``, as in the real export) or the tumor's true outline
(``mask_style="outline"``). The first training image has no tumor, as in the real train split.
"""
import os

import cv2
import numpy as np

from ..files import write_json
from .datasets import ANNOTATION_FILE

SIZE = 640
DEFAULT_COUNTS = {"train": 96, "valid": 24, "test": 24}
PLACEHOLDER = {"id": 0, "name": "Tumor", "supercategory": "none"}
CATEGORIES = [PLACEHOLDER, {"id": 1, "name": "0", "supercategory": "Tumor"},
              {"id": 2, "name": "1", "supercategory": "Tumor"}]


def _brain(rng):
    img = np.zeros((SIZE, SIZE), np.float32)
    cx, cy = SIZE / 2 + rng.uniform(-20, 20), SIZE / 2 + rng.uniform(-20, 20)
    ax, ay = rng.uniform(200, 240), rng.uniform(230, 270)
    angle = rng.uniform(-15, 15)
    cv2.ellipse(img, (int(cx), int(cy)), (int(ax + 18), int(ay + 18)), angle, 0, 360, 200, -1)
    cv2.ellipse(img, (int(cx), int(cy)), (int(ax + 6), int(ay + 6)), angle, 0, 360, 25, -1)
    brain = np.zeros_like(img)
    cv2.ellipse(brain, (int(cx), int(cy)), (int(ax), int(ay)), angle, 0, 360, 1, -1)
    # Low-frequency tissue texture: gray/white-matter-like variation.
    texture = cv2.GaussianBlur(rng.normal(0, 1, (SIZE, SIZE)).astype(np.float32), (0, 0), 12)
    texture = texture / (np.abs(texture).max() + 1e-6)
    img = np.where(brain > 0, 95 + 30 * texture, img)
    return img, brain, (cx, cy, ax, ay)


def _tumor_mask(rng, category, brain_geom):
    cx, cy, ax, ay = brain_geom
    mask = np.zeros((SIZE, SIZE), np.uint8)
    if category == 1:
        r = rng.uniform(45, 85)
        tx, ty = cx + rng.uniform(-0.5, 0.5) * ax, cy + rng.uniform(-0.5, 0.5) * ay
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        radii = r * (1 + 0.25 * np.sin(angles * rng.integers(2, 5) + rng.uniform(0, 6)))
        radii *= rng.uniform(0.85, 1.15, len(angles))
        pts = np.stack([tx + radii * np.cos(angles), ty + radii * np.sin(angles)], 1)
        cv2.fillPoly(mask, [pts.astype(np.int32)], 1)
    else:
        r = rng.uniform(18, 35)
        tx, ty = cx + rng.uniform(-0.6, 0.6) * ax, cy + rng.uniform(-0.6, 0.6) * ay
        cv2.circle(mask, (int(tx), int(ty)), int(r), 1, -1)
    return mask


def _draw_tumor(img, mask, category, rng):
    if category == 1:
        core = cv2.erode(mask, np.ones((15, 15), np.uint8))
        img = np.where(mask > 0, rng.uniform(175, 215), img)
        img = np.where(core > 0, rng.uniform(55, 80), img)
    else:
        img = np.where(mask > 0, rng.uniform(225, 250), img)
    return img


def _polygon(mask, mask_style):
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
    bbox = [x0, y0, x1 - x0, y1 - y0]
    if mask_style == "box":
        # Same corner order as the export: closed 5-point rectangle.
        poly = [x1, y0, x0, y0, x0, y1, x1, y1, x1, y0]
        area = bbox[2] * bbox[3]
    else:
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        contour = max(contours, key=cv2.contourArea)
        poly = [float(v) for v in contour.reshape(-1)]
        area = float(mask.sum())
    return bbox, poly, area


def make_phantom_split(out_dir, num_images, seed=0, mask_style="box", empty_first=False):
    """Write ``num_images`` phantoms and ``_annotations.coco.json`` into ``out_dir``."""
    if mask_style not in ("box", "outline"):
        raise ValueError(f"mask_style must be 'box' or 'outline', got {mask_style!r}")
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(num_images):
        img, _, geom = _brain(rng)
        category = None if (empty_first and image_id == 0) else int(rng.integers(1, 3))
        if category is not None:
            mask = _tumor_mask(rng, category, geom)
            img = _draw_tumor(img, mask, category, rng)
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        file_name = f"{image_id}_jpg.rf.phantom{seed:04d}{image_id:05d}.jpg"
        cv2.imwrite(os.path.join(out_dir, file_name), cv2.merge([img, img, img]))
        images.append({"id": image_id, "file_name": file_name, "height": SIZE, "width": SIZE})
        if category is not None:
            bbox, poly, area = _polygon(mask, mask_style)
            annotations.append({"id": len(annotations), "image_id": image_id,
                                "category_id": category, "bbox": bbox, "area": area,
                                "segmentation": [poly], "iscrowd": 0})
    coco = {"info": {"description": f"tumorseg-d2 phantom (seed {seed}, masks: {mask_style})"},
            "categories": CATEGORIES, "images": images, "annotations": annotations}
    write_json(os.path.join(out_dir, ANNOTATION_FILE), coco, indent=None)
    return coco


def make_phantom_dataset(root, counts=None, seed=0, mask_style="box"):
    """Write train/valid/test phantom splits under ``root``; returns ``root``."""
    counts = counts or DEFAULT_COUNTS
    for offset, (split, n) in enumerate(counts.items()):
        make_phantom_split(os.path.join(root, split), n, seed=seed * 10 + offset,
                           mask_style=mask_style, empty_first=(split == "train"))
    return root


def make_phantom_volume(out_dir, slices=12, spacing=(3.0, 0.5, 0.5), seed=0):
    """A phantom volume: one brain through ``slices`` axial slices and a round bright tumor (the
    category-2 look) that is a sphere of radius 15 mm, written as ``volume.nii.gz`` and its
    ``truth.nii.gz`` in ``out_dir`` (``spacing``: slice, row, column in mm). Returns the two
    paths and the true tumor volume in ml (the truth's voxels times the voxel volume)."""
    from .volumes import write_slices_nifti

    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    _, _, geom = _brain(np.random.default_rng(seed))
    cx, cy, ax, ay = geom
    center = (cx + 0.3 * ax, cy - 0.2 * ay)
    radius_mm, middle = 15.0, (slices - 1) / 2
    images, truths = [], []
    for k in range(slices):
        img, _, _ = _brain(np.random.default_rng(seed))  # the same brain on every slice
        mask = np.zeros((SIZE, SIZE), np.uint8)
        dz = (k - middle) * spacing[0]
        if abs(dz) < radius_mm:
            r_px = np.sqrt(radius_mm ** 2 - dz ** 2) / spacing[1]
            cv2.circle(mask, (int(center[0]), int(center[1])), int(round(r_px)), 1, -1)
            img = _draw_tumor(img, mask, 2, rng)
        images.append(np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8))
        truths.append(mask)
    volume = write_slices_nifti(images, os.path.join(out_dir, "volume.nii.gz"), spacing)
    truth = write_slices_nifti(np.array(truths), os.path.join(out_dir, "truth.nii.gz"), spacing)
    return volume, truth, float(np.sum(truths) * np.prod(spacing) / 1000)


def make_phantom_mask_folders(root, patients=6, slices=8, size=128, seed=0, ext=".png",
                              mask_dir=""):
    """Phantom patients as image/mask pairs in the LGG layout: ``root/PT_<k>_2000/PT_<k>_2000_<i>
    <ext>`` beside ``..._<i>_mask<ext>`` (or, with ``mask_dir``, the masks at the same relative
    path under ``root/<mask_dir>`` and the images under ``root/images``). Each patient is one
    volume: a round tumor through the middle slices (the first and last slices are tumor-free),
    a hole in the tumor of its middle slice and a 3x3-pixel second region on the slice after.
    Returns the counts a loader must find."""
    rng = np.random.default_rng(seed)
    counts = {"pairs": 0, "regions": 0, "tumor_free": 0, "holes": 0, "small_regions": 0}
    for k in range(patients):
        patient = f"PT_{k}_2000"
        cx, cy = rng.uniform(0.35, 0.65, 2) * size
        radius = rng.uniform(0.12, 0.2) * size
        for i in range(1, slices + 1):
            dz = abs(i - (slices + 1) / 2) / (slices / 2)  # 0 in the middle, ~1 at the ends
            image = np.full((size, size), 20, np.float32)
            cv2.ellipse(image, (size // 2, size // 2), (int(size * .45), int(size * .48)), 0, 0,
                        360, 90, -1)
            mask = np.zeros((size, size), np.uint8)
            r = radius * np.sqrt(max(0.0, 1 - dz ** 2)) if dz < 0.75 else 0
            if r >= 2:
                cv2.circle(mask, (int(cx), int(cy)), int(r), 255, -1)
                counts["regions"] += 1
                if i == (slices + 1) // 2 and r >= 6:  # a necrotic core outside the outline
                    cv2.circle(mask, (int(cx), int(cy)), int(r) // 3, 0, -1)
                    counts["holes"] += 1
                if i == (slices + 1) // 2 + 1:
                    x0 = int(cx + r + 6) % (size - 3)
                    mask[4:7, x0:x0 + 3] = 255
                    counts["regions"] += 1
                    counts["small_regions"] += 1
            else:
                counts["tumor_free"] += 1
            image = np.where(mask > 0, 200, image) + rng.normal(0, 8, image.shape)
            image = np.clip(image, 0, 255).astype(np.uint8)
            name = f"{patient}_{i}"
            image_folder = os.path.join(root, "images", patient) if mask_dir else \
                os.path.join(root, patient)
            mask_path = os.path.join(root, mask_dir, patient, name + ext) if mask_dir else \
                os.path.join(root, patient, name + "_mask" + ext)
            os.makedirs(image_folder, exist_ok=True)
            os.makedirs(os.path.dirname(mask_path), exist_ok=True)
            cv2.imwrite(os.path.join(image_folder, name + ext), cv2.merge([image] * 3))
            cv2.imwrite(mask_path, mask)
            counts["pairs"] += 1
    return counts
