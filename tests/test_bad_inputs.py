"""Every bad input gets an error that names the problem and the fix: inference inputs, weights,
config values, dataset files."""
import glob
import json
import os
import re

import cv2
import numpy as np
import pytest
import torch

from tumorseg_d2.config import get_tumorseg_cfg, merge_config
from tumorseg_d2.engine import Trainer
from tumorseg_d2.predictor import BatchPredictor, InputImageError

from conftest import RECIPE_CFG, SCRATCH_CFG, TINY, run_tool


@pytest.fixture(scope="module")
def model_and_slice(phantom_demo):
    out, _ = phantom_demo
    weights = str(out / "train" / "model_best.pth")
    cfg = merge_config(get_tumorseg_cfg(), SCRATCH_CFG, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS",
                                                         weights])
    slice_path = sorted(glob.glob(str(out / "phantom" / "tumorseg" / "test" / "*.jpg")))[0]
    return cfg, weights, slice_path


def bad_files(folder, slice_path):
    gray = cv2.imread(slice_path, cv2.IMREAD_GRAYSCALE)
    files = {}
    files["not_an_image.png"] = b"%PDF-1.4 not an image"
    files["empty.png"] = b""
    cv2.imwrite(str(folder / "sixteen_bit.png"), gray.astype(np.uint16) * 257)
    rgba = np.dstack([np.repeat(gray[:, :, None], 3, 2), np.full_like(gray, 128)])
    cv2.imwrite(str(folder / "alpha.png"), rgba)
    data = open(slice_path, "rb").read()
    files["truncated.jpg"] = data[: len(data) // 3]
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return {"not_an_image.png": "is not an image", "empty.png": "is empty (0 bytes)",
            "sixteen_bit.png": "16-bit", "alpha.png": "alpha channel",
            "truncated.jpg": "truncated or corrupt"}


def test_each_bad_image_is_named_with_its_problem(model_and_slice, tmp_path):
    cfg, _, slice_path = model_and_slice
    expected = bad_files(tmp_path, slice_path)
    predictor = BatchPredictor(cfg, batch_size=2, num_workers=0)
    for name, problem in expected.items():
        with pytest.raises(InputImageError, match=re.escape(problem)) as err:
            predictor([str(tmp_path / name)])
        assert name in str(err.value)
    for array, problem in [(np.zeros((64, 64, 4), np.uint8), "4 channels"),
                           (np.zeros((64, 64), np.uint16), "uint16 pixels")]:
        with pytest.raises(InputImageError, match=problem):
            predictor([array])


def test_decompression_bomb_guard(model_and_slice, monkeypatch):
    cfg, _, slice_path = model_and_slice
    monkeypatch.setenv("TUMORSEG_MAX_PIXELS", str(100 * 100))
    with pytest.raises(InputImageError, match="megapixels, over the limit"):
        BatchPredictor(cfg, num_workers=0)([slice_path])


def test_one_channel_slice_is_read_as_the_training_slices(model_and_slice, tmp_path):
    cfg, _, slice_path = model_and_slice
    gray = cv2.imread(slice_path, cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    cv2.imwrite(str(tmp_path / "rgb.png"), np.repeat(gray[:, :, None], 3, 2))
    one, three = BatchPredictor(cfg, num_workers=0)([str(tmp_path / "gray.png"),
                                                     str(tmp_path / "rgb.png")])
    np.testing.assert_array_equal(one["boxes"], three["boxes"])
    np.testing.assert_array_equal(one["scores"], three["scores"])


def test_predict_cli_skips_bad_files_keeps_the_rest_and_fails_at_the_end(model_and_slice, tmp_path):
    cfg, weights, slice_path = model_and_slice
    inputs = tmp_path / "in"
    inputs.mkdir()
    expected = bad_files(inputs, slice_path)
    cv2.imwrite(str(inputs / "good.png"), cv2.imread(slice_path))
    out = tmp_path / "out"
    proc = run_tool("predict.py", "--config-file", SCRATCH_CFG, "--weights", weights,
                    "--input", str(inputs), "--output", str(out), "MODEL.DEVICE", "cpu")
    assert proc.returncode == 1
    assert len(glob.glob(str(out / "*good.png"))) == 1  # the good image was still predicted
    errors = json.load(open(out / "errors.json"))
    assert sorted(os.path.basename(e["file_name"]) for e in errors) == sorted(expected)
    for name, problem in expected.items():
        assert any(name in line and problem in line for line in proc.stderr.splitlines()), name


def save_scratch_checkpoint(path):
    """A freshly initialised R18 (scratch config) model saved as a checkpoint."""
    model = Trainer.build_model(merge_config(get_tumorseg_cfg(), SCRATCH_CFG, ["MODEL.DEVICE", "cpu"]))
    torch.save({"model": model.state_dict()}, path)
    return path


def eval_only(config, root, weights, out):
    return run_tool("train_net.py", "--config-file", config, "--eval-only", *TINY,
                    "DATASETS.TUMORSEG_ROOT", str(root), "MODEL.WEIGHTS", str(weights),
                    "OUTPUT_DIR", str(out))


def test_weights_that_are_not_a_checkpoint(phantom_root, tmp_path):
    truncated, garbage = tmp_path / "truncated.pth", tmp_path / "garbage.pth"
    data = save_scratch_checkpoint(tmp_path / "good.pth").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    garbage.write_bytes(os.urandom(4096))
    for path in (truncated, garbage):
        proc = eval_only(SCRATCH_CFG, phantom_root, path, tmp_path / "eval")
        assert proc.returncode != 0
        assert f"Weights file {path} cannot be read" in proc.stderr
        assert "truncated or not a PyTorch" in proc.stderr


def test_weights_for_another_architecture(phantom_root, tmp_path):
    """An R18 checkpoint given to the R50 recipe: Detectron2 would skip every mismatched weight
    with a warning and evaluate a random model; here it is an error."""
    path = save_scratch_checkpoint(tmp_path / "r18.pth")
    proc = eval_only(RECIPE_CFG, phantom_root, path, tmp_path / "eval")
    assert proc.returncode != 0
    assert f"Weights file {path} does not fit this model" in proc.stderr
    assert "Use the config it was trained with" in proc.stderr


@pytest.mark.parametrize("override, message", [
    (["SOLVER.BASE_LR", "fast"], "SOLVER.BASE_LR"),
    (["SOLVER.IMS_PER_BATCH", "0"], "SOLVER.IMS_PER_BATCH"),
    (["SOLVER.MAX_ITER", "-5"], "SOLVER.MAX_ITER"),
    (["DATASETS.CHECK", "maybe"], "DATASETS.CHECK"),
    (["SOLVER.BASE_LRR", "0.1"], "Did you mean SOLVER.BASE_LR"),
    (["TEST.BOOTSTRAP.LEVEL", "95.0"], "TEST.BOOTSTRAP.RESAMPLES is 1000 and LEVEL 95.0"),
])
def test_bad_config_values_name_the_key(override, message, phantom_root, tmp_path):
    proc = run_tool("train_net.py", "--config-file", SCRATCH_CFG, *TINY,
                    "DATASETS.TUMORSEG_ROOT", phantom_root, "OUTPUT_DIR", str(tmp_path), *override)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert message in last, last


def test_missing_dataset_root_and_json(tmp_path):
    proc = run_tool("train_net.py", "--config-file", SCRATCH_CFG, *TINY,
                    "DATASETS.TUMORSEG_ROOT", str(tmp_path / "nowhere"), "OUTPUT_DIR", str(tmp_path))
    assert proc.returncode != 0
    assert "TumorSeg split 'train' not found" in proc.stderr and "DATASETS.TUMORSEG_ROOT" in proc.stderr


def test_json_that_is_not_coco(tmp_path, phantom_root):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(phantom_root, root)
    (root / "train" / "_annotations.coco.json").write_text('{"images": "none"}')
    proc = run_tool("train_net.py", "--config-file", SCRATCH_CFG, *TINY,
                    "DATASETS.TUMORSEG_ROOT", str(root), "OUTPUT_DIR", str(tmp_path / "run"))
    assert proc.returncode != 0
    assert "is not a COCO instances file" in proc.stderr


def test_unreadable_evaluation_image_stops_with_its_name(tmp_path, phantom_root):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(phantom_root, root)
    coco = json.load(open(root / "test" / "_annotations.coco.json"))
    bad = root / "test" / coco["images"][0]["file_name"]
    bad.write_bytes(bad.read_bytes()[:200])
    weights = save_scratch_checkpoint(tmp_path / "w.pth")
    proc = eval_only(SCRATCH_CFG, root, weights, tmp_path / "eval")
    assert proc.returncode != 0
    assert f"Cannot read evaluation image {bad}" in proc.stderr


def test_backbone_only_weights_still_load():
    """The architecture check must not refuse an ImageNet-style backbone initialisation."""
    from tumorseg_d2.checkpoint import SafeCheckpointer

    cfg = merge_config(get_tumorseg_cfg(), RECIPE_CFG, ["MODEL.DEVICE", "cpu"])
    source, target = Trainer.build_model(cfg), Trainer.build_model(cfg)
    backbone = {k: v for k, v in source.state_dict().items() if k.startswith("backbone.bottom_up")}
    incompatible = SafeCheckpointer(target)._load_model({"model": backbone, "__author__": "test"})
    assert incompatible.missing_keys  # FPN and heads stay as initialised
    assert torch.equal(target.state_dict()["backbone.bottom_up.stem.conv1.weight"],
                       backbone["backbone.bottom_up.stem.conv1.weight"])


def test_a_new_training_never_overwrites_a_finished_run(phantom_root, tmp_path):
    """Without --resume, a folder that holds a run's checkpoints is refused before anything is
    written (Detectron2 would overwrite its checkpoints, config and metrics.json)."""
    run = tmp_path / "run"
    run.mkdir()
    files = {"last_checkpoint": "model_final.pth", "config.yaml": "MODEL: {}\n",
             "metrics.json": '{"iteration": 9}\n'}
    for name, text in files.items():
        (run / name).write_text(text)
    proc = run_tool("train_net.py", "--config-file", SCRATCH_CFG, *TINY,
                    "DATASETS.TUMORSEG_ROOT", phantom_root, "OUTPUT_DIR", str(run))
    assert proc.returncode != 0
    assert f"OUTPUT_DIR {run} already holds a training run" in proc.stderr
    assert "Continue it with --resume" in proc.stderr
    assert {p.name: p.read_text() for p in run.iterdir()} == files

    demo = tmp_path / "demo"
    (demo / "train").mkdir(parents=True)
    (demo / "train" / "last_checkpoint").write_text("model_final.pth")
    proc = run_tool("demo.py", "--phantom", "--output", str(demo))
    assert proc.returncode != 0
    assert f"{demo} holds an earlier demo run" in proc.stderr
    assert sorted(p.name for p in demo.rglob("*")) == ["last_checkpoint", "train"]
