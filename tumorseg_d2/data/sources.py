"""Datasets registered from the config, without Python: ``DATASETS.SOURCE`` names a COCO json or an
image/mask-pair folder, and how to split it.

Names registered for ``DATASETS.SOURCE.NAME`` ``<name>`` (lazily: nothing is read until used):

- ``<name>_train``, ``<name>_valid``, ``<name>_test``: the given splits (a COCO path with
  ``{split}``), or a split by patient with ``SPLIT_FRACTIONS`` and ``SPLIT_SEED``;
- ``<name>_fold<k>_{train,valid,test}`` for k < ``FOLDS``: grouped k-fold cross-validation, each
  patient in the test split of exactly one fold (``tumorseg crossval``).

Records carry ``patient_id`` (from ``PATIENT_PATTERN``; None without one, and the split is then by
image, which is logged) and ``slice_index``. Metadata ``filter_empty`` says whether training drops
the tumor-free slices (``FILTER_EMPTY``).
"""
import functools
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..files import load_json
from .datasets import load_coco_dicts, register_tumorseg
from .folders import load_mask_folder
from .patients import (SPLITS, fold_groups, groups_of, natural_key, patient_of, select,
                       slice_of, split_groups)

logger = logging.getLogger(__name__)
FORMATS = ("coco", "masks")
COLORS = [(255, 64, 64), (64, 160, 255), (64, 220, 64), (255, 200, 0), (200, 64, 255)]


def register_datasets(cfg):
    """Register every dataset the config can name: TumorSeg (DATASETS.TUMORSEG_ROOT) and the
    config's DATASETS.SOURCE."""
    register_tumorseg(cfg.DATASETS.TUMORSEG_ROOT or None)
    if cfg.DATASETS.SOURCE.NAME:
        register_source(cfg)


def source_spec(cfg):
    """DATASETS.SOURCE (and the mask format) as a hashable, checked tuple of items."""
    s = cfg.DATASETS.SOURCE
    if s.FORMAT not in FORMATS:
        raise ValueError(f"DATASETS.SOURCE.FORMAT is {s.FORMAT!r}; use 'coco' (a COCO json and its "
                         "images) or 'masks' (image/mask-pair folders).")
    if not s.ROOT:
        raise ValueError(f"DATASETS.SOURCE.NAME is {s.NAME!r} but DATASETS.SOURCE.ROOT is empty: "
                         "set it to the dataset's folder.")
    if len(s.SPLIT_FRACTIONS) != 3 or min(s.SPLIT_FRACTIONS) < 0 or sum(s.SPLIT_FRACTIONS) <= 0:
        raise ValueError(f"DATASETS.SOURCE.SPLIT_FRACTIONS is {tuple(s.SPLIT_FRACTIONS)}; give "
                         "three non-negative fractions (train, valid, test), e.g. (0.7, 0.15, 0.15).")
    if s.FORMAT == "coco" and not s.JSON:
        raise ValueError("DATASETS.SOURCE.FORMAT coco needs DATASETS.SOURCE.JSON, the annotation "
                         "file relative to ROOT ('{split}' in it for given splits).")
    values = tuple(int(v) for v in s.MASK_VALUES)
    classes = tuple(s.CLASSES)
    if values and len(values) != len(classes):
        raise ValueError(f"DATASETS.SOURCE.MASK_VALUES {values} and CLASSES {classes} must have "
                         "one value per class.")
    root = os.path.expanduser(s.ROOT.replace("${DETECTRON2_DATASETS}",
                                             os.getenv("DETECTRON2_DATASETS", "datasets")))
    return (("format", s.FORMAT), ("root", root), ("json", s.JSON),
            ("images", s.IMAGES), ("mask_suffix", s.MASK_SUFFIX), ("mask_dir", s.MASK_DIR),
            ("image_dir", s.IMAGE_DIR), ("values", values), ("classes", classes),
            ("min_area", int(s.MIN_AREA)), ("polygons", cfg.INPUT.MASK_FORMAT == "polygon"),
            ("patient_pattern", s.PATIENT_PATTERN), ("slice_pattern", s.SLICE_PATTERN),
            ("fractions", tuple(s.SPLIT_FRACTIONS)), ("seed", int(s.SPLIT_SEED)),
            ("folds", int(s.FOLDS)), ("on_error", "warn" if cfg.DATASETS.CHECK == "warn" else
                                      "refuse"))


def register_source(cfg):
    """(Re-)register the names of DATASETS.SOURCE (see the module docstring)."""
    spec = source_spec(cfg)
    opts = dict(spec)
    name = cfg.DATASETS.SOURCE.NAME
    if opts["format"] == "coco":  # the json's categories (CLASSES: chosen by name)
        classes, id_map = coco_classes(spec)
    else:  # dataset ids from 1: results files and pycocotools never see a category id 0
        classes = list(opts["classes"]) or ["tumor"]
        id_map = {k + 1: k for k in range(len(classes))}
    splits = [(split, None) for split in SPLITS] + \
        [(split, k) for k in range(opts["folds"] if opts["folds"] >= 2 else 0) for split in SPLITS]
    for split, fold in splits:
        full = f"{name}_{split}" if fold is None else f"{name}_fold{fold}_{split}"
        # The json the structure check reads: none for a fold drawn from several given splits.
        json_file = "" if fold is not None and given_splits(spec) else \
            os.path.join(opts["root"], opts["json"].format(split=split))
        if full in DatasetCatalog.list():
            DatasetCatalog.remove(full)
            MetadataCatalog.remove(full)
        DatasetCatalog.register(full, functools.partial(source_split, spec, split, fold))
        meta = MetadataCatalog.get(full)
        meta.set(evaluator_type="coco", filter_empty=bool(cfg.DATASETS.SOURCE.FILTER_EMPTY),
                 source_format=opts["format"], source_root=opts["root"],
                 source_json=json_file,
                 source_images=os.path.join(opts["root"], opts["images"].format(split=split)),
                 thing_classes=classes, thing_colors=[COLORS[k % len(COLORS)] for k in range(len(classes))],
                 thing_dataset_id_to_contiguous_id=id_map)


