"""Check COCO splits for every defect that costs a user, and a config's splits for patients on both sides; exit 1 on errors (warnings do not fail).

  tumorseg check datasets/tumorseg --json output/check.json
  tumorseg check datasets/tumorseg/train datasets/tumorseg/valid --fix output/tumorseg_fixed
  tumorseg check --config-file configs/lgg/unet_lgg_cpu.yaml

With --config-file, the config's datasets are registered (so their names can be targets), its
DATASETS.TRAIN, VAL and TEST are checked for patients whose slices lie in two of them, and its RPN
anchors against the training boxes at the training input size (a warning when over a quarter of
the boxes reach no anchor at the RPN's positive IoU).
"""
import os
import sys
import time

from detectron2.data import DatasetCatalog

from ..config import get_tumorseg_cfg, merge_config
from ..data.check import (AGREEMENT_MIN_CORRELATION, NEAR_DUPLICATE_SIMILARITY,
                          anchor_findings, anchor_summary, check_splits, disagreements,
                          fingerprints_of, label_agreement, patient_findings, report_dict,
                          summary_table)
from ..data.sources import register_datasets
from ..data.datasets import ANNOTATION_FILE, dataset_files, register_tumorseg
from ..data.fix import write_fixed_copy
from ..drawing import draw_disagreements
from ..files import UnsafeFileError, write_json
from .common import command_parser, split_overrides


def parse_args(argv=None):
    p = command_parser("check", __doc__)
    p.add_argument("targets", nargs="*", help="split folders (holding _annotations.coco.json), a "
                   "dataset root holding split folders, or registered names (tumorseg_train)")
    p.add_argument("--json", metavar="REPORT", help="write the full report (every item) here")
    p.add_argument("--fix", metavar="OUT", help="write a corrected copy of every split to OUT "
                   "(OUT/<split>/...) with OUT/fix_log.md; the input is never written")
    p.add_argument("--quick", action="store_true", help="structure only: no image decoding, no "
                   "duplicate search (what training runs at start-up)")
    p.add_argument("--near-duplicate-similarity", type=float, default=NEAR_DUPLICATE_SIMILARITY,
                   help="difference-hash similarity from which two images are near duplicates "
                   "(default %(default)s)")
    p.add_argument("--label-min-correlation", type=float, default=AGREEMENT_MIN_CORRELATION,
                   help="thumbnail correlation from which near duplicates also count as one "
                   "tumor whose labels are compared (default %(default)s; lower admits more "
                   "pairs, some of two patients' slices at the same level)")
    p.add_argument("--pictures", metavar="DIR", help="draw the near-duplicate pairs whose labels "
                   "disagree, worst first, as PNGs in DIR (pair_NN.png, contact_sheet.png)")
    p.add_argument("--most-pictures", type=int, default=24, help="pairs drawn at most "
                   "(default %(default)s)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--show", type=int, default=2, help="examples per finding in the table")
    p.add_argument("--config-file", help="register this config's datasets and check its splits' "
                   "patients")
    args = p.parse_intermixed_args(argv)
    # KEY VALUE overrides of --config-file come last, after the targets.
    args.targets, args.opts = split_overrides(args.targets)
    if not args.targets and not args.config_file:
        p.error("give split folders, dataset names or --config-file")
    if args.fix and not args.targets:
        p.error("--fix writes a corrected copy of COCO splits: give their folders or names")
    if args.pictures and args.quick:
        p.error("--pictures needs the near duplicates, which --quick does not look for")
    return args


