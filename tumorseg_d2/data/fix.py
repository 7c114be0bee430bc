"""``tumorseg check --fix OUT``: a corrected copy of a split and a log of every change.

The input is never written. What cannot be fixed without more information (near-duplicate slices
of one patient across splits, rectangle-only masks) is reported by the checker and left as is.
"""
import copy
import os
import shutil

from ..files import (UnsafeFileError, append_jsonl, confined_path, inside,
                     refuse_output_inside_inputs, write_json)
from ..tables import markdown_table
from .datasets import ANNOTATION_FILE
from .check import (GEOMETRY_TOLERANCE, TINY_BOX_SIDE, annotation_problems, polygon_area,
                    polygon_bounds)


def _clip_polygon(polygon, width, height):
    return [min(max(v, 0.0), float(width if i % 2 == 0 else height)) for i, v in enumerate(polygon)]


def exact_copies(details, order=("train", "valid", "test")):
    """{(split, file): the image it copies} for images whose pixels repeat an earlier one; the
    copy kept is in train if any (so that evaluation splits lose their leaked images)."""
    rank = {s: order.index(s) if s in order else len(order) for s in details}
    first, copies = {}, {}
    for split in sorted(details, key=lambda s: (rank[s], s)):
        for name, props in details[split]["decoded"].items():
            if props[1] is None:
                continue
            key = (split, name)
            if props[2] in first:
                copies[key] = "/".join(first[props[2]])
            else:
                first[props[2]] = key
    return copies


def fix_images(coco, image_dir, decoded, log, copies=None):
    """Images kept: the first of each id and file name, present, decodable, not an exact copy of
    another kept image; sizes from the file."""
    kept, ids, names = [], set(), set()
    for im in coco["images"]:
        name = im.get("file_name")
        props = decoded.get(name)
        reason = (f"exact copy of {copies[name]}" if copies and name in copies
                  else "duplicate image id" if im.get("id") in ids
                  else "duplicate file name" if name in names
                  else "missing file" if not os.path.isfile(os.path.join(image_dir, str(name)))
                  else f"unreadable file ({props[0]})" if props is not None and props[1] is None
                  else None)
        if reason:
            log("drop image", f"{name} (id {im.get('id')})", reason)
            continue
        ids.add(im["id"])
        names.add(name)
        if props is not None and (im.get("width"), im.get("height")) != props[:2]:
            log("fix size", name, f"{im.get('width')}x{im.get('height')} -> {props[0]}x{props[1]}")
            im = dict(im, width=props[0], height=props[1])
        kept.append(im)
    return kept


def fix_annotation(ann, image, log):
    """The corrected annotation, or None to drop it (every change logged)."""
    where = f"annotation {ann.get('id')} ({image['file_name']})"
    codes = {code for _, code, _ in annotation_problems(ann, image)}
    if codes & {"no_geometry", "zero_area"}:
        log("drop annotation", where, "no geometry or zero area")
        return None
    ann = copy.deepcopy(ann)
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        polygons = [p for p in seg if len(p) >= 6 and polygon_area(p) > 0]
        if len(polygons) != len(seg):
            log("drop polygon", where, f"{len(seg) - len(polygons)} with < 3 points or no area")
            if not polygons:
                log("drop annotation", where, "no polygon left")
                return None
        if "outside_image" in codes:
            polygons = [_clip_polygon(p, image["width"], image["height"]) for p in polygons]
            log("clip", where, f"to the {image['width']}x{image['height']} image")
        ann["segmentation"] = polygons
        bounds = polygon_bounds(polygons)
        if not ann.get("bbox") or max(abs(a - b) for a, b in zip(ann["bbox"], bounds)) \
                > GEOMETRY_TOLERANCE or "outside_image" in codes:
            log("set bbox", where, f"{ann.get('bbox')} -> polygon bounds "
                                   f"{[round(v, 2) for v in bounds]}")
            ann["bbox"] = bounds
        ann["area"] = float(sum(polygon_area(p) for p in polygons))
    elif "outside_image" in codes and ann.get("bbox"):
        x, y, w, h = ann["bbox"]
        x2, y2 = min(x + w, image["width"]), min(y + h, image["height"])
        x, y = max(x, 0), max(y, 0)
        log("clip", where, f"bbox {ann['bbox']} -> {[x, y, x2 - x, y2 - y]}")
        ann["bbox"] = [x, y, x2 - x, y2 - y]
    if min(ann["bbox"][2:]) < TINY_BOX_SIDE:
        log("drop annotation", where, f"tiny box {ann['bbox'][2]:g} x {ann['bbox'][3]:g} px")
        return None
    return ann


