r"""Predict tumors on images (folders, globs or files): overlays, and COCO-style json.

  tumorseg predict --config-file configs/mask_rcnn_R_18_FPN_scratch_cpu.yaml \
      --weights output/run1/model_best.pth --input scans/ "more/*.png" --output output/predictions --save-json
"""
import argparse
import glob
import math
import os
import sys
import time

from detectron2.data import MetadataCatalog
from tqdm import tqdm

from ..drawing import draw_prediction, save_rgb
from ..engine.run import setup
from ..files import refuse_output_in_training_run, refuse_output_inside_inputs, write_json
from ..predictions import above, dataset_category_ids, to_coco_results
from ..predictor import BatchPredictor, read_input_image
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
    p.add_argument("--backbone-runtime", choices=("torch", "onnxruntime"), default="torch",
                   help="onnxruntime: run ResNet+FPN in ONNX Runtime (README, Performance)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: autocast convolutions and matrix products to bfloat16")
    add_overrides(p)
    return p.parse_args(argv)


# Beside the outputs: INCOMPLETE while a run writes (a killed run leaves it), predict_run.json
# once the set of overlays and json files is complete and consistent.
INCOMPLETE, RUN_SUMMARY = "INCOMPLETE", "predict_run.json"


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
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, INCOMPLETE), "w") as f:
        f.write("tumorseg predict is writing this folder, or was stopped before it finished: "
                "the overlays and json files here may be partial. Rerun with --overwrite.\n")


def expand_inputs(inputs):
    """Image paths from folders (their image files), globs and files, in a stable order."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item)
                           if f.lower().endswith(IMAGE_EXTENSIONS))
        elif any(c in item for c in "*?["):
            found = sorted(glob.glob(item))
        elif os.path.isfile(item):
            found = [item]
        else:
            raise FileNotFoundError(f"--input {item}: no such file, folder or matching glob")
        if not found:
            raise FileNotFoundError(f"--input {item}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
        paths += found
    return paths


def main(argv=None):
    args = parse_args(argv)
    paths = expand_inputs(args.input)
    # Before setup, which writes config.yaml and log.txt into the output as part of this run.
    refuse_output_in_training_run(args.output)
    prepare_output(args.output, args.input, args.overwrite)
    cfg = setup(args.config_file, args.opts, weights=args.weights, check=(),  # reads no dataset
                output=args.output)
    meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    category_ids = dataset_category_ids(meta)
    predictor = BatchPredictor(cfg, batch_size=args.batch_size, on_error="skip",
                               backbone_runtime=args.backbone_runtime, precision=args.precision)
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
    seconds = time.time() - start
    if args.save_json:
        write_json(os.path.join(args.output, "predictions.json"), results, indent=None)
    if errors:
        write_json(os.path.join(args.output, "errors.json"), errors)
    write_json(os.path.join(args.output, RUN_SUMMARY), {
        "images": len(paths), "predicted": done, "errors": len(errors), "detections": detections,
        "score_threshold": args.score_threshold, "weights": args.weights,
        "seconds": round(seconds, 1)})
    os.remove(os.path.join(args.output, INCOMPLETE))
    print(f"{done} images, {detections} detections >= {args.score_threshold}, "
          f"{seconds / max(done, 1):.3f} s per image; overlays in {args.output}")
    if errors:
        print(f"\n{len(errors)} input(s) could not be used (also in "
              f"{os.path.join(args.output, 'errors.json')}):", file=sys.stderr)
        for e in errors:
            print(f"- {e['error']}", file=sys.stderr)
        sys.exit(1)
    return results
