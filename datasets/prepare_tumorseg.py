#!/usr/bin/env python
"""Check a TumorSeg export and make it visible to tumorseg-d2 (a symlink, never a copy of data).

    python datasets/prepare_tumorseg.py /path/to/export [--link datasets/tumorseg]

The export folder holds train/, valid/ and test/, each with images and _annotations.coco.json.
The script checks the layout, the three json files' sha256 against the known 2023-08-19 export,
the image counts, and that every listed image exists; then links the folder to datasets/tumorseg
(Detectron2's default location; DETECTRON2_DATASETS=<parent folder> works without a link).
Exit status 1 on any mismatch.
"""
import argparse
import hashlib
import json
import os
import sys

# Roboflow "TumorSegmentation" export of 2023-08-19 (Kaggle: pkdarabi, brain tumor image dataset).
EXPECTED = {
    "train": (1502, "1937467ffa90d21431bc7b9601dece204d3c753eb60fb4b369d87d19f81e74de"),
    "valid": (429, "d65bf9a690735a1fa83c11997f545d06f7473268da67ca702dd955b264039077"),
    "test": (215, "ce61378a5d7e18438266eaaa79b983ab0b436fdcc2661e6cc053331184a0d1ef"),
}


def check(root):
    problems = []
    for split, (count, digest) in EXPECTED.items():
        json_file = os.path.join(root, split, "_annotations.coco.json")
        if not os.path.isfile(json_file):
            problems.append(f"missing {json_file}")
            continue
        with open(json_file, "rb") as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() != digest:
            problems.append(f"{json_file}: sha256 differs from the 2023-08-19 export (another "
                            "version or an edited file; tumorseg-d2 may still load it)")
        images = json.loads(data)["images"]
        missing = [i["file_name"] for i in images
                   if not os.path.isfile(os.path.join(root, split, i["file_name"]))]
        print(f"{split}: {len(images)} images listed (expected {count}), {len(missing)} missing")
        if len(images) != count:
            problems.append(f"{split}: {len(images)} images, expected {count}")
        if missing:
            problems.append(f"{split}: {len(missing)} listed images missing, e.g. {missing[0]}")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("export", help="folder with train/, valid/, test/")
    parser.add_argument("--link", default=os.path.join(os.path.dirname(__file__), "tumorseg"),
                        help="where to link it (default: datasets/tumorseg); '' to skip")
    args = parser.parse_args()
    problems = check(args.export)
    for p in problems:
        print("PROBLEM:", p)
    if args.link and not os.path.exists(args.link):
        os.symlink(os.path.abspath(args.export), args.link)
        print(f"linked {args.link} -> {os.path.abspath(args.export)}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
