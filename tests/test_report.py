"""tools/evaluate.py and the report: known answers through the path users run."""
import json
import math
import os

import pytest

from tumorseg_d2.data import register_tumorseg
from tumorseg_d2.evaluation.pipeline import evaluate_split
from tumorseg_d2.evaluation import GroundTruthModel

from conftest import SCRATCH_CFG, TINY, run_tool
from test_evaluation import NoDetections

OUTPUTS = ("coco_instances_results.json", "metrics.json", "report.md", "pr_bbox.png",
           "pr_segm.png", "confusion_matrix.png", "dice_histogram.png")


def cfg_for(tmp_path):
    from tumorseg_d2.config import get_tumorseg_cfg, merge_config

    return merge_config(get_tumorseg_cfg(), SCRATCH_CFG,
                        ["MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0",
                         "OUTPUT_DIR", str(tmp_path)])


def assert_every_figure_perfect(m, classes):
    for task in ("bbox", "segm"):
        coco = m["coco"][task]
        for k in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100", "agnostic/AP", "agnostic/AR100"):
            assert coco[k] == pytest.approx(100.0), (task, k)
        for c in classes:
            assert coco[f"AP-{c}"] == pytest.approx(100.0) and coco[f"AR100-{c}"] == pytest.approx(100.0)
    for group, s in m["clinical"].items():
        for k in ("sensitivity", "precision", "f1", "slice_sensitivity", "dice_mean_per_image",
                  "dice_pooled", "iou_mean_per_image", "iou_pooled", "pixel_precision",
                  "pixel_recall", "pixel_f1"):
            assert s[k] == pytest.approx(1.0), (group, k)
        assert s["hd95_mean"] == 0.0 and s["missed"] == 0 and s["false_alarms"] == 0
    cm = m["confusion_matrix"]["rows_truth_cols_prediction"]
    assert all(cm[i][j] == 0 for i in range(len(cm)) for j in range(len(cm)) if i != j)


def test_ground_truth_is_perfect_on_every_figure_of_the_real_test_split(real_root, tmp_path):
    register_tumorseg(real_root)
    out = tmp_path / "eval"
    m = evaluate_split(cfg_for(tmp_path), GroundTruthModel("tumorseg_test"), "tumorseg_test",
                       str(out))
    assert m["images"] == 215 and m["clinical"]["all classes"]["tumors"] == 215
    assert_every_figure_perfect(m, ["0", "1"])
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    assert m["evaluation_seconds"] < 60  # seconds, not minutes (benchmark: tools/benchmark_eval.py)
    report = (out / "report.md").read_text()
    assert "Slice specificity is n/a" in report  # every test slice has a tumor: explained
    saved = json.load(open(out / "metrics.json"))
    assert saved["coco"]["segm"]["APs-0"] is None  # NaN written as null, not a bare NaN


def test_ground_truth_is_perfect_on_phantom_outlines(tmp_path):
    from tumorseg_d2.data import make_phantom_dataset

    root = make_phantom_dataset(str(tmp_path / "tumorseg"), {"test": 8}, seed=11,
                                mask_style="outline")
    register_tumorseg(root)
    m = evaluate_split(cfg_for(tmp_path), GroundTruthModel("tumorseg_test"), "tumorseg_test",
                       str(tmp_path / "eval"))
    assert_every_figure_perfect(m, ["0", "1"])


def test_no_predictions_score_zero(phantom_root, tmp_path):
    register_tumorseg(phantom_root)
    m = evaluate_split(cfg_for(tmp_path), NoDetections(), "tumorseg_test", str(tmp_path / "eval"))
    for task in ("bbox", "segm"):
        assert m["coco"][task]["AP"] == 0.0 and m["coco"][task]["AR100"] == 0.0
        assert m["coco"][task]["AP50-0"] == 0.0 and m["coco"][task]["AR100-1"] == 0.0
        assert math.isnan(m["coco"][task]["APs"])  # no small phantom tumor: undefined, not 0
    s = m["clinical"]["all classes"]
    assert s["sensitivity"] == 0.0 and s["pixel_recall"] == 0.0 and s["found"] == 0
    assert "n/a" in (tmp_path / "eval" / "report.md").read_text()


