"""Dataset checker: every defect of a COCO instance-segmentation export that costs a user.

Checks, each with a code, a severity and the offending files or ids:

- structure (cheap): the json parses and is COCO; image, annotation and file-name ids are unique;
  every annotation points to a known image and category; annotation id 0 (pycocotools reads a
  matched ground-truth id 0 as "unmatched", so a perfect prediction loses a true positive; see
  ``tests/test_dataset_check.py``); unused categories; geometry (no or degenerate polygon, zero area,
  outside the image, box that disagrees with its polygon, polygons that are only their box);
  images without annotations; implausibly tiny boxes; listed files missing;
- files (reads every image): unreadable or truncated images, size that differs from the json, files
  on disk that the json does not list;
- duplicates: exact (same pixels) and near-duplicate images (difference hash, 256 bits) within and
  across splits; near-duplicates across splits leak patients from train into test;
- labels of near duplicates (neighbouring slices of one patient): a different tumor class, and
  boxes of one class that overlap by less than the IoU at which AP50 counts a match (the same
  tumor outlined by different rules);
- anchors (with a config): the share of its training boxes that reach no RPN anchor at the RPN's
  positive IoU (``anchor_findings``).

Errors make ``tools/check_dataset.py`` exit non-zero; warnings do not. Training and evaluation run
the structure checks (no image decoding) at start-up: ``DATASETS.CHECK``.
"""
import hashlib
import json
import math
import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from multiprocessing import Pool

import numpy as np
from tabulate import tabulate

from ..files import UnsafeFileError, confined_path, image_depth_problem, load_json

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
TINY_BOX_SIDE = 4.0  # px: smaller boxes are implausible for a tumor in a 640 px slice
GEOMETRY_TOLERANCE = 1.0  # px
NEAR_DUPLICATE_SIMILARITY = 0.85  # 1 - hamming / 256 of the difference hash; pixel corr ~0.9
AGREEMENT_IOU = 0.5  # box IoU below which one label would not match the other at AP50
# Labels are compared on near duplicates that are also nearly the same picture: at the hash
# threshold alone, some pairs join two patients' brains at the same level (seen on TumorSeg).
AGREEMENT_MIN_CORRELATION = 0.95  # Pearson correlation of the 64x64 thumbnails
# Share of the training boxes reaching no RPN anchor at its positive IoU above which the anchors
# are a warning (one size per level, an octave apart, leaves the boxes between two sizes short).
ANCHOR_UNCOVERED_WARNING = 0.25


@dataclass
class Finding:
    severity: str  # "error" or "warning"
    code: str
    split: str
    message: str  # what is wrong, what it costs, how to fix it
    items: list = field(default_factory=list)  # offending ids / files (all of them)

    @property
    def count(self):
        return len(self.items)


# ---------------------------------------------------------------- structure (no decoding)
def load_coco(json_path, split):
    """(coco dict, findings): the json parsed and checked to be COCO, else a fatal finding."""
    try:
        coco = load_json(json_path)
    except UnsafeFileError as e:
        return None, [Finding("error", "unsafe_json", split, str(e), [json_path])]
    except FileNotFoundError:
        return None, [Finding("error", "missing_json", split,
                              f"{json_path} does not exist: pass a split folder that holds "
                              "_annotations.coco.json, or a registered dataset name.", [json_path])]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, [Finding("error", "not_json", split,
                              f"{json_path} is not valid JSON ({e}); re-export the annotations.",
                              [json_path])]
    missing = [k for k in ("images", "annotations", "categories")
               if not isinstance(coco, dict) or not isinstance(coco.get(k), list)]
    if missing:
        return None, [Finding("error", "not_coco", split,
                              f"{json_path} is not a COCO instances file: no list '"
                              + "', '".join(missing) + "'. Export the dataset in COCO format "
                              "(images, annotations, categories).", [json_path])]
    return coco, []


def _duplicates(values):
    return sorted(v for v, n in Counter(values).items() if n > 1)


def polygon_area(flat):
    x, y = np.asarray(flat[0::2], float), np.asarray(flat[1::2], float)
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def polygon_bounds(polygons):
    """[x, y, w, h] of the points of one or several flat polygons."""
    xs = [x for p in polygons for x in p[0::2]]
    ys = [y for p in polygons for y in p[1::2]]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def is_box_rectangle(polygon, bbox, tol=GEOMETRY_TOLERANCE):
    """True when a polygon is the 4 corners of its bounding box (no real outline), open or closed
    (last point repeating the first)."""
    points = list(zip(polygon[0::2], polygon[1::2]))
    if len(points) == 5 and points[0] == points[-1]:
        points = points[:4]
    if len(points) != 4:
        return False
    x, y, w, h = bbox
    corners = {(round(px), round(py)) for px, py in points}
    expected = {(round(a), round(b)) for a in (x, x + w) for b in (y, y + h)}
    return len(corners) == 4 and all(min(abs(cx - ex) + abs(cy - ey) for ex, ey in expected)
                                     <= 2 * tol for cx, cy in corners)


