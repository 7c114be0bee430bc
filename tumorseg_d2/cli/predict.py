r"""Predict tumors on images and volumes (folders, globs or files): overlays, COCO-style json; for a volume also its mask as NIfTI, a montage and volume_report.json.

  tumorseg predict --config-file configs/mask_rcnn_R_18_FPN_scratch_cpu.yaml \
      --weights output/run1/model_best.pth --input scans/ "more/*.png" --output output/predictions --save-json
  tumorseg predict --config-file ... --weights ... --input brain.nii.gz dicom_series/ --axis axial \
      --output output/volumes

Images: .jpg .png .bmp .tif. Volumes: NIfTI (.nii, .nii.gz; --axis, --volume-index for 4-D), a
DICOM file, or a folder holding one DICOM series (sorted by position). Volume slices are windowed
to 8 bit by --window (auto: the DICOM window when stated, else the volume's --percentiles).
"""
import argparse
import glob
import math
import os
import shutil
import sys
import time

import numpy as np
from detectron2.data import MetadataCatalog
from tqdm import tqdm

from ..data.volumes import (AXES, DEFAULT_PERCENTILES, NIFTI_SUFFIXES, VolumeError, is_volume_path,
                            read_volume, write_mask_nifti)
from ..drawing import contact_sheet, draw_prediction, save_rgb, titled
from ..engine.run import setup
from ..evaluation.volumes import volume_report
from ..files import refuse_output_in_training_run, refuse_output_inside_inputs, write_json
from ..predictions import above, dataset_category_ids, to_coco_results
from ..modeling.gather_roi_align import ROI_ALIGNS
from ..modeling.int8_box_head import BOX_HEADS
from ..modeling.onnx_backbone import RUNTIMES
from ..predictor import (CALIBRATION_IMAGES, MASK_HEADS, PRECISIONS, BatchPredictor,
                         calibration_sample, dropping_scores_below, predict_volume,
                         read_input_image)
from .common import add_overrides, command_parser

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def parse_args(argv=None):
    p = command_parser("predict", __doc__)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--input", nargs="+", required=True, help="folders, globs or image files")
    p.add_argument("--output", required=True)
    p.add_argument("--score-threshold", type=float, default=0.5)
    p.add_argument("--save-json", action="store_true", help="write predictions.json (COCO style)")
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--overwrite", action="store_true",
                   help="replace the files of an earlier tumorseg predict run in --output")
    p.add_argument("--backbone-runtime", choices=RUNTIMES, default="torch",
                   help="onnxruntime: run ResNet+FPN and the RPN head's convolutions in ONNX "
                        "Runtime; onnxruntime-int8: that, quantized to int8 (needs "
                        "--calibrate-on; README, Performance)")
    p.add_argument("--calibrate-on", nargs="+", metavar="IMAGES",
                   help="folders, globs or files of training images that calibrate the int8 "
                        f"backbone ({CALIBRATION_IMAGES} of them, spread evenly, are used)")
    p.add_argument("--box-head", choices=BOX_HEADS, default="fp32",
                   help="int8: the box head's fully connected layers in int8, quantized "
                        "dynamically (CPU only; README, Performance)")
    p.add_argument("--roi-align", choices=ROI_ALIGNS, default="torchvision",
                   help="gather: pool the regions of all FPN levels at once as weighted gathers "
                        "instead of torchvision's region-by-region CPU kernel; same values, "
                        "faster (README, Performance)")
    p.add_argument("--mask-head", choices=MASK_HEADS, default="fp32",
                   help="bf16: the mask head's layers in bfloat16; pays on CPUs with native "
                        "bfloat16 where slices keep many detections (README, Performance)")
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32",
                   help="bf16: autocast convolutions and matrix products to bfloat16; "
                        "bf16-backbone: only ResNet and FPN's, the heads in fp32")
    volumes = p.add_argument_group("volumes (NIfTI, DICOM)")
    volumes.add_argument("--axis", choices=tuple(AXES), default="axial",
                         help="the slicing plane of a NIfTI volume (default: %(default)s)")
    volumes.add_argument("--volume-index", type=int, help="the volume of a 4-D NIfTI")
    volumes.add_argument("--window", choices=("auto", "dicom", "percentile"), default="auto",
                         help="8-bit windowing of volume slices (default: %(default)s)")
    volumes.add_argument("--percentiles", type=float, nargs=2, metavar=("LOW", "HIGH"),
                         default=list(DEFAULT_PERCENTILES),
                         help="the percentile window (default: %(default)s)")
    add_overrides(p)
    return p.parse_args(argv)


