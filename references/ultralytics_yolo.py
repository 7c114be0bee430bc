"""Ultralytics YOLO instance segmentation on a COCO-format split, for a fair fight with the
toolkit (README "Side by side with Ultralytics YOLO").

Not part of the toolkit and not one of its dependencies: it runs in its own environment
(``make yolo-env``: torch, ultralytics, pycocotools; no Detectron2) and talks to the toolkit
only through files. It

1. converts the COCO train and valid splits into YOLO's layout (images linked, one label file
   of normalized polygons per image, an empty one for a tumor-free image);
2. trains a model built from its yaml (no pretrained weights) on the CPU for a fixed wall time,
   choosing ``best.pt`` on the valid split as Ultralytics does;
3. predicts the evaluated split with the chosen weights and writes standard COCO results (the
   json's image and category ids, XYWH boxes, RLE masks at the image's size), which
   ``tools/evaluate.py --results`` and ``tools/compare.py --results yolo=...`` score with the
   toolkit's own evaluator.

Machines differ (an AVX2 machine trains about 1.6x slower than an AVX-512 one), so run both
sides on the same machine and give YOLO the toolkit run's own training time (--hours-of).

Example:
    .venv-yolo/bin/python references/ultralytics_yolo.py \\
        --data ../shared/datasets/tumorseg --hours-of output/recipe_cpu_60min --output output/yolo
    .venv/bin/python tools/compare.py output/recipe_cpu_60min \\
        --results yolo=output/yolo/test_results.json --output output/yolo_vs_recipe
"""
import argparse
import json
import os
import sys
import time

# Before ultralytics is imported: never install packages or reach the network on its own.
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_OFFLINE", "true")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from pycocotools import mask as mask_util  # noqa: E402

SPLITS = {"train": "train", "val": "valid"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__[__doc__.index("Example"):])
    p.add_argument("--data", required=True,
                   help="the dataset root: <root>/<split>/_annotations.coco.json and its images")
    p.add_argument("--output", default="output/yolo", help="folder for everything written")
    p.add_argument("--model", default="yolo11n-seg.yaml",
                   help="an Ultralytics model yaml (trained from scratch), or a .pt to resume or "
                        "to predict with (see --predict-only)")
    p.add_argument("--imgsz", type=int, default=320,
                   help="training and test size (the toolkit's CPU recipe sees 320 px)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--hours", type=float, default=1.0,
                   help="wall time for training; Ultralytics fits its epochs and schedule to it")
    p.add_argument("--hours-of", metavar="RUN",
                   help="instead of --hours: the training time of a toolkit run (its "
                        "training_summary.json), so that both sides get the same time on the "
                        "same machine")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--optimizer", default="AdamW",
                   help="Ultralytics optimizer. Its 'auto' choice counts the placeholder of 1000 "
                        "epochs that a timed run starts with and picks MuSGD, whose Newton-Schulz "
                        "steps take 86%% of a CPU iteration; the few thousand iterations that fit "
                        "in an hour are what its rule gives AdamW for")
    p.add_argument("--lr0", type=float,
                   help="initial learning rate (default: for AdamW, the value of Ultralytics' "
                        "'auto' rule, 0.002 * 5 / (4 + classes); else its default 0.01)")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="torch threads for training and prediction (default: every core, as the "
                        "toolkit uses; Ultralytics alone would take one core less)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="test", help="the split to predict")
    p.add_argument("--conf", type=float, default=0.001,
                   help="score floor of the detections written (low, as AP needs the whole "
                        "precision-recall curve)")
    p.add_argument("--max-det", type=int, default=100)
    p.add_argument("--predict-only", metavar="WEIGHTS",
                   help="skip training; predict --split with these weights")
    return p.parse_args(argv)


def training_hours(run_dir):
    """Wall hours a toolkit run trained, from its training_summary.json (every session, each
    iteration counted once; validation passes included, as they are in YOLO's time)."""
    path = os.path.join(run_dir, "training_summary.json")
    if not os.path.isfile(path):
        sys.exit(f"--hours-of {run_dir}: no training_summary.json there; give a finished "
                 "training run's folder (OUTPUT_DIR).")
    with open(path) as f:
        return json.load(f)["seconds"] / 3600