def annotation_problems(ann, image):
    """[(severity, code, detail)] for one annotation's geometry against its image."""
    problems = []
    bbox, seg = ann.get("bbox"), ann.get("segmentation")
    polygons = seg if isinstance(seg, list) else []
    if not bbox and not seg:
        return [("error", "no_geometry", "neither bbox nor segmentation")]
    if isinstance(seg, list) and any(len(p) < 6 for p in polygons):
        problems.append(("error", "degenerate_polygon", "polygon with fewer than 3 points"))
    valid = [p for p in polygons if len(p) >= 6]
    if valid:
        bounds = polygon_bounds(valid)
        if sum(polygon_area(p) for p in valid) <= 0:
            problems.append(("error", "zero_area", "polygon area 0"))
    else:
        bounds = bbox
    if bbox:
        x, y, w, h = bbox
        if w <= 0 or h <= 0:
            problems.append(("error", "zero_area", f"bbox {bbox}"))
        elif min(w, h) < TINY_BOX_SIDE:
            problems.append(("warning", "tiny_box", f"bbox {w:g} x {h:g} px"))
        if valid and max(abs(a - b) for a, b in zip(bbox, bounds)) > GEOMETRY_TOLERANCE:
            problems.append(("warning", "bbox_polygon_mismatch",
                             f"bbox {bbox} vs polygon bounds {[round(v, 1) for v in bounds]}"))
    if bounds and image.get("width") and image.get("height"):
        x, y, w, h = bounds
        t = GEOMETRY_TOLERANCE
        if x < -t or y < -t or x + w > image["width"] + t or y + h > image["height"] + t:
            problems.append(("error", "outside_image",
                             f"extends beyond the {image['width']}x{image['height']} image"))
    return problems


MALFORMED = ("malformed_image", "malformed_category", "malformed_annotation", "unsafe_file_name")

