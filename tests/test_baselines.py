"""The semantic-segmentation baselines: architectures, probabilities to instances, training and
evaluation through the standard tools, and the comparison table."""
import csv
import json
import os

import numpy as np
import pytest
import torch
import yaml
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from conftest import CONFIGS, run_tool
from tumorseg_d2.evaluation.clinical import truth_of
from tumorseg_d2.predictions import from_instances
from tumorseg_d2.config import get_tumorseg_cfg
from tumorseg_d2.data import register_tumorseg
from tumorseg_d2.modeling import probability_to_instances
from tumorseg_d2.modeling.pixel_seg import soft_dice_loss
from tumorseg_d2.predictor import BatchPredictor
from tumorseg_d2.evaluation.pipeline import evaluate_predictions

BASELINES = os.path.join(CONFIGS, "baselines")
PIXEL_CONFIGS = ["encoder_decoder_2level", "encoder_decoder_3level", "residual_encoder_decoder",
                 "unet"]


def pixel_model(name, **overrides):
    cfg = get_tumorseg_cfg()
    cfg.merge_from_file(os.path.join(BASELINES, f"{name}.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return build_model(cfg)


def conv(cin, cout, k, bias=True):
    return cin * cout * k * k + (cout if bias else 0)


def unet_parameters(widths=(16, 32, 64, 128, 256), bridge=512):
    """The U-Net of the issue counted by hand: each block conv3x3+BN, conv3x3+BN (bias, and 2
    parameters per channel of BN); 2x2 transposed convs; a 1x1 head."""
    def block(cin, cout):
        return conv(cin, cout, 3) + 2 * cout + conv(cout, cout, 3) + 2 * cout

    chans = (1,) + widths
    total = sum(block(a, b) for a, b in zip(chans, chans[1:])) + block(widths[-1], bridge)
    ups = (bridge,) + tuple(reversed(widths))
    total += sum(conv(a, b, 2) for a, b in zip(ups, ups[1:]))
    total += sum(block(2 * w, w) for w in widths)
    return total + conv(widths[0], 1, 1)


def test_parameter_counts_match_the_described_architectures():
    counts = {name: sum(p.numel() for p in pixel_model(name).parameters())
              for name in PIXEL_CONFIGS}
    # conv 32 + conv 64 (3x3) and 2x2 transposed convs 64->32->1.
    assert counts["encoder_decoder_2level"] == conv(1, 32, 3) + conv(32, 64, 3) + conv(64, 32, 2) \
        + conv(32, 1, 2) == 27_169
    assert counts["encoder_decoder_3level"] == conv(1, 32, 3) + conv(32, 64, 3) + conv(64, 128, 3) \
        + conv(128, 64, 2) + conv(64, 32, 2) + conv(32, 1, 2) == 133_857
    assert counts["unet"] == unet_parameters()
    # The published sizes: about 27, 134 and 436 thousand.
    for name, published in (("encoder_decoder_2level", 27_000), ("encoder_decoder_3level", 134_000),
                            ("residual_encoder_decoder", 436_000)):
        assert abs(counts[name] - published) / published < 0.02, (name, counts[name])


@pytest.mark.parametrize("name", PIXEL_CONFIGS)
def test_networks_map_a_slice_to_one_logit_per_pixel(name):
    model = pixel_model(name).eval()
    image = torch.randint(0, 255, (3, 200, 300), dtype=torch.uint8)  # any size, 3 equal channels
    with torch.no_grad():
        out = model([{"image": image, "height": 400, "width": 600}])[0]
    assert out["probability"].shape == (400, 600)
    assert 0 <= float(out["probability"].min()) and float(out["probability"].max()) <= 1


def test_input_size_must_suit_the_network():
    with pytest.raises(ValueError, match="MODEL.PIXEL_SEG.INPUT_SIZE is 250.*multiple of 32"):
        pixel_model("unet", **{"MODEL.PIXEL_SEG.INPUT_SIZE": 250})


def test_components_become_instances():
    prob = np.zeros((40, 60), np.float32)
    prob[5:15, 10:30] = 0.9     # 10 x 20 component
    prob[20:22, 40:41] = 0.6    # 2-pixel component
    prob[30:35, 5:8] = 0.4      # below the threshold
    inst = probability_to_instances(prob, threshold=0.5)
    order = torch.argsort(-inst.scores)
    assert len(inst) == 2
    assert inst.pred_boxes.tensor[order].tolist() == [[10, 5, 30, 15], [40, 20, 41, 22]]
    assert inst.scores[order].tolist() == pytest.approx([0.9, 0.6])
    assert inst.pred_classes.tolist() == [0, 0]
    # The union of the instances is exactly the thresholded map.
    assert np.array_equal(inst.pred_masks.any(dim=0).numpy(), prob >= 0.5)
    assert len(probability_to_instances(prob, threshold=0.5, min_area=3)) == 1
    assert len(probability_to_instances(np.zeros((8, 8)), 0.5)) == 0


def test_a_noisy_map_keeps_only_the_most_probable_components():
    """An untrained network's map can hold thousands of components; a full-size mask each ran a
    CI job out of memory. Like Mask R-CNN, at most max_instances are kept, the most probable."""
    prob = np.zeros((400, 400), np.float32)
    prob[::2, ::2] = np.linspace(0.5, 1.0, 200 * 200).reshape(200, 200)  # 40,000 lone pixels
    inst = probability_to_instances(prob, threshold=0.5, max_instances=100)
    assert len(inst) == 100 and inst.pred_masks.shape == (100, 400, 400)
    assert sorted(inst.scores.tolist()) == pytest.approx(np.sort(prob[::2, ::2].ravel())[-100:])
    assert inst.pred_masks.flatten(1).sum(1).tolist() == [1] * 100
    # Each mask is its own box's single pixel, where the map has the instance's score.
    for box, mask, score in zip(inst.pred_boxes.tensor.int().tolist(), inst.pred_masks,
                                inst.scores):
        x0, y0, x1, y1 = box
        assert (x1 - x0, y1 - y0) == (1, 1) and mask[y0, x0]
        assert prob[y0, x0] == pytest.approx(float(score))


def test_soft_dice_loss_known_values():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    assert float(soft_dice_loss((target * 2 - 1) * 50, target)) == pytest.approx(0, abs=1e-3)
    assert float(soft_dice_loss((1 - target * 2) * 50, target)) == pytest.approx(1, abs=0.05)
    # An empty slice predicted empty costs nothing.
    assert float(soft_dice_loss(torch.full((1, 1, 8, 8), -50.0), torch.zeros(1, 1, 8, 8))) \
        == pytest.approx(0, abs=1e-3)


def test_ground_truth_as_probabilities_scores_perfectly(phantom_root, tmp_path):
    """The truth fed through the probabilities-to-instances path: AP 100, Dice 1."""
    register_tumorseg(phantom_root)
    name = "tumorseg_agnostic_test"
    preds = [from_instances(probability_to_instances(
        truth_of(r)[2].astype(np.float32)), r["image_id"]) for r in DatasetCatalog.get(name)]
    metrics = evaluate_predictions(preds, name, str(tmp_path), 0.5, "fixed")
    assert metrics["coco"]["segm"]["AP"] == pytest.approx(100)
    assert metrics["coco"]["bbox"]["AP50"] == pytest.approx(100)
    summary = metrics["clinical"]["all classes"]
    assert summary["dice_mean_per_image"] == pytest.approx(1)
    assert summary["slice_sensitivity"] == pytest.approx(1)
    # No detections at all score zero.
    empty = [from_instances(probability_to_instances(np.zeros((640, 640))), r["image_id"])
             for r in DatasetCatalog.get(name)]
    none = evaluate_predictions(empty, name, str(tmp_path / "none"), 0.5, "fixed")
    assert none["coco"]["bbox"]["AP"] == 0 and none["clinical"]["all classes"]["sensitivity"] == 0


# Short trainings: 4 iterations, validation (with Dice) at the end.
SHORT = ["SOLVER.MAX_ITER", "4", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
         "TEST.EVAL_PERIOD", "4", "SOLVER.CHECKPOINT_PERIOD", "100", "DATALOADER.NUM_WORKERS", "0",
         "MODEL.DEVICE", "cpu"]


@pytest.fixture(scope="module")
def compared(phantom_root, tmp_path_factory):
    """tools/compare.py --train on every baseline config (CPU variants) on the phantom."""
    out = tmp_path_factory.mktemp("baselines")
    configs = [os.path.join(BASELINES, f"{n}_cpu.yaml") for n in PIXEL_CONFIGS] \
        + [os.path.join(BASELINES, "mask_rcnn_R_18_FPN_256_bs1_cpu.yaml")]
    # The documented form: KEY VALUE overrides last, for every training and evaluation.
    proc = run_tool("compare.py", "--train", *configs, "--output", str(out), "--images", "2",
                    "DATASETS.TUMORSEG_ROOT", phantom_root, *SHORT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out, proc


def test_every_baseline_trains_and_is_compared(compared, phantom_root):
    out, proc = compared
    with open(out / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == [f"{n}_cpu" for n in PIXEL_CONFIGS] \
        + ["mask_rcnn_R_18_FPN_256_bs1_cpu"]
    for r in rows:
        run = out / r["run"]
        summary = json.loads((run / "training_summary.json").read_text())
        assert summary["iterations"] == 4 and int(r["parameters"]) == summary["parameters"]
        # Validation during training computed Dice, which chose model_best.pth.
        events = [json.loads(line) for line in (run / "metrics.json").read_text().splitlines()]
        assert any("overlap/Dice" in e for e in events)
        assert r["weights"] == "model_best.pth"
        assert 0 <= float(r["dice"]) <= 1 and float(r["seconds_per_image"]) > 0
        assert (out / "evaluation" / r["run"] / "report.md").is_file()
    text = (out / "compare.md").read_text()
    assert "| EncoderDecoder2 256 px, BCE+DICE | encoder_decoder_2level_cpu | 27,169 |" in text
    # Intervals, the leak-free subset and every run's paired difference against the first.
    assert "## 95% intervals" in text and "## Leak-free subset" in text
    differences = text.split("## Paired differences")[1]
    for r in rows[1:]:
        assert f"| {r['run']} | {rows[0]['run']} |" in differences
    for r in rows:
        assert int(r["leak_free_images"]) <= int(r["images"])
        assert r["dice_low"] != "" and float(r["dice_low"]) <= float(r["dice_high"])
    assert (out / "compare.png").stat().st_size > 10_000
    # A second call retrains nothing and gives the same figures.
    again = run_tool("compare.py", "--train", os.path.join(BASELINES, "unet_cpu.yaml"), "--output",
                     str(out), "--opts", "DATASETS.TUMORSEG_ROOT", phantom_root, *SHORT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "trained already (training_summary.json); not retrained" in again.stdout
    with open(out / "compare.csv") as f:
        (unet,) = list(csv.DictReader(f))
    first = next(r for r in rows if r["run"] == "unet_cpu")
    assert {k: unet[k] for k in ("dice", "bbox_AP50", "pixel_f1")} == \
        {k: first[k] for k in ("dice", "bbox_AP50", "pixel_f1")}


def test_tools_work_unchanged_on_a_pixel_model(compared, tmp_path):
    out, _ = compared
    run = out / "unet_cpu"
    args = ["--config-file", str(run / "config.yaml"), "--weights", str(run / "model_best.pth")]
    proc = run_tool("evaluate.py", *args, "--output", str(tmp_path / "eval"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["dataset"] == "tumorseg_agnostic_test" and "segm" in metrics["coco"]
    proc = run_tool("visualize.py", *args, "--output", str(tmp_path / "vis"), "--num", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "vis" / "contact_sheet.png").is_file()


def test_compare_seeds_trains_each_config_per_seed_and_reports_the_spread(phantom_root, tmp_path):
    configs = [os.path.join(BASELINES, f"{n}_cpu.yaml") for n in ("unet", "encoder_decoder_2level")]
    proc = run_tool("compare.py", "--train", *configs, "--seeds", "2", "--output", str(tmp_path),
                    "--images", "1", "DATASETS.TUMORSEG_ROOT", phantom_root, *SHORT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["unet_cpu_seed0", "unet_cpu_seed1",
                                        "encoder_decoder_2level_cpu_seed0",
                                        "encoder_decoder_2level_cpu_seed1"]
    for r in rows:
        trained = yaml.safe_load((tmp_path / r["run"] / "config.yaml").read_text())
        assert trained["SEED"] == int(r["run"][-1])
    weights = [torch.load(tmp_path / f"unet_cpu_seed{k}" / "model_final.pth",
                          weights_only=True)["model"] for k in (0, 1)]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    text = (tmp_path / "compare.md").read_text()
    spread = text.split("## Across seeds")[1].split("##")[0]
    assert "| unet_cpu | 2 |" in spread and "| encoder_decoder_2level_cpu | 2 |" in spread
    differences = text.split("## Paired differences")[1]
    for k in (0, 1):
        assert f"| encoder_decoder_2level_cpu_seed{k} | unet_cpu_seed{k} |" in differences


def test_run_labels_lengthen_only_the_names_two_runs_share():
    from tumorseg_d2.evaluation.compare import run_labels

    assert run_labels(["out/x/a/run_seed0", "out/y/a/run_seed0", "out/z/b/other"]) == [
        "x/a/run_seed0", "y/a/run_seed0", "other"]


def test_compare_keeps_apart_runs_whose_folders_share_a_name(compared, tmp_path):
    # Seed 0 of two recipes: each gets its own row and report, and they are no seeds of one config.
    out, _ = compared
    runs = [tmp_path / recipe / "unet_cpu_seed0" for recipe in ("recipe_a", "recipe_b")]
    for run, source in zip(runs, ("unet_cpu", "encoder_decoder_2level_cpu")):
        run.parent.mkdir()
        os.symlink(out / source, run)
    proc = run_tool("compare.py", *map(str, runs), "--output", str(tmp_path / "cmp"),
                    "--images", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "cmp" / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["recipe_a/unet_cpu_seed0", "recipe_b/unet_cpu_seed0"]
    assert rows[0]["model"] != rows[1]["model"]
    for r in rows:
        metrics = json.loads((tmp_path / "cmp" / "evaluation" / r["run"] / "metrics.json").read_text())
        assert metrics["coco"]
    assert "## Across seeds" not in (tmp_path / "cmp" / "compare.md").read_text()


def test_compare_tta_gives_each_runs_gain_with_its_interval(compared, tmp_path):
    out, _ = compared
    proc = run_tool("compare.py", str(out / "unet_cpu"), str(out / "encoder_decoder_2level_cpu"),
                    "--tta", "--output", str(tmp_path), "--images", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["unet_cpu", "unet_cpu+TTA", "encoder_decoder_2level_cpu",
                                        "encoder_decoder_2level_cpu+TTA"]
    assert rows[1]["model"].endswith("+ TTA") and not rows[0]["model"].endswith("+ TTA")
    differences = (tmp_path / "compare.md").read_text().split("## Paired differences")[1]
    assert "| unet_cpu+TTA | unet_cpu |" in differences
    assert "| encoder_decoder_2level_cpu+TTA | encoder_decoder_2level_cpu |" in differences
    metrics = json.loads((tmp_path / "evaluation" / "unet_cpu+TTA" / "metrics.json").read_text())
    assert metrics["test_time_augmentation"] == "horizontal flip, probabilities averaged"


def test_compare_scores_another_tools_results_beside_a_run(compared, tmp_path):
    from tumorseg_d2.evaluation.ground_truth import truth_record
    from tumorseg_d2.predictions import dataset_category_ids, to_coco_results

    out, _ = compared
    cfg = get_tumorseg_cfg()
    cfg.merge_from_file(str(out / "unet_cpu" / "config.yaml"))
    register_tumorseg(cfg.DATASETS.TUMORSEG_ROOT)
    name = "tumorseg_agnostic_test"
    truth = to_coco_results([truth_record(r) for r in DatasetCatalog.get(name)],
                            dataset_category_ids(MetadataCatalog.get(name)))
    (tmp_path / "truth.json").write_text(json.dumps(truth))
    proc = run_tool("compare.py", str(out / "unet_cpu"), "--results",
                    f"oracle={tmp_path / 'truth.json'}", "--output", str(tmp_path / "cmp"),
                    "--images", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "cmp" / "compare.csv") as f:
        unet, oracle = list(csv.DictReader(f))
    assert oracle["run"] == "oracle" and float(oracle["bbox_AP50"]) == pytest.approx(100)
    assert float(oracle["dice"]) == pytest.approx(1) and oracle["parameters"] == ""
    assert "| oracle | unet_cpu |" in (tmp_path / "cmp" / "compare.md").read_text()


def test_batch_predictor_gives_the_probability_map_and_its_components(compared):
    out, _ = compared
    cfg = get_tumorseg_cfg()
    cfg.merge_from_file(str(out / "unet_cpu" / "config.yaml"))
    cfg.MODEL.WEIGHTS = str(out / "unet_cpu" / "model_best.pth")
    register_tumorseg(cfg.DATASETS.TUMORSEG_ROOT)
    files = [r["file_name"] for r in DatasetCatalog.get("tumorseg_agnostic_test")[:3]]
    for result in BatchPredictor(cfg, batch_size=2, num_workers=0)(files, masks="array",
                                                                    probability=True):
        prob = result["probability"]
        assert prob.shape == (640, 640) and prob.dtype == np.float32
        union = result["masks"].any(axis=0) if len(result["masks"]) else np.zeros_like(prob, bool)
        assert np.array_equal(union, prob >= cfg.MODEL.PIXEL_SEG.THRESHOLD)
