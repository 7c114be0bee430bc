"""Evaluation against known answers, through the path users run (Trainer.test)."""
import contextlib
import io
import json
import math
import os

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tumorseg_d2.config import get_tumorseg_cfg
from tumorseg_d2.data import register_tumorseg
from tumorseg_d2.data.phantom import make_phantom_dataset
from tumorseg_d2.engine import Trainer
from tumorseg_d2.evaluation import GroundTruthModel

from conftest import SCRATCH_CFG

METRICS = ("AP", "AP50", "AP75", "APm", "APl")


def evaluate(model, dataset, output_dir):
    cfg = get_tumorseg_cfg()
    cfg.merge_from_file(SCRATCH_CFG)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(output_dir),
                         "DATASETS.TEST", f"('{dataset}',)", "DATALOADER.NUM_WORKERS", "0"])
    if "agnostic" in dataset:
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    return Trainer.test(cfg, model)


class NoDetections(torch.nn.Module):
    def forward(self, batched_inputs):
        from detectron2.structures import Boxes, Instances

        out = []
        for x in batched_inputs:
            inst = Instances((x["height"], x["width"]))
            inst.pred_boxes = Boxes(torch.zeros(0, 4))
            inst.scores = torch.zeros(0)
            inst.pred_classes = torch.zeros(0, dtype=torch.int64)
            inst.pred_masks = torch.zeros(0, x["height"], x["width"], dtype=torch.bool)
            out.append({"instances": inst})
        return out


def assert_perfect(results, classes):
    for task in ("bbox", "segm"):
        for m in METRICS:
            assert results[task][m] == pytest.approx(100.0), (task, m)
            for c in classes:
                assert results[task][f"{m}-{c}"] == pytest.approx(100.0) or math.isnan(
                    results[task][f"{m}-{c}"]), (task, m, c)
            for c in classes:
                assert results[task][f"AP-{c}"] == pytest.approx(100.0)


def test_oracle_scores_100_on_the_real_test_split(real_root, tmp_path):
    register_tumorseg(real_root)
    results = evaluate(GroundTruthModel("tumorseg_test"), "tumorseg_test", tmp_path)
    assert_perfect(results, ["0", "1"])
    saved = json.load(open(tmp_path / "inference" / "tumorseg_test" / "metrics.json"))
    assert saved["segm"]["AP"] == pytest.approx(100.0)


def test_raw_export_json_would_not_score_100(real_root):
    """Why evaluation converts the ground truth: the export's annotation id 0 costs a match in
    pycocotools (a matched id of 0 reads as 'unmatched'), so even the truth scores below 100."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(os.path.join(real_root, "test", "_annotations.coco.json"))
        dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                 "score": 1.0} for a in gt.dataset["annotations"]]
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] < 0.99


def test_converted_ground_truth_has_no_id_zero_nor_placeholder(real_root, tmp_path):
    register_tumorseg(real_root)
    evaluate(GroundTruthModel("tumorseg_test"), "tumorseg_test", tmp_path)
    gt = json.load(open(tmp_path / "inference" / "tumorseg_test" / "tumorseg_test_coco_format.json"))
    assert min(a["id"] for a in gt["annotations"]) >= 1
    assert {c["id"] for c in gt["categories"]} == {1, 2}


@pytest.mark.parametrize("mask_style", ["box", "outline"])
def test_oracle_scores_100_on_phantoms(tmp_path, mask_style):
    root = make_phantom_dataset(str(tmp_path / "tumorseg"), {"test": 10}, seed=5,
                                mask_style=mask_style)
    register_tumorseg(root)
    results = evaluate(GroundTruthModel("tumorseg_test"), "tumorseg_test", tmp_path / "out")
    assert_perfect(results, ["0", "1"])


def test_results_file_keeps_the_exports_category_ids(phantom_root, tmp_path):
    register_tumorseg(phantom_root)
    evaluate(GroundTruthModel("tumorseg_test"), "tumorseg_test", tmp_path)
    dets = json.load(open(tmp_path / "inference" / "tumorseg_test" / "coco_instances_results.json"))
    raw = json.load(open(os.path.join(phantom_root, "test", "_annotations.coco.json")))
    truth = sorted((a["image_id"], a["category_id"]) for a in raw["annotations"])
    assert sorted({(d["image_id"], d["category_id"]) for d in dets}) == truth


def test_class_agnostic_oracle_is_perfect(phantom_root, tmp_path):
    register_tumorseg(phantom_root)
    results = evaluate(GroundTruthModel("tumorseg_agnostic_test"), "tumorseg_agnostic_test",
                       tmp_path)
    assert_perfect(results, ["tumor"])


def test_no_detections_score_zero_not_nan(phantom_root, tmp_path):
    register_tumorseg(phantom_root)
    results = evaluate(NoDetections(), "tumorseg_test", tmp_path)
    for task in ("bbox", "segm"):
        for m in ("AP", "AP50", "AP75"):
            assert results[task][m] == 0.0
            assert results[task][f"{m}-0"] == 0.0 and results[task][f"{m}-1"] == 0.0
        # No phantom tumor is small (< 32x32 px): that figure has no ground truth, so NaN.
        assert math.isnan(results[task]["APs"])


def test_ground_truth_is_converted_by_the_main_process_only(phantom_root, tmp_path, monkeypatch):
    """Every process builds the evaluator: a process other than the main one must neither remove
    nor rewrite the conversion (removing the main process's fresh file as "stale" cost a rank its
    ground truth in a two-process run), while the main one replaces a stale file."""
    from detectron2.utils import comm

    from tumorseg_d2.evaluation import TumorCOCOEvaluator

    register_tumorseg(phantom_root)
    path = tmp_path / "tumorseg_test_coco_format.json"
    path.write_text('{"stale": true}')
    TumorCOCOEvaluator("tumorseg_test", str(tmp_path))  # the main process
    fresh = path.read_text()
    assert "stale" not in fresh and json.loads(fresh)["annotations"]
    written = path.stat().st_mtime_ns
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    other = TumorCOCOEvaluator("tumorseg_test", str(tmp_path))
    assert path.stat().st_mtime_ns == written and path.read_text() == fresh
    assert len(other._coco_api.getAnnIds()) == len(json.loads(fresh)["annotations"])