MESSAGES = {
    "unsafe_json": "the annotation file was refused before parsing.",
    "malformed_image": "image entries that are not objects, or whose id is not an integer, "
                       "file_name not a string, or width/height not positive integers: they "
                       "cannot be loaded. They are left out of training and evaluation (with "
                       "DATASETS.CHECK warn); --fix drops them. Fix the export.",
    "unsafe_file_name": "file names that are absolute or lead out of the split folder ('../'): a "
                        "tool would read or write files elsewhere. They are left out; --fix drops "
                        "them.",
    "malformed_category": "categories without an integer id and a name (null, a string id, ...): "
                          "left out; their annotations become 'unknown_category'.",
    "malformed_annotation": "annotations with a value of the wrong type: a non-integer id, "
                            "image_id or category_id (e.g. the string \"1\"), a bbox that is not "
                            "4 finite numbers (NaN, Infinity, null, strings), polygons that are not "
                            "lists of finite numbers, malformed RLE, or null entries. They are left "
                            "out of training and evaluation (with DATASETS.CHECK warn); --fix "
                            "drops them.",
    "rle_segmentation": "masks stored as RLE: training and evaluation convert each to polygons "
                        "(the outline of every region; holes inside a region are filled), "
                        "because the model's mask format is polygons.",
    "not_8bit": "images that are not 8-bit (16-bit or float grayscale, 48-bit color) or hold "
                "several frames: reading them as 8-bit would clip or drop data silently. Convert "
                "them to 8-bit with the intensity window of the other slices.",
    "same_split_name": "two inputs resolve to the same split name: the second would replace the "
                       "first. Pass them as separate runs, or rename one folder.",
    "duplicate_image_id": "image ids used twice: annotations cannot be attributed. --fix keeps the "
                          "first image of each id.",
    "duplicate_file_name": "the same file listed twice: it would be trained and scored twice. "
                           "--fix keeps the first entry.",
    "duplicate_annotation_id": "annotation ids used twice: COCO tools match by id, so one of the "
                               "pair is lost in evaluation. --fix renumbers annotation ids.",
    "zero_annotation_id": "annotation id 0: pycocotools stores matched ground-truth ids and reads 0 "
                          "as 'unmatched', so a correct detection of it counts as a false positive "
                          "(the ground truth itself scores AP < 100). tumorseg-d2's evaluator "
                          "renumbers; other COCO tools do not. --fix renumbers from 1.",
    "unknown_image": "annotations whose image_id is not in 'images': they are silently dropped by "
                     "loaders. --fix drops them.",
    "unknown_category": "annotations whose category_id is not in 'categories'. --fix drops them.",
    "unused_category": "categories that no annotation uses (a placeholder?): a model trained on "
                       "'categories' would learn a class that never occurs. tumorseg-d2 ignores "
                       "it; --fix removes it.",
    "no_geometry": "annotations without bbox and segmentation. --fix drops them.",
    "degenerate_polygon": "polygons with fewer than 3 points: no mask can be drawn. --fix drops "
                          "the polygon (and the annotation if none is left).",
    "zero_area": "annotations of zero area. --fix drops them.",
    "outside_image": "annotations that extend beyond their image. --fix clips them to the image.",
    "bbox_polygon_mismatch": "bbox disagrees with its polygon by more than 1 px. --fix sets the "
                             "bbox to the polygon's bounds.",
    "tiny_box": f"boxes with a side under {TINY_BOX_SIDE:g} px: implausible for a tumor, likely "
                "stray clicks. --fix drops them.",
    "box_masks": "every polygon is the 4-corner rectangle of its box: there are no tumor outlines, "
                 "so mask AP and Dice measure box fit. Not fixable here; state it with results.",
    "no_annotations": "images without annotations: kept as negative slices in training (and "
                      "counted as true negatives in the slice figures). Check that no tumor was "
                      "missed by the annotator.",
    "missing_image": "files listed in the json but not on disk. --fix drops them and their "
                     "annotations.",
    "unreadable_image": "files that cannot be decoded (corrupt, truncated or not an image). --fix "
                        "drops them and their annotations.",
    "size_mismatch": "width/height in the json differ from the file: boxes would be scaled wrong. "
                     "--fix writes the file's size.",
    "unlisted_file": "image files on disk that the json does not list (not used). --fix does "
                     "not copy them.",
    "exact_duplicate": "images with identical pixels within a split: they weigh twice.",
    "exact_duplicate_across_splits": "images with identical pixels in two splits: the test "
                                     "split contains training images, so its scores are inflated. "
                                     "Remove them from one split.",
    "near_duplicate": "near-identical images within a split (neighbouring slices of one patient).",
    "category_mismatch": "near-duplicate images (neighbouring slices of one patient, their "
                         "thumbnails correlated as --label-min-correlation asks) labelled "
                         "with different tumor classes: one tumor has one type, so one of the two "
                         "labels is wrong, and the model is trained (or scored) against itself. "
                         "Look at each pair and correct the class.",
    "inconsistent_boxes": "boxes of one class on near-duplicate images (neighbouring slices of "
                          "one patient, their thumbnails correlated as --label-min-correlation "
                          f"asks) that overlap with IoU < {AGREEMENT_IOU:g}, so that one "
                          "label, taken as a detection of the other, would not count at AP50: "
                          "the same tumor was boxed by different rules (tightly on one slice, "
                          "with its surroundings on the next, or around another region). "
                          "--pictures DIR draws the pairs. A model sees "
                          "nearly the same pixels in both and cannot learn which rule applies, "
                          "so where a class has many such pairs its AP50 is limited by its "
                          "labels more than by training. Redraw them by one rule, or read that "
                          "class's AP50 with this share.",
    "near_duplicate_across_splits": "near-identical images in two splits: the split is per image, "
                                    "not per patient, so neighbouring slices of one patient are on "
                                    "both sides and valid/test scores are optimistic. Re-split by "
                                    "patient if patient ids are available.",
}


# ---------------------------------------------------------------- value types (no decoding)
def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _rle_problem(seg):
    size, counts = seg.get("size"), seg.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
        return f"RLE size {size!r} is not [height, width]"
    if not (isinstance(counts, str) or
            (isinstance(counts, list) and all(_is_int(c) and c >= 0 for c in counts))):
        return "RLE counts are neither a string nor a list of non-negative integers"
    return None