@functools.lru_cache(maxsize=4)
def source_records(spec, split=None):
    """Every record of a source (of one given split for a COCO path with '{split}'), patient ids
    and slice numbers set; cached, the spec being hashable."""
    opts = dict(spec)
    if opts["format"] == "masks":
        return load_mask_folder(
            opts["root"], opts["mask_suffix"], opts["mask_dir"], opts["image_dir"],
            opts["values"], opts["min_area"], opts["polygons"], opts["patient_pattern"],
            opts["slice_pattern"], opts["on_error"])
    json_file = os.path.join(opts["root"], opts["json"].format(split=split))
    image_root = os.path.join(opts["root"], opts["images"].format(split=split))
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO file {json_file} does not exist: check DATASETS.SOURCE.ROOT "
                                "and DATASETS.SOURCE.JSON.")
    records = load_coco_dicts(json_file, image_root)
    _, id_map = coco_classes(spec)
    for r in records:
        r["annotations"] = [dict(a, category_id=id_map[a["category_id"]])
                            for a in r["annotations"] if a["category_id"] in id_map]
        relative = os.path.relpath(r["file_name"], opts["root"])
        r["patient_id"] = patient_of(relative, opts["patient_pattern"])
        r["slice_index"] = slice_of(r["file_name"], opts["slice_pattern"])
    return sorted(records, key=lambda r: (natural_key(r["patient_id"] or ""), r["slice_index"]
                                          or 0, natural_key(r["file_name"])))


def given_splits(spec):
    opts = dict(spec)
    return opts["format"] == "coco" and "{split}" in opts["json"]


def source_split(spec, split, fold=None):
    """The records of one split (or of one cross-validation fold's split) of a source."""
    opts = dict(spec)
    if given_splits(spec) and fold is None:
        return source_records(spec, split)
    if given_splits(spec):  # folds over all the given splits together
        records = [r for s in SPLITS for r in source_records(spec, s)]
    else:
        records = source_records(spec)
    groups = groups_of(records)
    if all(r.get("patient_id") is None for r in records):
        logger.warning(f"{opts['root']}: no patient ids (DATASETS.SOURCE.PATIENT_PATTERN is empty),"
                       " so the split is by image: neighbouring slices of one patient can land on "
                       "both sides and make the figures optimistic.")
    if fold is None:
        chosen = split_groups(groups, opts["fractions"], opts["seed"])
    else:
        fractions = opts["fractions"]
        chosen = fold_groups(groups, opts["folds"], fold, fractions[1] / sum(fractions),
                             opts["seed"])
    return select(records, groups, chosen[split])


@functools.lru_cache(maxsize=4)
def coco_classes(spec):
    """(class names, {json category id: class index}) of a COCO source: the categories that some
    annotation uses (in any given split), or DATASETS.SOURCE.CLASSES by name. A category no
    annotation uses (like Roboflow's placeholder, id 0 'Tumor' of supercategory 'none') is not a
    class, and is reported."""
    opts = dict(spec)
    files = [opts["json"].format(split=s) for s in SPLITS] if given_splits(spec) else [opts["json"]]
    categories, used, zero_ids = {}, set(), []
    for name in files:
        path = os.path.join(opts["root"], name)
        if not os.path.isfile(path):
            continue
        coco = load_json(path)
        categories.update({c["id"]: c["name"] for c in coco.get("categories", [])})
        used |= {a.get("category_id") for a in coco.get("annotations", [])}
        if any(a.get("id") == 0 for a in coco.get("annotations", [])):
            zero_ids.append(name)
    if zero_ids:
        logger.info(f"{', '.join(zero_ids)}: annotation ids start at 0, which pycocotools reads as "
                    "'unmatched'; evaluation renumbers the ground truth from 1.")
    if opts["classes"]:
        by_name = {n: i for i, n in categories.items()}
        missing = [c for c in opts["classes"] if c not in by_name]
        if missing:
            raise ValueError(f"DATASETS.SOURCE.CLASSES {missing} are not categories of "
                             f"{opts['json']} ({sorted(by_name)}).")
        ids = [by_name[c] for c in opts["classes"]]
    else:
        ids = sorted(i for i in categories if i in used)
        unused = {i: n for i, n in categories.items() if i not in used}
        if unused:
            logger.info(f"{opts['json']}: categories {unused} have no annotation: not classes "
                        "(set DATASETS.SOURCE.CLASSES to choose the classes by name).")
    if not ids:
        raise ValueError(f"{opts['json']}: no category has an annotation; set "
                         "DATASETS.SOURCE.CLASSES to the class names.")
    return [categories[i] for i in ids], {i: k for k, i in enumerate(ids)}