def fix_split(coco, image_dir, decoded, out_dir, split, copies=None, malformed=()):
    """Write the corrected split's images to out_dir; returns (corrected json, change log).
    ``coco`` holds the well-formed entries (check.validate_coco); ``malformed``: [(code, item)] of
    those left out, logged as dropped. ``copies``: {file: original} of exact copies to drop (see
    :func:`exact_copies`). Every file is written inside out_dir, whatever a file_name says."""
    changes = []

    def log(action, item, detail):
        changes.append({"split": split, "action": action, "item": item, "detail": detail})

    for code, item in malformed:
        log(f"drop {code.split('_', 1)[1] if code.startswith('malformed') else 'image'}", item,
            code)

    images = fix_images(coco, image_dir, decoded, log, copies)
    by_id = {im["id"]: im for im in images}
    used = {a.get("category_id") for a in coco["annotations"]}
    categories = []
    for c in coco["categories"]:
        if c.get("id") in used:
            categories.append(c)
        else:
            log("drop category", f"{c.get('id')} ({c.get('name')!r})", "no annotation uses it")
    cat_ids = {c["id"] for c in categories}
    annotations = []
    for ann in coco["annotations"]:
        image = by_id.get(ann.get("image_id"))
        if image is None or ann.get("category_id") not in cat_ids:
            log("drop annotation", f"annotation {ann.get('id')}",
                "unknown or dropped image" if image is None else "unknown category")
            continue
        fixed = fix_annotation(ann, image, log)
        if fixed is not None:
            annotations.append(fixed)
    ids = [a.get("id") for a in annotations]
    if 0 in ids or len(set(ids)) != len(ids):
        log("renumber annotation ids", f"{len(annotations)} annotations",
            "ids 1..N (id 0 or duplicates found)")
        for i, a in enumerate(annotations, 1):
            a["id"] = i
    os.makedirs(out_dir, exist_ok=True)
    for im in images:
        target = confined_path(out_dir, im["file_name"])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(confined_path(image_dir, im["file_name"]), target)
    fixed = dict(coco, images=images, annotations=annotations, categories=categories)
    return fixed, changes


def write_fixed_copy(details, out, inputs, option="--fix"):
    """A corrected copy of checked splits (``details`` of check_splits) in ``out/<split>/``, with
    fix_log.md and fix_log.jsonl; ``inputs``: the (json, image folder) checked, never written."""
    refuse_output_inside_inputs(out, [d for _, d in inputs], option)
    if any(inside(d, out) for _, d in inputs):
        raise UnsafeFileError(f"{option} {out} contains an input folder; choose a folder elsewhere "
                              "(the input is never written).")
    if os.path.isdir(out) and os.listdir(out):
        raise UnsafeFileError(f"{option} {out} exists and is not empty; choose a new folder.")
    changes, copies = [], exact_copies(details)
    for split, d in details.items():
        fixed, log = fix_split(d["coco"], d["image_dir"], d["decoded"], os.path.join(out, split),
                               split, {f: orig for (s, f), orig in copies.items() if s == split},
                               d["malformed"])
        write_json(os.path.join(out, split, ANNOTATION_FILE), fixed, indent=None)
        changes += log
    open(os.path.join(out, "fix_log.jsonl"), "w").close()
    for c in changes:
        append_jsonl(os.path.join(out, "fix_log.jsonl"), c)
    with open(os.path.join(out, "fix_log.md"), "w") as f:
        f.write(f"# Changes made by tumorseg check --fix ({len(changes)})\n\n")
        f.write(markdown_table(["split", "action", "item", "detail"],
                               [[str(c[k]) for k in ("split", "action", "item", "detail")]
                                for c in changes]) + "\n")
    return changes