def image_problem(im, image_dir):
    """Why an image entry cannot be used (None if it can): types, size, a file name that leaves
    the split folder."""
    if not isinstance(im, dict):
        return "malformed_image", f"entry {im!r:.60} is not an object"
    where = f"image {im.get('id')!r} ({im.get('file_name')!r:.80})"
    if not _is_int(im.get("id")):
        return "malformed_image", f"{where}: id {im.get('id')!r} is not an integer"
    name = im.get("file_name")
    if not isinstance(name, str) or not name:
        return "malformed_image", f"{where}: file_name is not a non-empty string"
    for key in ("width", "height"):
        if not (_is_int(im.get(key)) and im[key] > 0):
            return "malformed_image", f"{where}: {key} {im.get(key)!r} is not a positive integer"
    try:
        confined_path(image_dir, name)
    except UnsafeFileError:
        return "unsafe_file_name", f"{where}: file_name leads out of the split folder"
    return None


def annotation_problem(ann):
    """Why an annotation entry cannot be used (None if it can): id types, bbox of 4 finite
    numbers, polygons of finite numbers, well-formed RLE."""
    if not isinstance(ann, dict):
        return f"entry {ann!r:.60} is not an object"
    where = f"annotation {ann.get('id')!r} (image {ann.get('image_id')!r})"
    for key in ("id", "image_id", "category_id"):
        if not _is_int(ann.get(key)):
            return f"{where}: {key} {ann.get(key)!r} is not an integer"
    bbox, seg = ann.get("bbox"), ann.get("segmentation")
    if bbox is not None and not (isinstance(bbox, list) and len(bbox) == 4
                                 and all(_is_number(v) for v in bbox)):
        return f"{where}: bbox {bbox!r:.80} is not 4 finite numbers [x, y, width, height]"
    if isinstance(seg, dict):
        problem = _rle_problem(seg)
        if problem:
            return f"{where}: {problem}"
    elif seg is not None:
        if not isinstance(seg, list) or not all(
                isinstance(p, list) and all(_is_number(v) for v in p) for p in seg):
            return f"{where}: segmentation is neither polygons (lists of finite numbers) nor RLE"
        if any(len(p) % 2 for p in seg):
            return f"{where}: a polygon has an odd number of coordinates"
    if ann.get("iscrowd", 0) not in (0, 1):
        return f"{where}: iscrowd {ann.get('iscrowd')!r} is not 0 or 1"
    return None


def validate_coco(coco, image_dir):
    """(coco with only well-formed entries, {code: [item, ...]} of the entries left out).

    Every later check, the loader and --fix see only the well-formed entries, so a malformed value
    (NaN, a string id, a bbox of 3 numbers, null) is named here and can crash nothing later."""
    dropped = defaultdict(list)
    images = []
    for im in coco["images"]:
        problem = image_problem(im, image_dir)
        if problem:
            dropped[problem[0]].append(problem[1])
        else:
            images.append(im)
    categories = []
    for c in coco["categories"]:
        if isinstance(c, dict) and _is_int(c.get("id")) and isinstance(c.get("name"), str):
            categories.append(c)
        else:
            dropped["malformed_category"].append(f"{c!r:.80}: needs an integer id and a name")
    annotations = []
    for a in coco["annotations"]:
        problem = annotation_problem(a)
        if problem:
            dropped["malformed_annotation"].append(problem)
        else:
            annotations.append(a)
    rle = [f"annotation {a['id']} (image {a['image_id']})" for a in annotations
           if isinstance(a.get("segmentation"), dict)]
    if rle:
        dropped["rle_segmentation"] = rle  # kept (a warning): the loader converts them
    return dict(coco, images=images, annotations=annotations, categories=categories), dropped


def check_structure(coco, image_dir, split):
    """The cheap checks: value types (validate_coco), ids, categories, geometry, listed files
    present. No decoding. Returns (findings, the coco of well-formed entries)."""
    coco, found = validate_coco(coco, image_dir)
    images, anns, cats = coco["images"], coco["annotations"], coco["categories"]
    found["duplicate_image_id"] = _duplicates(im.get("id") for im in images)
    found["duplicate_file_name"] = _duplicates(im.get("file_name") for im in images)
    found["duplicate_annotation_id"] = _duplicates(a.get("id") for a in anns)
    found["zero_annotation_id"] = [a["id"] for a in anns if a.get("id") == 0]
    by_id = {im.get("id"): im for im in images}
    cat_ids = {c.get("id") for c in cats}
    used = Counter(a.get("category_id") for a in anns)
    found["unused_category"] = [f"{c.get('id')} ({c.get('name')!r})" for c in cats
                                if c.get("id") not in used]
    boxes_only = []
    for a in anns:
        where = f"annotation {a.get('id')} (image {a.get('image_id')})"
        image = by_id.get(a.get("image_id"))
        if image is None:
            found["unknown_image"].append(where)
            continue
        where = f"annotation {a.get('id')} ({image.get('file_name')})"
        if a.get("category_id") not in cat_ids:
            found["unknown_category"].append(f"{where}: category_id {a.get('category_id')}")
        for severity, code, detail in annotation_problems(a, image):
            found[code].append(f"{where}: {detail}")
        seg = a.get("segmentation")
        if isinstance(seg, list) and a.get("bbox"):
            boxes_only.append(len(seg) == 1 and is_box_rectangle(seg[0], a["bbox"]))
    if boxes_only and all(boxes_only):
        found["box_masks"] = [f"all {len(boxes_only)} polygons"]
    annotated = {a.get("image_id") for a in anns}
    found["no_annotations"] = [im.get("file_name") for im in images if im.get("id") not in annotated]
    found["missing_image"] = [im.get("file_name") for im in images
                              if not os.path.isfile(os.path.join(image_dir, str(im.get("file_name"))))]
    return [Finding(severity_of(code), code, split, MESSAGES[code], items)
            for code, items in found.items() if items], coco


