"""Pictures and inference tools: outputs exist, have the right size, and show what they claim."""
import glob
import json
import os

import cv2
import numpy as np

from pycocotools import mask as mask_util

from tumorseg_d2.predictions import above
from tumorseg_d2.predictor import BatchPredictor, dropping_scores_below
from tumorseg_d2.drawing import contact_sheet, draw_overlay

from conftest import SCRATCH_CFG, predictor_cfg, run_tool

COLORS, NAMES = [(255, 64, 64), (64, 160, 255)], ["0", "1"]


def gray_image(h=96, w=128, seed=0):
    g = np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
    return np.repeat(g[:, :, None], 3, axis=2)


def test_overlay_changes_exactly_the_mask_pixels():
    image = gray_image()
    mask = np.zeros(image.shape[:2], bool)
    mask[20:50, 30:70] = True
    mask[60:70, 90:100] = True
    out = draw_overlay(image, [(30, 20, 70, 50)], [1], [mask], NAMES, COLORS, show_boxes=False)
    changed = (out != image).any(axis=2)
    assert np.array_equal(changed, mask)


def test_overlay_boxes_and_labels_stay_near_the_box():
    image = gray_image()
    mask = np.zeros(image.shape[:2], bool)
    mask[40:60, 40:80] = True
    out = draw_overlay(image, [(40, 40, 80, 60)], [0], [mask], NAMES, COLORS, scores=[0.87])
    changed = (out != image).any(axis=2)
    (tw, th), _ = cv2.getTextSize("0 87%", cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    near = np.zeros_like(changed)
    near[38:63, 38:83] = True  # the box and its 2 px outline
    near[40 - th - 4:41, 40:40 + tw + 5] = True  # the label band at its top-left corner
    assert changed[mask].all() and not changed[~near].any()


def test_contact_sheet_layout():
    panels = [np.full((50, 100, 3), v, np.uint8) for v in (10, 20, 30)]
    sheet = contact_sheet(panels, columns=2, tile_width=200)
    assert sheet.shape == (200, 400, 3)
    assert sheet[0, 0, 0] == 10 and sheet[0, 200, 0] == 20 and sheet[100, 0, 0] == 30
    assert sheet[100, 200, 0] == 0  # empty cell


def test_batch_predictor_takes_paths_gray_and_rgb_arrays_of_any_size(checkpoint, monkeypatch):
    weights, root = checkpoint
    files = sorted(glob.glob(os.path.join(root, "test", "*.jpg")))[:3]
    rgb = cv2.cvtColor(cv2.imread(files[0]), cv2.COLOR_BGR2RGB)
    inputs = files + [rgb[:, :, 0], cv2.resize(rgb, (500, 420))]
    predictor = BatchPredictor(predictor_cfg(weights), batch_size=3, num_workers=1)
    calls = []
    inference = predictor.model.inference
    monkeypatch.setattr(predictor.model, "inference",
                        lambda batch, **kw: calls.append(len(batch)) or inference(batch, **kw))
    results = predictor(inputs, masks="array", probability=True)
    assert calls == [3, 2]  # batches, not one image at a time
    assert [(r["height"], r["width"]) for r in results] == [(640, 640)] * 4 + [(420, 500)]
    for r in results:
        assert r["masks"].shape == (len(r["scores"]), r["height"], r["width"])
        assert r["probability"].shape == (r["height"], r["width"])
        assert 0 <= r["probability"].min() and r["probability"].max() <= 1
    with_masks = [r for r in results if len(r["scores"]) and r["masks"][0].any()]
    assert with_masks, "the trained phantom model should detect something"
    # Pasted soft masks agree with the binary ones: inside a detection's mask (soft >= 0.5) the
    # probability map is at least 0.5 (a map of 0/1 or of 1/255 values would fail).
    for r in with_masks:
        assert r["probability"][r["masks"][0]].min() >= 0.5 - 1 / 255
    # The same image as a path and as a grayscale array gives the same detections.
    np.testing.assert_allclose(results[0]["boxes"], results[3]["boxes"], atol=1e-3)


def test_dropping_low_scores_in_the_box_head_keeps_the_detections_above(checkpoint):
    weights, root = checkpoint
    files = sorted(glob.glob(os.path.join(root, "test", "*.jpg")))
    cfg = predictor_cfg(weights, ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.001",
                                  "TEST.DETECTIONS_PER_IMAGE", "100"])
    everything = BatchPredictor(cfg, num_workers=1)(files, masks="rle")
    scores = np.sort(np.concatenate([p["scores"] for p in everything]))
    threshold = float(scores[len(scores) // 2])  # a score itself: one detection lies exactly on it
    assert scores[0] < threshold < scores[-1]
    dropping = dropping_scores_below(cfg, threshold)
    assert dropping.MODEL.ROI_HEADS.SCORE_THRESH_TEST < threshold
    assert dropping_scores_below(dropping, 0.0).MODEL.ROI_HEADS.SCORE_THRESH_TEST == \
        dropping.MODEL.ROI_HEADS.SCORE_THRESH_TEST  # never lowered
    kept = BatchPredictor(dropping, num_workers=1)(files, masks="rle")
    assert sum(len(p["scores"]) for p in kept) == int((scores >= threshold).sum())
    for full, fewer in zip(everything, kept):
        full = above(full, threshold)
        np.testing.assert_array_equal(full["classes"], fewer["classes"])
        np.testing.assert_allclose(full["scores"], fewer["scores"], rtol=1e-6)
        np.testing.assert_allclose(full["boxes"], fewer["boxes"], atol=1e-3)
        for a, b in zip(full["masks"], fewer["masks"]):  # the same up to float rounding
            empty = mask_util.area(a) == mask_util.area(b) == 0
            assert empty or mask_util.iou([a], [b], [0])[0, 0] > 0.99


def test_predict_cli_writes_overlays_and_json(checkpoint, tmp_path):
    weights, root = checkpoint
    out = tmp_path / "pred"
    proc = run_tool("predict.py", "--config-file", SCRATCH_CFG, "--weights", weights,
                    "--input", os.path.join(root, "test"), os.path.join(root, "valid", "1_*.jpg"),
                    "--output", str(out), "--save-json", "--batch-size", "3",
                    "MODEL.DEVICE", "cpu", "DATASETS.TUMORSEG_ROOT", root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    n = len(os.listdir(os.path.join(root, "test"))) - 1 + len(glob.glob(os.path.join(root, "valid", "1_*.jpg")))
    overlays = sorted(out.glob("0*.png"))
    assert len(overlays) == n
    assert cv2.imread(str(overlays[0])).shape == (640, 640, 3)
    dets = json.load(open(out / "predictions.json"))
    assert dets and {d["category_id"] for d in dets} <= {1, 2}
    assert f"{n} images" in proc.stdout and "s per image" in proc.stdout


def test_visualize_cli_sorts_worst_first(checkpoint, tmp_path):
    weights, root = checkpoint
    out = tmp_path / "vis"
    proc = run_tool("visualize.py", "--config-file", SCRATCH_CFG, "--weights", weights,
                    "--split", "test", "--output", str(out), "--num", "3", "--sort", "worst",
                    "MODEL.DEVICE", "cpu", "DATASETS.TUMORSEG_ROOT", root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    panels = sorted(out.glob("0*.png"))
    assert len(panels) == 3
    assert cv2.imread(str(panels[0])).shape == (668, 2560, 3)
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet.shape[1] == 2 * 960 and sheet.shape[0] >= 2 * 250


def test_plot_metrics_cli(phantom_demo, tmp_path):
    out, _ = phantom_demo
    png = tmp_path / "curves.png"
    proc = run_tool("plot_metrics.py", str(out / "train"), str(out / "train"), "--output", str(png))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert cv2.imread(str(png)) is not None
    from tumorseg_d2.evaluation.curves import curve_keys, read_metrics

    keys = curve_keys({"run": read_metrics(str(out / "train"))})
    assert {"total_loss", "loss_mask", "lr", "segm/AP50", "bbox/AP50"} <= set(keys)
