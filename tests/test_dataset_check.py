"""tools/check_dataset.py: every planted defect is found, --fix repairs a copy, the real data's
known defects are reported, and training refuses a broken dataset before spending compute."""
import copy
import json
import os
import re
import shutil

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tumorseg_d2.data import make_phantom_dataset

from conftest import SCRATCH_CFG, TINY, run_tool

ANN = "_annotations.coco.json"


def findings_of(report_path):
    report = json.load(open(report_path))
    by_key = {}
    for f in report["findings"]:
        by_key.setdefault((f["split"], f["code"]), []).extend(f["items"])
    return report, by_key


def test_real_data_known_defects(real_root, tmp_path):
    """Every defect the dataset's README lists, plus the id convention that costs AP."""
    report_path = str(tmp_path / "report.json")
    proc = run_tool("check_dataset.py", real_root, "--json", report_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]  # warnings only
    report, found = findings_of(report_path)
    assert report["errors"] == 0
    for split in ("train", "valid", "test"):
        assert found[(split, "unused_category")] == ["0 ('Tumor')"]  # the placeholder
        assert found[(split, "zero_annotation_id")] == [0]
        assert len(found[(split, "box_masks")]) == 1  # no tumor outlines, only rectangles
    assert found[("train", "no_annotations")] == ["2369_jpg.rf.8b8afa9d79c61fa42ca128c940b9cbc0.jpg"]
    assert len(found[("train", "tiny_box")]) == 1 and "2.5 x 7.5 px" in found[("train", "tiny_box")][0]
    cross = sum(len(v) for (s, c), v in found.items() if c == "near_duplicate_across_splits")
    assert cross >= 100, cross  # per-image split: hundreds of correlated slices across splits
    pair = found[("train/valid", "near_duplicate_across_splits")][0]
    assert "similarity" in pair and "pixel correlation" in pair
    assert not any(c in ("missing_image", "unreadable_image", "size_mismatch", "unlisted_file")
                   for _, c in found)
    # The gliomas' boxes disagree between near-identical slices far more often than class "1"'s
    # (README "Checking a dataset": 30 of 123 matches against 4 of 78).
    boxes = next(f for f in report["findings"] if f["code"] == "inconsistent_boxes")
    share = {name: int(low) / int(n) for name, low, n in
             re.findall(r"class '(\d)': (\d+) of (\d+)", boxes["message"])}
    assert share["0"] > 0.15 and share["0"] > 3 * share["1"], boxes["message"]
    print(f"checker on the full dataset: {report['seconds']} s")