# Beside the outputs: INCOMPLETE while a run writes (a killed run leaves it), predict_run.json
# once the set of overlays and json files is complete and consistent.
INCOMPLETE, RUN_SUMMARY = "INCOMPLETE", "predict_run.json"
VOLUME_FOLDER = "volume_"  # volume_<k>_<name>/: one volume's mask, overlays, montage and report


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of images")
    return value


def prepare_output(output, inputs, overwrite):
    """An empty --output marked INCOMPLETE. A folder holding an earlier run is refused without
    --overwrite, and emptied with it; a folder holding anything else is never emptied."""
    refuse_output_inside_inputs(output, inputs)
    if os.path.isdir(output) and os.listdir(output):
        ours = any(os.path.exists(os.path.join(output, m)) for m in (INCOMPLETE, RUN_SUMMARY))
        if not ours:
            raise SystemExit(f"--output {output} is not empty and was not written by "
                             "tools/predict.py or tumorseg predict: choose a new folder.")
        if not overwrite:
            raise SystemExit(f"--output {output} holds an earlier run's predictions: pass "
                             "--overwrite to replace them, or choose a new folder.")
        for name in os.listdir(output):
            path = os.path.join(output, name)
            if os.path.isfile(path) or os.path.islink(path):
                os.remove(path)
            elif name.startswith(VOLUME_FOLDER) and os.path.isdir(path):  # an earlier volume's
                shutil.rmtree(path)
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, INCOMPLETE), "w") as f:
        f.write("tumorseg predict is writing this folder, or was stopped before it finished: "
                "the overlays and json files here may be partial. Rerun with --overwrite.\n")


def expand_inputs(inputs):
    """Image and volume paths from folders (their image and NIfTI files; a folder holding a DICOM
    series is one volume), globs and files, in a stable order."""
    paths = []
    for item in inputs:
        if os.path.isdir(item) and is_volume_path(item):
            found = [item]
        elif os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item)
                           if f.lower().endswith(IMAGE_EXTENSIONS + NIFTI_SUFFIXES))
        elif any(c in item for c in "*?["):
            found = sorted(glob.glob(item))
        elif os.path.isfile(item):
            found = [item]
        else:
            raise FileNotFoundError(f"--input {item}: no such file, folder or matching glob")
        if not found:
            raise FileNotFoundError(f"--input {item}: no image files ({', '.join(IMAGE_EXTENSIONS)}), "
                                    "NIfTI volumes or DICOM series")
        paths += found
    return paths


def predict_volume_to(predictor, path, args, meta, output):
    """A volume's outputs in ``output``: mask.nii.gz (the input's grid), slices/slice_NNN.png
    overlays, montage.png (the slices with tumor) and volume_report.json; returns the report."""
    volume = read_volume(path, args.axis, args.volume_index)
    slices, window, preds, mask, scores = predict_volume(
        predictor, volume, args.score_threshold, args.window, args.percentiles)
    os.makedirs(os.path.join(output, "slices"), exist_ok=True)
    with_tumor = []
    for k, (image, pred) in enumerate(zip(slices, preds)):
        overlay = draw_prediction(np.repeat(image[:, :, None], 3, axis=2), pred, meta,
                                  args.score_threshold)
        save_rgb(os.path.join(output, "slices", f"slice_{k:03d}.png"), overlay)
        if mask[k].any():
            with_tumor.append(titled(overlay, f"slice {k}"))
    if with_tumor:
        save_rgb(os.path.join(output, "montage.png"),
                 contact_sheet(with_tumor, columns=min(4, len(with_tumor)),
                               tile_width=with_tumor[0].shape[1]))
    write_mask_nifti(volume, mask, os.path.join(output, "mask.nii.gz"))
    report = volume_report(mask, volume.spacing, scores, source=path, window=window,
                           threshold=args.score_threshold)
    report.update(kind=volume.kind, axis=volume.axis, mask="mask.nii.gz",
                  montage="montage.png" if with_tumor else None)
    write_json(os.path.join(output, "volume_report.json"), report)
    return report