def resolve_targets(targets):
    """{split name: (json, image folder)} from folders and registered dataset names. Two inputs
    that resolve to the same split name are refused (the second would replace the first)."""
    splits = {}

    def add(name, paths):
        if name in splits and os.path.realpath(splits[name][0]) != os.path.realpath(paths[0]):
            raise SystemExit(f"Two inputs resolve to the split name '{name}': {splits[name][1]} and "
                             f"{paths[1]}. The second would replace the first in the report: check "
                             "them in separate runs, or rename one folder.")
        splits[name] = paths

    for target in targets:
        if os.path.isfile(os.path.join(target, ANNOTATION_FILE)):
            add(os.path.basename(os.path.normpath(target)),
                (os.path.join(target, ANNOTATION_FILE), target))
        elif os.path.isdir(target):
            subs = sorted(d for d in os.listdir(target)
                          if os.path.isfile(os.path.join(target, d, ANNOTATION_FILE)))
            if not subs:
                raise SystemExit(f"{target} holds no {ANNOTATION_FILE}, nor split folders that do. "
                                 "Pass a split folder (e.g. datasets/tumorseg/train) or a root "
                                 "holding train/ valid/ test/.")
            for d in subs:
                add(d, (os.path.join(target, d, ANNOTATION_FILE), os.path.join(target, d)))
        elif target in DatasetCatalog.list():
            files = dataset_files(target)
            if files is None:
                raise SystemExit(f"{target} is an image/mask-folder dataset: it has no COCO file "
                                 "to check (its loader refuses unusable pairs). `tumorseg check "
                                 "--config-file CONFIG` checks its patients across the splits.")
            add(target, files)
        else:
            raise SystemExit(f"{target} is neither a folder nor a registered dataset name (e.g. "
                             "tumorseg_train; set DETECTRON2_DATASETS for those).")
    return splits


def draw_label_pairs(details, args):
    agreement = label_agreement(fingerprints_of(details),
                                {s: v["coco"] for s, v in details.items()},
                                args.near_duplicate_similarity, args.label_min_correlation)
    pairs = disagreements(agreement)
    paths = draw_disagreements(pairs, agreement["boxes"],
                               {s: v["image_dir"] for s, v in details.items()}, args.pictures,
                               most=args.most_pictures)
    print(f"\nLabels of near duplicates: {len(pairs)} pairs disagree, the first "
          f"{min(len(pairs), args.most_pictures)} drawn in {args.pictures}"
          + (f" ({os.path.join(args.pictures, 'contact_sheet.png')})." if paths else "."))


def main(argv=None):
    args = parse_args(argv)
    register_tumorseg()
    patient_splits = []
    if args.config_file:
        cfg = merge_config(get_tumorseg_cfg(), args.config_file, args.opts)
        register_datasets(cfg)
        patient_splits = cfg.DATASETS.TRAIN + cfg.DATASETS.VAL + cfg.DATASETS.TEST
    splits = resolve_targets(args.targets)
    start = time.time()
    findings, details = check_splits(splits, deep=not args.quick,
                                     min_similarity=args.near_duplicate_similarity,
                                     workers=args.workers,
                                     label_min_correlation=args.label_min_correlation
                                     ) if splits else ([], {})
    findings += patient_findings(patient_splits)
    cover = None
    if args.config_file:
        found, cover = anchor_findings(cfg)
        findings += found
    seconds = round(time.time() - start, 1)
    report = report_dict(findings, seconds)
    report["splits"] = {s: {"json": j, "images": d} for s, (j, d) in splits.items()}
    print(summary_table(findings, args.show) if findings else "No defects found.")
    print(f"\n{report['errors']} error(s), {report['warnings']} warning(s) in "
          f"{', '.join(list(splits) + [f'patients of {n}' for n in patient_splits])}; checked "
          f"in {seconds} s.")
    for f in findings:
        print(f"\n[{f.severity}] {f.split}: {f.code} ({f.count}): {f.message}")
    if cover:
        print(f"\nRPN anchors ({cover['anchor_sizes']}): {anchor_summary(cover)}.")
        report["anchor_coverage"] = {k: v for k, v in cover.items() if k != "uncovered"}
    if args.json:
        write_json(args.json, report)
        print(f"\nFull report (every item): {args.json}")
    if args.pictures and details:
        draw_label_pairs(details, args)
    if args.fix:
        try:
            changes = write_fixed_copy(details, args.fix, splits.values())
        except UnsafeFileError as e:
            raise SystemExit(str(e)) from e
        print(f"\nCorrected copy in {args.fix} ({len(changes)} changes: "
              f"{os.path.join(args.fix, 'fix_log.md')}). Near duplicates and box-only masks are "
              "reported, not changed.")
        if args.quick:
            print("(--quick: images were not decoded, so unreadable files and exact copies were "
                  "not looked for.)")
    sys.exit(1 if report["errors"] else 0)