def severity_of(code):
    warnings = {"rle_segmentation", "zero_annotation_id", "unused_category", "bbox_polygon_mismatch", "tiny_box",
                "box_masks", "no_annotations", "unlisted_file", "exact_duplicate",
                "near_duplicate", "near_duplicate_across_splits", "category_mismatch",
                "inconsistent_boxes"}
    return "warning" if code in warnings else "error"


# ---------------------------------------------------------------- files (decoding)
def read_image(path):
    """(width, height, pixel sha1, 256-bit difference hash, 64x64 thumbnail) or (error, ...)."""
    import imagehash
    from PIL import Image

    try:
        with Image.open(path) as img:
            problem = image_depth_problem(img)
            if problem:
                return f"not_8bit: {problem}", None, None, None, None
            img.load()  # decodes fully: truncated files raise here
            gray = img.convert("L")
            digest = hashlib.sha1(np.asarray(img).tobytes()).hexdigest()
            dhash = imagehash.dhash(gray, hash_size=16).hash.flatten()
            thumb = np.asarray(gray.resize((64, 64), Image.BILINEAR), np.float32).ravel()
            return img.width, img.height, digest, dhash, thumb
    except Exception as e:  # noqa: BLE001 - any decoder failure is the finding
        return f"{type(e).__name__}: {e}", None, None, None, None


def check_files(coco, image_dir, split, workers=2):
    """Decode every listed image; returns (findings, {file: read_image's tuple})."""
    files = [im["file_name"] for im in coco["images"]
             if os.path.isfile(os.path.join(image_dir, str(im.get("file_name"))))]
    with Pool(workers) as pool:
        decoded = dict(zip(files, pool.map(read_image, [os.path.join(image_dir, f) for f in files],
                                           chunksize=16)))
    found = defaultdict(list)
    for im in coco["images"]:
        w, h = decoded.get(im.get("file_name"), (None, None))[:2]
        if h is None and w is not None and w.startswith("not_8bit: "):
            found["not_8bit"].append(f"{im['file_name']}: {w[len('not_8bit: '):]}")
        elif h is None and w is not None:
            found["unreadable_image"].append(f"{im['file_name']}: {w}")
        elif h is not None and (im.get("width"), im.get("height")) != (w, h):
            found["size_mismatch"].append(
                f"{im['file_name']}: json {im.get('width')}x{im.get('height')}, file {w}x{h}")
    listed = {im.get("file_name") for im in coco["images"]}
    found["unlisted_file"] = sorted(
        f for f in os.listdir(image_dir) if f.lower().endswith(IMAGE_EXTENSIONS) and f not in listed)
    return [Finding(severity_of(c), c, split, MESSAGES[c], items)
            for c, items in found.items() if items], decoded


def similar_pairs(hashes, min_similarity=NEAR_DUPLICATE_SIMILARITY, block=2048):
    """(i, j, similarity) for i < j of the difference hashes (bit arrays) whose similarity,
    1 - Hamming distance / bits, is at least ``min_similarity``; in blocks of rows, so that a
    large dataset never holds its whole similarity matrix."""
    bits = np.array(hashes, np.float32).reshape(len(hashes), -1) * 2 - 1  # dot = n - 2 hamming
    pairs = []
    for start in range(0, len(bits), block):
        similarity = 0.5 + 0.5 * (bits[start:start + block] @ bits.T) / bits.shape[1]
        rows, cols = np.nonzero(similarity >= min_similarity)
        keep = cols > rows + start
        pairs += [(int(i) + start, int(j), float(similarity[i, j]))
                  for i, j in zip(rows[keep], cols[keep])]
    return pairs