def load_split(root, split):
    path = os.path.join(root, split, "_annotations.coco.json")
    if not os.path.isfile(path):
        sys.exit(f"No COCO file {path}: --data must hold <split>/_annotations.coco.json.")
    with open(path) as f:
        return json.load(f), os.path.join(root, split)


def used_categories(coco):
    """The category ids that annotations use, in id order: YOLO class k is the k-th. A category
    no annotation uses (Roboflow's placeholder id 0) gets no class."""
    used = {a["category_id"] for a in coco["annotations"]}
    return [c for c in sorted(coco["categories"], key=lambda c: c["id"]) if c["id"] in used]


def polygons_of(ann, height, width):
    """The annotation's outlines as lists of (x, y) pixel pairs: its polygons, the contours of its
    RLE, or its box when it has no usable segmentation."""
    seg = ann.get("segmentation")
    polys = []
    if isinstance(seg, list):
        polys = [np.asarray(p, float).reshape(-1, 2) for p in seg if len(p) >= 6]
    elif isinstance(seg, dict):
        rle = mask_util.frPyObjects(seg, height, width) if isinstance(seg.get("counts"), list) \
            else seg
        mask = mask_util.decode(rle).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        polys = [c.reshape(-1, 2).astype(float) for c in contours if len(c) >= 3]
    if not polys:
        x, y, w, h = ann["bbox"]
        polys = [np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], float)]
    return polys