def test_threshold_is_never_chosen_on_the_evaluated_split(phantom_root, tmp_path):
    register_tumorseg(phantom_root)
    with pytest.raises(ValueError, match="evaluated split"):
        evaluate_split(cfg_for(tmp_path), NoDetections(), "tumorseg_test", str(tmp_path),
                       threshold_from="tumorseg_test")


def test_evaluate_cli_with_threshold_from_valid(phantom_root, tmp_path):
    run = tmp_path / "run"
    train = run_tool("train_net.py", "--config-file", SCRATCH_CFG, *TINY, "DATASETS.TUMORSEG_ROOT",
                     phantom_root, "OUTPUT_DIR", str(run), "SOLVER.MAX_ITER", "2",
                     "DATASETS.TEST", "()", "TEST.VAL_LOSS", "False")
    assert train.returncode == 0, train.stderr[-3000:]
    out = tmp_path / "eval"
    proc = run_tool("evaluate.py", "--config-file", SCRATCH_CFG, "--weights",
                    str(run / "model_final.pth"), "--split", "test", "--output", str(out),
                    "--threshold-from", "valid", *TINY, "DATASETS.TUMORSEG_ROOT", phantom_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.load(open(out / "metrics.json"))
    assert m["threshold_source"].startswith("chosen on tumorseg_valid")
    for name in OUTPUTS:
        assert os.path.isfile(out / name), name


class ShiftedTruth(GroundTruthModel):
    """Ground truth moved by a few pixels, with varied scores and one false alarm per image."""

    def forward(self, batched_inputs):
        import torch
        from detectron2.structures import Boxes, Instances

        outs = super().forward(batched_inputs)
        for x, out in zip(batched_inputs, outs):
            k, inst = x["image_id"], out["instances"]
            shift = 3 + 4 * (k % 3)
            fake = Instances(inst.image_size)
            fake.pred_boxes = Boxes(inst.pred_boxes.tensor + shift)
            fake.scores = torch.linspace(0.9, 0.6, len(inst))
            fake.pred_classes = inst.pred_classes
            fake.pred_masks = torch.roll(inst.pred_masks, (shift, shift), dims=(1, 2))
            alarm = Instances(inst.image_size)
            alarm.pred_boxes = Boxes(torch.tensor([[20.0, 20.0, 80.0, 80.0]]))
            alarm.scores = torch.tensor([0.95 if k % 2 else 0.3])  # some outrank true ones
            alarm.pred_classes = torch.tensor([k % 2])
            alarm.pred_masks = torch.zeros((1, *inst.image_size), dtype=torch.bool)
            # Box area 60x60 (medium) but mask area 30x30 (small): mask AP must use the mask's.
            alarm.pred_masks[:, 20:50, 20:50] = True
            out["instances"] = Instances.cat([fake, alarm])
        return outs


def test_report_coco_figures_match_detectron2s_evaluator(phantom_root, tmp_path):
    """Two paths, one answer: the report's COCOeval and Trainer.test (Detectron2's COCOEvaluator)."""
    from tumorseg_d2.engine import Trainer

    register_tumorseg(phantom_root)
    cfg = cfg_for(tmp_path)
    cfg.DATASETS.TEST = ("tumorseg_test",)
    model = ShiftedTruth("tumorseg_test")
    d2 = Trainer.test(cfg, model)
    m = evaluate_split(cfg, model, "tumorseg_test", str(tmp_path / "eval"))
    for task in ("bbox", "segm"):
        assert 0 < d2[task]["AP"] < 100
        for k in ("AP", "AP50", "AP75", "APm", "APl", "AP-0", "AP-1"):
            assert m["coco"][task][k] == pytest.approx(d2[task][k], nan_ok=True), (task, k)