@pytest.fixture
def broken(tmp_path):
    """A phantom data set with one of each defect planted (train and test)."""
    root = make_phantom_dataset(str(tmp_path / "data"), counts={"train": 14, "valid": 3, "test": 3})
    train = os.path.join(root, "train")
    coco = json.load(open(os.path.join(train, ANN)))
    imgs, anns = coco["images"], coco["annotations"]
    files = [im["file_name"] for im in imgs]
    os.remove(os.path.join(train, files[0]))  # missing
    data = open(os.path.join(train, files[1]), "rb").read()
    open(os.path.join(train, files[1]), "wb").write(data[: len(data) // 2])  # truncated
    imgs[2]["width"] = 600  # size mismatch
    shutil.copy(os.path.join(train, files[3]), os.path.join(train, "same_id.jpg"))
    imgs.append(dict(imgs[3], file_name="same_id.jpg"))  # duplicate image id (and exact copy)
    shutil.copy(os.path.join(train, files[4]), os.path.join(train, "not_listed.jpg"))
    by_image = {a["image_id"]: a for a in anns}
    a = [by_image[im["id"]] for im in imgs[5:14] if im["id"] in by_image]
    a[0]["id"] = a[1]["id"]  # duplicate annotation id
    a[2]["category_id"] = 7  # unknown category
    a[3]["segmentation"] = [[10, 10, 20, 20]]  # degenerate polygon
    a[4]["bbox"][2] = 0  # zero area
    a[4]["segmentation"] = [[30, 30, 40, 40, 50, 50]]
    a[5]["bbox"] = [620, 100, 60, 40]  # outside the 640 px image
    a[5]["segmentation"] = [[620, 100, 680, 100, 680, 140, 620, 140]]
    a[6]["bbox"][0] += 25  # box disagrees with its polygon
    x, y = a[7]["bbox"][:2]
    a[7]["bbox"], a[7]["segmentation"] = [x, y, 2, 6], [[x, y, x + 2, y, x + 2, y + 6, x, y + 6]]
    json.dump(coco, open(os.path.join(train, ANN), "w"))

    test = os.path.join(root, "test")
    tcoco = json.load(open(os.path.join(test, ANN)))
    shutil.copy(os.path.join(train, files[5]), os.path.join(test, "leaked.jpg"))
    tcoco["images"].append(dict(imgs[5], id=99, file_name="leaked.jpg"))  # train image in test
    json.dump(tcoco, open(os.path.join(test, ANN), "w"))
    return root, files, a


def test_checker_finds_every_planted_defect_and_fix_repairs_a_copy(broken, tmp_path):
    root, files, a = broken
    report_path = str(tmp_path / "report.json")
    before = {s: open(os.path.join(root, s, ANN)).read() for s in ("train", "valid", "test")}
    proc = run_tool("check_dataset.py", root, "--json", report_path, "--fix", str(tmp_path / "fixed"))
    assert proc.returncode == 1  # errors found
    _, found = findings_of(report_path)

    def items(code, split="train"):
        return " | ".join(map(str, found.get((split, code), [])))

    assert files[0] in items("missing_image")
    assert files[1] in items("unreadable_image")
    assert files[2] in items("size_mismatch") and "json 600x640, file 640x640" in items("size_mismatch")
    assert found[("train", "duplicate_image_id")] and "same_id.jpg" in items("exact_duplicate")
    assert found[("train", "duplicate_annotation_id")] == [a[1]["id"]]
    assert f"annotation {a[2]['id']} " in items("unknown_category")
    assert f"annotation {a[3]['id']} " in items("degenerate_polygon")
    assert f"annotation {a[4]['id']} " in items("zero_area")
    assert f"annotation {a[5]['id']} " in items("outside_image")
    assert f"annotation {a[6]['id']} " in items("bbox_polygon_mismatch")
    assert f"annotation {a[7]['id']} " in items("tiny_box")
    assert items("unlisted_file") == "not_listed.jpg"
    leak = items("exact_duplicate_across_splits", "test/train")
    assert f"train/{files[5]}" in leak and "test/leaked.jpg" in leak
    assert "error(s)" in proc.stdout and "severity" in proc.stdout  # the summary table

    # The input is untouched; the copy passes the checker without errors; every change is logged.
    assert before == {s: open(os.path.join(root, s, ANN)).read() for s in before}
    fixed = str(tmp_path / "fixed")
    log = [json.loads(x) for x in open(os.path.join(fixed, "fix_log.jsonl"))]
    actions = {(c["split"], c["action"]) for c in log}
    assert {("train", "drop image"), ("train", "fix size"), ("train", "drop annotation"),
            ("train", "clip"), ("train", "set bbox"), ("train", "renumber annotation ids"),
            ("train", "drop category"), ("test", "drop image")} <= actions
    assert any("exact copy of train/" in c["detail"] for c in log if c["split"] == "test")
    again = run_tool("check_dataset.py", fixed, "--json", str(tmp_path / "again.json"))
    assert again.returncode == 0, again.stdout[-3000:]
    _, refound = findings_of(str(tmp_path / "again.json"))
    assert not {c for _, c in refound} & {"tiny_box", "bbox_polygon_mismatch", "unlisted_file",
                                          "zero_annotation_id", "unused_category"}


@pytest.mark.parametrize("content, code", [("{not json", "not_json"),
                                           ('{"images": []}', "not_coco")])
def test_not_coco_is_an_error_that_says_so(tmp_path, content, code):
    split = tmp_path / "train"
    split.mkdir()
    (split / ANN).write_text(content)
    proc = run_tool("check_dataset.py", str(split), "--json", str(tmp_path / "r.json"))
    assert proc.returncode == 1
    _, found = findings_of(str(tmp_path / "r.json"))
    assert ("train", code) in found
    assert "COCO" in proc.stdout or "JSON" in proc.stdout


def oracle_ap(images, anns, cats):
    """bbox AP of the ground truth fed back as detections, by pycocotools."""
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": cats}
    gt.createIndex()
    dets = gt.loadRes([{"image_id": a["image_id"], "category_id": a["category_id"],
                        "bbox": a["bbox"], "score": 1.0} for a in anns])
    ev = COCOeval(gt, dets, "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    return ev.stats[0]


@pytest.mark.parametrize("convention, perfect", [
    ("ids from 1", True), ("image id 0", True), ("category id 0", True),
    ("annotation id 0", False)])
def test_which_id_conventions_cost_ap_in_pycocotools(convention, perfect):
    """Why the checker flags annotation id 0 (and only that): pycocotools' evaluateImg stores the
    matched ground-truth id in dtm, and accumulate counts dtm == 0 as a false positive."""
    images = [{"id": i, "width": 100, "height": 100} for i in (1, 2)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900,
             "iscrowd": 0} for i in (1, 2)]
    cats = [{"id": 1, "name": "tumor"}]
    images, anns, cats = copy.deepcopy((images, anns, cats))
    if convention == "image id 0":
        images[0]["id"], anns[0]["image_id"] = 0, 0
    elif convention == "category id 0":
        cats[0]["id"] = 0
        for a in anns:
            a["category_id"] = 0
    elif convention == "annotation id 0":
        anns[0]["id"] = 0
    ap = oracle_ap(images, anns, cats)
    assert np.isclose(ap, 1.0) == perfect, ap


def test_training_refuses_a_broken_dataset_before_any_compute(tmp_path):
    root = make_phantom_dataset(str(tmp_path / "data"), counts={"train": 4, "valid": 2, "test": 2})
    path = os.path.join(root, "valid", ANN)
    coco = json.load(open(path))
    coco["annotations"][0]["category_id"] = 9
    json.dump(coco, open(path, "w"))
    args = ["--config-file", SCRATCH_CFG, *TINY, "DATASETS.TUMORSEG_ROOT", root,
            "OUTPUT_DIR", str(tmp_path / "run"), "SOLVER.MAX_ITER", "1"]
    proc = run_tool("train_net.py", *args)
    assert proc.returncode != 0
    assert "tumorseg_valid: unknown_category" in proc.stderr
    assert "tools/check_dataset.py" in proc.stderr and "DATASETS.CHECK warn" in proc.stderr
    assert not os.path.exists(tmp_path / "run" / "metrics.json")  # nothing trained


def test_labels_of_near_duplicates_known_answers(tmp_path):
    """Pairs of identical slices whose labels agree (IoU 0.6), would not match each other at AP50 (IoU
    1/7), change class, or list two boxes in another order (matched one to one: IoU 1 each)."""
    from tumorseg_d2.data.check import check_splits, label_agreement

    split = tmp_path / "train"
    split.mkdir()
    rng = np.random.default_rng(0)
    boxes = {"agree": ([[1, [10, 10, 40, 40]]], [[1, [20, 10, 40, 40]]]),
             "contradict": ([[1, [10, 10, 40, 40]]], [[1, [40, 10, 40, 40]]]),
             "class": ([[1, [10, 10, 40, 40]]], [[2, [10, 10, 40, 40]]]),
             "order": ([[2, [5, 5, 20, 20]], [2, [60, 60, 30, 30]]],
                       [[2, [60, 60, 30, 30]], [2, [5, 5, 20, 20]]])}
    images, anns = [], []
    for name, sides in boxes.items():
        noise = rng.integers(0, 256, (96, 96), np.uint8)  # unlike every other pair's noise
        for side, labels in zip("ab", sides):
            cv2.imwrite(str(split / f"{name}_{side}.png"), noise)
            images.append({"id": len(images) + 1, "file_name": f"{name}_{side}.png",
                           "width": 96, "height": 96})
            for category, (x, y, w, h) in labels:
                anns.append({"id": len(anns) + 1, "image_id": images[-1]["id"],
                             "category_id": category, "bbox": [x, y, w, h], "area": w * h,
                             "iscrowd": 0, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "glioma"}, {"id": 2, "name": "meningioma"}]}
    json.dump(coco, open(split / ANN, "w"))

    findings, details = check_splits({"train": (str(split / ANN), str(split))}, workers=1)
    fingerprints = {"train": {f: d[2:] for f, d in details["train"]["decoded"].items()}}
    agreement = label_agreement(fingerprints, {"train": details["train"]["coco"]})
    assert agreement["pairs"] == 4  # each slice is a near duplicate of its twin only
    # Pairs are kept only where the pictures correlate at min_correlation (identical here: 1).
    assert label_agreement(fingerprints, {"train": details["train"]["coco"]},
                           min_correlation=1.01)["pairs"] == 0
    assert agreement["category_mismatch"] == [(("train", "class_a.png"), ("train", "class_b.png"))]
    ious = {name: sorted(round(iou, 4) for _, _, iou in matches)
            for name, matches in agreement["matches"].items()}
    assert ious == {"glioma": [round(1 / 7, 4), 0.6], "meningioma": [1.0, 1.0]}

    found = {f.code: f for f in findings}
    assert found["category_mismatch"].items == [
        "train/class_a.png ~ train/class_b.png: glioma against meningioma"]
    assert found["inconsistent_boxes"].items == [
        "train/contradict_a.png ~ train/contradict_b.png: class 'glioma', box IoU 0.14"]
    assert "class 'glioma': 1 of 2 (50.0%), median IoU 0.37" in found["inconsistent_boxes"].message
    assert "class 'meningioma': 0 of 2 (0.0%), median IoU 1.00" in found["inconsistent_boxes"].message
    assert all(f.severity == "warning" and "{" not in f.message for f in found.values())

    # --pictures draws the two disagreeing pairs, the class change first.
    out = tmp_path / "pictures"
    proc = run_tool("check_dataset.py", str(split), "--pictures", str(out), "--workers", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 pairs disagree, the first 2 drawn" in proc.stdout
    assert sorted(os.listdir(out)) == ["contact_sheet.png", "pair_01.png", "pair_02.png"]
    first = cv2.imread(str(out / "pair_01.png"))
    assert first.shape[1] == 2 * 320 and first.shape[0] > 320  # two tiles under the title bands


def test_anchor_coverage_known_boxes():
    """Two 640 px slices trained at 320 px: a 64 px box (32 px after the resize, one of the
    P3 anchors exactly) is covered; a 90 px box (45 px) falls between the 32 and 64 px anchors
    (best IoU 32^2/45^2 = 0.506), and is covered once each level has three sizes (40.3 px:
    0.803). The check warns on the second config and names the box in the file's pixels."""
    from detectron2.data import DatasetCatalog

    from tumorseg_d2.config import get_tumorseg_cfg, merge_config
    from tumorseg_d2.data.check import anchor_findings, anchor_summary
    from tumorseg_d2.modeling.anchor_coverage import anchor_coverage, three_scales_per_level

    def record(name, box):
        return {"file_name": name, "height": 640, "width": 640, "image_id": name,
                "annotations": [{"bbox": box, "bbox_mode": 0, "category_id": 0}]}  # XYXY_ABS

    records = [record("fits.png", [288, 288, 352, 352]), record("between.png", [275, 275, 365, 365])]
    cfg = merge_config(get_tumorseg_cfg(), SCRATCH_CFG, [])  # anchors 16-256, one per level, 320 px
    cover = anchor_coverage(cfg, records)
    assert cover["boxes"] == 2 and cover["iou_threshold"] == 0.7 and cover["sizes"] == [320]
    assert cover["uncovered_fraction"] == 0.5
    assert cover["best_iou_median"] == pytest.approx((1.0 + 32 ** 2 / 45 ** 2) / 2, abs=1e-4)
    assert cover["uncovered"] == [("between.png", [275.0, 275.0, 365.0, 365.0])]
    assert cover["positives_per_box_mean"] >= 1  # the uncovered box keeps its best anchor
    empty = anchor_coverage(cfg, [dict(records[0], annotations=[])])
    assert empty["boxes"] == 0 and anchor_summary(empty) == "the training datasets hold no boxes"

    three = three_scales_per_level(cfg.MODEL.ANCHOR_GENERATOR.SIZES)
    assert three[0] == [16, 20.16, 25.4] and three[1] == [32, 40.32, 50.8]
    denser = merge_config(get_tumorseg_cfg(), SCRATCH_CFG,
                          ["MODEL.ANCHOR_GENERATOR.SIZES", str(three)])
    cover = anchor_coverage(denser, records)
    assert cover["uncovered_fraction"] == 0.0 and cover["uncovered"] == []

    DatasetCatalog.register("anchor_check_train", lambda: records)
    try:
        cfg.DATASETS.TRAIN = denser.DATASETS.TRAIN = ("anchor_check_train",)
        [finding], cover = anchor_findings(cfg)
        assert cover["uncovered_fraction"] == 0.5
        assert finding.code == "anchor_coverage" and finding.severity == "warning"
        assert finding.items == ["between.png [275.0, 275.0, 365.0, 365.0]"]
        assert "50.0% of the 2 training boxes" in finding.message and str(three) in finding.message
        assert anchor_findings(denser)[0] == []
        cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"  # no RPN, nothing to check
        assert anchor_findings(cfg) == ([], None)
    finally:
        DatasetCatalog.remove("anchor_check_train")