def _standardized(thumbnails):
    """Thumbnails as rows of zero mean and unit variance: the dot product of two, divided by the
    pixel count, is their Pearson correlation."""
    thumbs = np.array(thumbnails, np.float32).reshape(len(thumbnails), -1)
    return (thumbs - thumbs.mean(1, keepdims=True)) / (thumbs.std(1, keepdims=True) + 1e-6)


def duplicate_findings(fingerprints, min_similarity=NEAR_DUPLICATE_SIMILARITY):
    """Exact and near duplicates over {split: {file: fingerprint}}, within and across splits.

    Near duplicates: difference-hash similarity (1 - Hamming distance / 256) >= min_similarity;
    each pair also reports the Pearson correlation of the two 64x64 grayscale thumbnails."""
    keys = [(s, f) for s, files in fingerprints.items() for f in files]
    if len(keys) < 2:
        return []
    fp = [fingerprints[s][f] for s, f in keys]
    found = defaultdict(list)
    by_digest = defaultdict(list)
    for key, (digest, _, _) in zip(keys, fp):
        by_digest[digest].append(key)
    exact = set()
    for group in by_digest.values():
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                (s1, f1), (s2, f2) = group[i], group[j]
                code = "exact_duplicate" if s1 == s2 else "exact_duplicate_across_splits"
                found[(code, s1 if s1 == s2 else f"{s1}/{s2}")].append(f"{s1}/{f1} = {s2}/{f2}")
                exact.add((group[i], group[j]))
    thumbs = _standardized([t for _, _, t in fp])
    pairs = similar_pairs([d for _, d, _ in fp], min_similarity)
    for i, j, similarity in sorted(pairs, key=lambda p: -p[2]):
        (s1, f1), (s2, f2) = keys[i], keys[j]
        if (keys[i], keys[j]) in exact:
            continue
        corr = float(thumbs[i] @ thumbs[j]) / thumbs.shape[1]
        code = "near_duplicate" if s1 == s2 else "near_duplicate_across_splits"
        found[(code, s1 if s1 == s2 else f"{s1}/{s2}")].append(
            f"{s1}/{f1} ~ {s2}/{f2}: similarity {similarity:.3f}, pixel correlation {corr:.3f}")
    return [Finding(severity_of(code), code, split, MESSAGES[code], items)
            for (code, split), items in sorted(found.items())]


# ---------------------------------------------------------------- labels of near duplicates
def label_agreement(fingerprints, cocos, min_similarity=NEAR_DUPLICATE_SIMILARITY,
                    min_correlation=AGREEMENT_MIN_CORRELATION):
    """How far the labels of near-duplicate images agree, over {split: {file: fingerprint}} and
    {split: coco}.

    For each near-duplicate pair (also with thumbnails correlated at ``min_correlation`` or more)
    whose images both carry boxes: a category mismatch when their sets of categories differ; and,
    class by class, the boxes of the two images matched one to one by the assignment that
    maximises the summed IoU, each match's IoU recorded (a pair with one box of a class on each
    side is one match, whatever their overlap). Images are (split, file) keys. Returns {"pairs":
    how many pairs were compared, "category_mismatch": [(image, image)], "matches": {class name:
    [(image, image, iou)]}, "boxes": {image: {class name: [xywh]}}}."""
    from pycocotools import mask as mask_utils
    from scipy.optimize import linear_sum_assignment

    boxes = {}
    for split, coco in cocos.items():
        names = {c["id"]: str(c.get("name")) for c in coco["categories"]}
        files = {im["id"]: im["file_name"] for im in coco["images"]}
        for a in coco["annotations"]:
            if a["image_id"] in files and a.get("bbox"):
                per_class = boxes.setdefault((split, files[a["image_id"]]), {})
                name = names.get(a["category_id"], str(a["category_id"]))
                per_class.setdefault(name, []).append(a["bbox"])
    keys = [k for k in ((s, f) for s, files in fingerprints.items() for f in files) if k in boxes]
    result = {"pairs": 0, "category_mismatch": [], "matches": defaultdict(list), "boxes": boxes}
    if len(keys) < 2:
        return result
    pairs = similar_pairs([fingerprints[s][f][1] for s, f in keys], min_similarity)
    thumbs = _standardized([fingerprints[s][f][2] for s, f in keys])
    pairs = [(keys[i], keys[j]) for i, j, _ in pairs
             if thumbs[i] @ thumbs[j] / thumbs.shape[1] >= min_correlation]
    result["pairs"] = len(pairs)
    for a, b in pairs:
        if set(boxes[a]) != set(boxes[b]):
            result["category_mismatch"].append((a, b))
        for name in set(boxes[a]) & set(boxes[b]):
            box_a, box_b = np.array(boxes[a][name], float), np.array(boxes[b][name], float)
            iou = mask_utils.iou(box_a, box_b, [0] * len(box_b))
            rows, cols = linear_sum_assignment(-iou)
            result["matches"][name] += [(a, b, float(iou[r, k])) for r, k in zip(rows, cols)]
    return result


