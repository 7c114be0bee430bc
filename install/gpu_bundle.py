#!/usr/bin/env python
"""Pack what a GPU machine without a package registry needs to run tumorseg-d2 (README "On a GPU").

The device machines lent here have Python 3.12 with torch, torchvision, OpenCV, matplotlib, SciPy
and pytest, but not Detectron2 nor the toolkit's other dependencies, and reach no registry; the
working tree that travels to them is limited to 64 MiB. Run here, with the environment of
`make env`, this writes into ``.gpu/`` (git-ignored):

- ``wheels/``: the pure-Python Detectron2 wheel (``install/install_detectron2.py --wheel-dir``) and,
  at their requirements.lock versions, the dependencies that machine lacks, for CPython 3.12;
- ``datasets/tumorseg/``: the TumorSeg test split whole and every k-th image of train and valid
  (their COCO json cut to the kept images): the whole export (91 MB) does not fit.

On the machine, ``source install/gpu_setup.sh`` installs the wheels and points DETECTRON2_DATASETS
at the subset; ``bash install/gpu_session.sh STEP`` runs one step of a GPU session.

Usage:  python install/gpu_bundle.py --data ../shared/datasets/tumorseg [--train-every 2]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Missing from the device image (its package list: /work/.library/device/KINDS.md); the others in
# requirements.lock are there. Compiled ones are fetched as CPython 3.12 wheels, the rest built
# here (fvcore is published as an sdist only).
MISSING_ON_DEVICE = ["pycocotools", "fvcore", "iopath", "yacs", "omegaconf", "termcolor",
                     "ImageHash", "PyWavelets", "pydicom", "nibabel", "shapely"]
COMPILED = {"pycocotools", "PyWavelets", "shapely"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64"]
TRAVEL_LIMIT_MIB = 64
SPLITS = ("train", "valid", "test")
ANNOTATIONS = "_annotations.coco.json"


def pinned_versions(lock=os.path.join(REPO_ROOT, "requirements.lock")):
    pins = {}
    for line in open(lock):
        name, sep, version = line.strip().partition("==")
        if sep:
            pins[name.lower()] = (name, version)
    return pins


def fetch_wheels(wheel_dir):
    pins = pinned_versions()
    pip = [sys.executable, "-m", "pip"]
    specs = {}
    for name in MISSING_ON_DEVICE:
        if name.lower() not in pins:
            sys.exit(f"{name} is not pinned in requirements.lock; add it or drop it here.")
        specs[name] = "==".join(pins[name.lower()])
    compiled = [specs[n] for n in MISSING_ON_DEVICE if n in COMPILED]
    pure = [specs[n] for n in MISSING_ON_DEVICE if n not in COMPILED]
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run(pip + ["download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
                          "3.12", "--implementation", "cp", *platforms, "-d", wheel_dir,
                          *compiled], check=True)
    subprocess.run(pip + ["wheel", "-q", "--no-deps", "-w", wheel_dir, *pure], check=True)
    subprocess.run([sys.executable, os.path.join(REPO_ROOT, "install", "install_detectron2.py"),
                    "--wheel-dir", wheel_dir], check=True)


def subset_split(source, target, every):
    """Copy every ``every``-th image of a split (by image id) with its annotations."""
    coco = json.load(open(os.path.join(source, ANNOTATIONS)))
    images = sorted(coco["images"], key=lambda im: im["id"])[::every]
    kept = {im["id"] for im in images}
    coco["images"] = images
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in kept]
    os.makedirs(target, exist_ok=True)
    for im in images:
        shutil.copyfile(os.path.join(source, im["file_name"]),
                        os.path.join(target, im["file_name"]))
    with open(os.path.join(target, ANNOTATIONS), "w") as f:
        json.dump(coco, f)
    return len(images)


def folder_mib(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
               for f in files) / 2**20


def tracked_mib():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    return sum(os.path.getsize(os.path.join(REPO_ROOT, f)) for f in files
               if f and os.path.isfile(os.path.join(REPO_ROOT, f))) / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="the TumorSeg export (read only)")
    parser.add_argument("--output", default=os.path.join(REPO_ROOT, ".gpu"))
    parser.add_argument("--train-every", type=int, default=2, help="keep every k-th train image")
    parser.add_argument("--valid-every", type=int, default=4, help="keep every k-th valid image")
    args = parser.parse_args()

    if os.path.exists(args.output):
        shutil.rmtree(args.output)
    fetch_wheels(os.path.join(args.output, "wheels"))
    every = {"train": args.train_every, "valid": args.valid_every, "test": 1}
    counts = {split: subset_split(os.path.join(args.data, split),
                                  os.path.join(args.output, "datasets", "tumorseg", split),
                                  every[split]) for split in SPLITS}
    with open(os.path.join(args.output, "datasets", "tumorseg", "SUBSET.json"), "w") as f:
        json.dump({"source": os.path.abspath(args.data), "every": every, "images": counts}, f)
    total = folder_mib(args.output) + tracked_mib()
    print(f"[gpu_bundle] {args.output}: wheels {folder_mib(os.path.join(args.output, 'wheels')):.1f}"
          f" MiB, data {counts} images; with the tracked files {total:.1f} MiB travel "
          f"(limit {TRAVEL_LIMIT_MIB})")
    if total > TRAVEL_LIMIT_MIB:
        sys.exit(f"{total:.1f} MiB would travel, over the device tool's {TRAVEL_LIMIT_MIB} MiB: "
                 "raise --train-every or --valid-every.")


if __name__ == "__main__":
    main()