def write_yolo_split(coco, image_dir, classes, images_out, labels_out):
    """Link the split's images and write one label file per image: ``class x1 y1 x2 y2 ...``
    normalized to [0, 1]. Returns the number of images and of instances written."""
    os.makedirs(images_out, exist_ok=True)
    os.makedirs(labels_out, exist_ok=True)
    index = {c["id"]: k for k, c in enumerate(classes)}
    per_image = {}
    for ann in coco["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann)
    instances = 0
    for img in coco["images"]:
        src = os.path.abspath(os.path.join(image_dir, img["file_name"]))
        dst = os.path.join(images_out, os.path.basename(img["file_name"]))
        if not os.path.lexists(dst):
            os.symlink(src, dst)
        h, w = img["height"], img["width"]
        lines = []
        for ann in per_image.get(img["id"], []):
            for poly in polygons_of(ann, h, w):
                xy = np.clip(poly / [w, h], 0, 1).ravel()
                lines.append(" ".join([str(index[ann["category_id"]])] +
                                      [f"{v:.6f}" for v in xy]))
        instances += len(lines)
        stem = os.path.splitext(os.path.basename(img["file_name"]))[0]
        with open(os.path.join(labels_out, stem + ".txt"), "w") as f:
            f.write("\n".join(lines) + ("\n" if lines else ""))
    return len(coco["images"]), instances


def prepare(args):
    """YOLO's dataset folder and data yaml from the COCO train and valid splits."""
    root = os.path.join(os.path.abspath(args.output), "dataset")
    classes = None
    for yolo_split, split in SPLITS.items():
        coco, image_dir = load_split(args.data, split)
        classes = classes or used_categories(coco)
        n, k = write_yolo_split(coco, image_dir, classes, os.path.join(root, "images", yolo_split),
                                os.path.join(root, "labels", yolo_split))
        print(f"[yolo] {split}: {n} images, {k} instances")
    data_yaml = os.path.join(root, "data.yaml")
    with open(data_yaml, "w") as f:
        f.write(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n")
        f.writelines(f"  {k}: '{c['name']}'\n" for k, c in enumerate(classes))
    with open(os.path.join(root, "classes.json"), "w") as f:
        json.dump([c["id"] for c in classes], f)  # YOLO class k -> COCO category id
    return data_yaml


def use_threads(threads):
    """Ultralytics sets torch to one thread less than the cores (1 of 2 here) whenever it picks
    the CPU; the fight gives both sides the same cores."""
    from ultralytics.utils import torch_utils

    torch_utils.NUM_THREADS = threads


def train(args, data_yaml):
    from ultralytics import YOLO

    use_threads(args.threads)
    if args.lr0 is None:
        classes = len(json.load(open(os.path.join(os.path.dirname(data_yaml), "classes.json"))))
        args.lr0 = round(0.002 * 5 / (4 + classes), 6) if args.optimizer == "AdamW" else 0.01
    model = YOLO(args.model)
    start = time.time()
    model.train(data=data_yaml, imgsz=args.imgsz, batch=args.batch, epochs=1000, time=args.hours,
                optimizer=args.optimizer, lr0=args.lr0,
                device="cpu", workers=args.workers, seed=args.seed, deterministic=True,
                pretrained=False, amp=False, plots=False, project=os.path.abspath(args.output),
                name="train", exist_ok=True, verbose=True)
    seconds = time.time() - start
    best = os.path.join(os.path.abspath(args.output), "train", "weights", "best.pt")
    return best, seconds


def predict(args, weights):
    """COCO results of ``weights`` on --split, with the split json's image and category ids."""
    from ultralytics import YOLO

    coco, image_dir = load_split(args.data, args.split)
    classes_file = os.path.join(os.path.abspath(args.output), "dataset", "classes.json")
    category_ids = json.load(open(classes_file)) if os.path.isfile(classes_file) \
        else [c["id"] for c in used_categories(coco)]
    use_threads(args.threads)
    model = YOLO(weights)
    results, start = [], time.time()
    for k, img in enumerate(coco["images"]):
        path = os.path.join(image_dir, img["file_name"])
        r = model.predict(path, imgsz=args.imgsz, conf=args.conf, max_det=args.max_det,
                          retina_masks=True, device="cpu", verbose=False)[0]
        boxes = r.boxes.xyxy.numpy()
        masks = r.masks.data.numpy() > 0.5 if r.masks is not None else np.zeros((0, 1, 1), bool)
        for box, score, cls, m in zip(boxes, r.boxes.conf.numpy(), r.boxes.cls.numpy(), masks):
            rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            x0, y0, x1, y1 = (float(v) for v in box)
            results.append({"image_id": img["id"], "category_id": category_ids[int(cls)],
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score),
                            "segmentation": rle})
        if (k + 1) % 50 == 0 or k + 1 == len(coco["images"]):
            print(f"[yolo] predicted {k + 1}/{len(coco['images'])} images")
    seconds = time.time() - start
    out = os.path.join(args.output, f"{args.split}_results.json")
    with open(out, "w") as f:
        json.dump(results, f)
    return out, seconds, len(coco["images"])


def main(argv=None):
    args = parse_args(argv)
    if args.hours_of:
        args.hours = training_hours(args.hours_of)
        print(f"[yolo] training for {args.hours * 60:.1f} minutes, as {args.hours_of} did")
    os.makedirs(args.output, exist_ok=True)
    os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(os.path.abspath(args.output), "config"))
    summary = {"model": args.model, "imgsz": args.imgsz, "batch": args.batch, "seed": args.seed,
               "hours": args.hours, "hours_of": args.hours_of, "threads": args.threads,
               "optimizer": args.optimizer}
    if args.predict_only:
        weights = args.predict_only
    else:
        data_yaml = prepare(args)
        weights, summary["train_seconds"] = train(args, data_yaml)
        summary["lr0"] = args.lr0
    summary["weights"] = weights
    out, seconds, n = predict(args, weights)
    summary.update(results=out, split=args.split, predict_seconds=round(seconds, 1), images=n)
    with open(os.path.join(args.output, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"[yolo] {args.split} results: {out} ({n} images, {seconds:.0f} s). Score them with:\n"
          f"  .venv/bin/python tools/evaluate.py --config-file <config> --results {out} "
          f"--split {args.split}")


if __name__ == "__main__":
    main()