def disagreements(agreement):
    """The pairs to look at, worst first: category mismatches, then box matches under
    AGREEMENT_IOU by rising IoU; each (image, image, what differs)."""
    def classes(image):
        return "/".join(sorted(agreement["boxes"][image]))

    low = sorted((iou, a, b, name) for name, matches in agreement["matches"].items()
                 for a, b, iou in matches if iou < AGREEMENT_IOU)
    return ([(a, b, f"{classes(a)} against {classes(b)}")
             for a, b in agreement["category_mismatch"]]
            + [(a, b, f"class {name!r}, box IoU {iou:.2f}") for iou, a, b, name in low])


def agreement_findings(agreement, split):
    """The findings of :func:`label_agreement`; the inconsistent boxes' message gives each class's
    share of matches under AGREEMENT_IOU and median IoU."""
    found = [f"{a[0]}/{a[1]} ~ {b[0]}/{b[1]}: {what}" for a, b, what in disagreements(agreement)]
    mismatched = len(agreement["category_mismatch"])  # listed first
    findings = []
    if mismatched:
        findings.append(Finding(severity_of("category_mismatch"), "category_mismatch", split,
                                MESSAGES["category_mismatch"], found[:mismatched]))
    shares = []
    for name, matches in sorted(agreement["matches"].items()):
        ious = np.array([iou for _, _, iou in matches])
        low = ious < AGREEMENT_IOU
        shares.append(f"class {name!r}: {low.sum()} of {len(ious)} ({100 * low.mean():.1f}%), "
                      f"median IoU {np.median(ious):.2f}")
    if found[mismatched:]:
        findings.append(Finding(severity_of("inconsistent_boxes"), "inconsistent_boxes", split,
                                f"{MESSAGES['inconsistent_boxes']} Matches under IoU "
                                f"{AGREEMENT_IOU:g}, by class: {'; '.join(shares)}.",
                                found[mismatched:]))
    return findings


# ---------------------------------------------------------------- whole data set
def check_splits(splits, deep=True, min_similarity=NEAR_DUPLICATE_SIMILARITY, workers=2,
                 label_min_correlation=AGREEMENT_MIN_CORRELATION):
    """Check {split name: (json path, image folder)}. Returns (findings, errors first; and per
    split the parsed json and the decoded images' properties, which --fix uses)."""
    findings, details = [], {}
    for split, (json_path, image_dir) in splits.items():
        coco, fatal = load_coco(json_path, split)
        findings += fatal
        if coco is None:
            continue
        structure, clean = check_structure(coco, image_dir, split)
        findings += structure
        details[split] = {"coco": clean, "image_dir": image_dir, "decoded": {},
                          "malformed": [(f.code, item) for f in structure
                                        if f.code in MALFORMED for item in f.items]}
        if deep:
            file_findings, details[split]["decoded"] = check_files(coco, image_dir, split, workers)
            findings += file_findings
    if deep:
        fingerprints = fingerprints_of(details)
        findings += duplicate_findings(fingerprints, min_similarity)
        agreement = label_agreement(fingerprints, {s: v["coco"] for s, v in details.items()},
                                    min_similarity, label_min_correlation)
        findings += agreement_findings(agreement, " + ".join(details))
    return sorted(findings, key=lambda f: (f.severity != "error", f.split, f.code)), details


def fingerprints_of(details):
    """{split: {file: (pixel digest, difference hash, thumbnail)}} of the decoded images in
    :func:`check_splits`' details."""
    return {s: {f: d[2:] for f, d in v["decoded"].items() if d[1] is not None}
            for s, v in details.items()}


def report_dict(findings, seconds=None):
    errors = sum(f.severity == "error" for f in findings)
    return {"errors": errors, "warnings": len(findings) - errors, "seconds": seconds,
            "findings": [dict(asdict(f), count=f.count) for f in findings]}


class DatasetCheckError(ValueError):
    pass