def main(argv=None):
    args = parse_args(argv)
    if args.backbone_runtime == "onnxruntime-int8" and not args.calibrate_on:
        raise SystemExit("--backbone-runtime onnxruntime-int8 calibrates its int8 ranges on "
                         "training images: add --calibrate-on FOLDER (your training slices, e.g. "
                         "datasets/tumorseg/train).")
    calibration = calibration_sample(p for p in expand_inputs(args.calibrate_on or [])
                                     if not is_volume_path(p))
    inputs = expand_inputs(args.input)
    volumes = [p for p in inputs if is_volume_path(p)]
    paths = [p for p in inputs if p not in volumes]
    # Before setup, which writes config.yaml and log.txt into the output as part of this run.
    refuse_output_in_training_run(args.output)
    prepare_output(args.output, args.input, args.overwrite)
    cfg = setup(args.config_file, args.opts, weights=args.weights, check=(),  # reads no dataset
                output=args.output)
    meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    category_ids = dataset_category_ids(meta)
    # Only detections >= --score-threshold are written: the box head need not pass on the rest.
    predictor = BatchPredictor(dropping_scores_below(cfg, args.score_threshold),
                               batch_size=args.batch_size, on_error="skip",
                               backbone_runtime=args.backbone_runtime, precision=args.precision,
                               calibration_images=calibration, box_head=args.box_head,
                               roi_align=args.roi_align, mask_head=args.mask_head)
    results, detections, start, done, errors = [], 0, time.time(), 0, []
    for batch in tqdm(predictor.batches(paths), total=math.ceil(len(paths) / args.batch_size),
                      desc="predicting", unit="batch"):
        for x, pred in zip(batch, predictor.predict_batch(batch, masks="rle")):
            path = paths[x["index"]]
            if "error" in pred:  # reported at the end; the other images go on
                errors.append({"file_name": path, "error": pred["error"]})
                continue
            pred["image_id"] = x["index"]
            # The image as the model saw it (EXIF orientation applied), so boxes land in its frame.
            overlay = draw_prediction(read_input_image(path, "RGB"), pred, meta, args.score_threshold)
            stem = os.path.splitext(os.path.basename(path))[0]
            save_rgb(os.path.join(args.output, f"{x['index']:05d}_{stem}.png"), overlay)
            kept = above(pred, args.score_threshold)
            for result, cls in zip(to_coco_results([kept], category_ids), kept["classes"]):
                result.update(file_name=path, category_name=meta.thing_classes[int(cls)])
                results.append(result)
            detections += len(kept["scores"])
            done += 1
    lesions, volumes_done = 0, 0
    for k, path in enumerate(tqdm(volumes, desc="volumes", unit="volume")):
        name = os.path.basename(os.path.normpath(path)).split(".")[0]
        try:
            folder = os.path.join(args.output, f"{VOLUME_FOLDER}{k:03d}_{name}")
            report = predict_volume_to(predictor, path, args, meta, folder)
        except VolumeError as e:  # reported at the end; the other inputs go on
            errors.append({"file_name": path, "error": str(e)})
            continue
        lesions += len(report["lesions"])
        volumes_done += 1
    seconds = time.time() - start
    if args.save_json:
        write_json(os.path.join(args.output, "predictions.json"), results, indent=None)
    if errors:
        write_json(os.path.join(args.output, "errors.json"), errors)
    write_json(os.path.join(args.output, RUN_SUMMARY), {
        "images": len(paths), "volumes": len(volumes), "predicted": done + volumes_done,
        "errors": len(errors), "detections": detections, "volume_lesions": lesions,
        "score_threshold": args.score_threshold, "weights": args.weights,
        "seconds": round(seconds, 1)})
    os.remove(os.path.join(args.output, INCOMPLETE))
    if volumes:
        print(f"{volumes_done} volumes, {lesions} 3-D lesions: mask.nii.gz, montage.png and "
              f"volume_report.json in {args.output}/volume_*")
    if paths or not volumes:
        print(f"{done} images, {detections} detections >= {args.score_threshold}, "
              f"{seconds / max(done, 1):.3f} s per image; overlays in {args.output}")
    if errors:
        print(f"\n{len(errors)} input(s) could not be used (also in "
              f"{os.path.join(args.output, 'errors.json')}):", file=sys.stderr)
        for e in errors:
            print(f"- {e['error']}", file=sys.stderr)
        sys.exit(1)
    return results