def check_at_start(dataset_names, policy="refuse", logger=None):
    """The structure checks on registered datasets before any compute is spent.

    policy "refuse": errors raise DatasetCheckError; "warn": errors are logged; "off": skipped.
    Warnings are always logged, one line per check."""
    if policy == "off":
        return []
    from .datasets import dataset_files

    findings = []
    names = list(dict.fromkeys(dataset_names))
    for name in names:
        files = dataset_files(name)
        if files is None:  # image/mask folders: their loader refuses what it cannot use
            continue
        json_path, image_dir = files
        coco, fatal = load_coco(json_path, name)
        findings += fatal if coco is None else check_structure(coco, image_dir, name)[0]
    findings += patient_findings(names)
    errors = [f for f in findings if f.severity == "error"]
    for f in findings:
        if logger and (f.severity == "warning" or policy == "warn"):
            logger.warning(f"Dataset check, {f.split}: {f.code} ({f.count}, e.g. {f.items[0]})")
    if errors and policy == "refuse":
        lines = "\n".join(f"- {f.split}: {f.code} ({f.count}, e.g. {f.items[0]}): {f.message}"
                          for f in errors)
        raise DatasetCheckError(
            f"The dataset has errors that would fail or silently skew this run:\n{lines}\n"
            "Run tools/check_dataset.py on the split folders for the full list, and --fix OUT to "
            "write a corrected copy (then set DATASETS.TUMORSEG_ROOT OUT); or set DATASETS.CHECK "
            "warn to run anyway.")
    return findings


def patient_findings(dataset_names):
    """An error when a patient's slices lie in more than one of the named datasets (only datasets
    whose records carry patient ids, DATASETS.SOURCE.PATIENT_PATTERN, can be checked)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from .patients import crossing_patients

    splits = {n: DatasetCatalog.get(n) for n in dict.fromkeys(dataset_names)
              if MetadataCatalog.get(n).get("source_format")}
    crossing = crossing_patients(splits)
    if not crossing:
        return []
    return [Finding(
        "error", "patients_cross_splits", " + ".join(splits),
        f"{len(crossing)} patients have slices in more than one of these datasets: the model is "
        "then tested on patients it trained on, and the figures overstate how it fares on a new "
        "patient. Use the splits of one DATASETS.SOURCE (split by patient), or one fold's three "
        "splits.", [f"{p} in {', '.join(names)}" for p, names in crossing.items()])]


def anchor_findings(cfg):
    """(findings, coverage): the config's RPN anchors laid over its training boxes
    (:func:`~tumorseg_d2.modeling.anchor_coverage.anchor_coverage`, None for a model without an
    RPN), and a warning when many boxes reach no anchor at the positive IoU
    (``MODEL.RPN.IOU_THRESHOLDS``), with the anchor sizes that would cover them."""
    from detectron2.data import DatasetCatalog

    from ..modeling.anchor_coverage import anchor_coverage, has_rpn, three_scales_per_level

    if not has_rpn(cfg) or not cfg.DATASETS.TRAIN:
        return [], None
    records = [r for name in cfg.DATASETS.TRAIN for r in DatasetCatalog.get(name)]
    cover = anchor_coverage(cfg, records)
    if cover["uncovered_fraction"] <= ANCHOR_UNCOVERED_WARNING:
        return [], cover
    suggestion = three_scales_per_level(cover["anchor_sizes"])
    return [Finding(
        "warning", "anchor_coverage", " + ".join(cfg.DATASETS.TRAIN),
        f"{anchor_summary(cover)}: the RPN trains each uncovered box on its one best anchor. "
        "More sizes per level cover them, e.g. "
        f"MODEL.ANCHOR_GENERATOR.SIZES \"{suggestion}\"; whether that raises AP takes a "
        "comparison over seeds (on TumorSeg it did not: README, \"Anchors\").",
        [f"{f} {box}" for f, box in cover["uncovered"]])], cover


def anchor_summary(cover):
    if not cover["boxes"]:
        return "the training datasets hold no boxes"
    return (f"{cover['uncovered_fraction']:.1%} of the {cover['boxes']} training boxes (at input "
            f"size {'/'.join(map(str, cover['sizes']))}) reach no anchor at IoU "
            f"{cover['iou_threshold']} (median best IoU {cover['best_iou_median']:.2f}, "
            f"{cover['positives_per_box_mean']:.1f} positive anchors per box)")


def summary_table(findings, show):
    """Console table of findings, ``show`` examples each."""
    rows = []
    for f in findings:
        examples = "; ".join(str(x) for x in f.items[:show])
        more = f" (+{f.count - show} more)" if f.count > show else ""
        rows.append([f.severity, f.split, f.code, f.count, (examples + more)[:110]])
    return tabulate(rows, headers=["severity", "split", "check", "count", "examples"])
