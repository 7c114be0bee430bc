"""Training, resuming and evaluating through tools/train_net.py, as a user runs them."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from detectron2.utils.events import EventStorage

from tumorseg_d2.engine import EarlyStopping, Trainer
from tumorseg_d2.engine.run import setup

from conftest import REPO, SCRATCH_CFG, TINY, run_tool


def read_metrics_lines(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_train_resume_and_eval_only_on_real_data(real_root, tmp_path):
    out = str(tmp_path / "run")
    common = ["--config-file", SCRATCH_CFG, *TINY, "DATASETS.TUMORSEG_ROOT", real_root,
              "OUTPUT_DIR", out, "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "0",
              "TEST.VAL_LOSS", "False", "TEST.DETECTIONS_PER_IMAGE", "10"]  # quick to score
    # No validation pass (429 real slices, most of the time): the test split is what is checked.
    first = run_tool("train_net.py", *common, "SOLVER.MAX_ITER", "4", "DATASETS.VAL", "()",
                     "TEST.BEST_METRIC", "", "SOLVER.CHECKPOINTS_TO_KEEP", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    # Only the most recent periodic checkpoint is kept (iterations 1 and 3 were saved).
    assert sorted(f for f in os.listdir(out) if f.endswith(".pth")) == [
        "model_0000003.pth", "model_final.pth"]
    test_metrics = json.load(open(os.path.join(out, "inference", "tumorseg_test", "metrics.json")))
    for task in ("bbox", "segm"):
        assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP50-0", "AP50-1"} <= set(test_metrics[task])
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    assert os.path.isfile(os.path.join(out, "inference", "tumorseg_test",
                                       "coco_instances_results.json"))

    # --resume continues from the last checkpoint instead of starting over.
    resumed = run_tool("train_net.py", "--resume", *common, "SOLVER.MAX_ITER", "6",
                       "DATASETS.VAL", "()", "DATASETS.TEST", "()")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = open(os.path.join(out, "log.txt")).read()
    assert "Starting training from iteration 4" in log
    assert os.path.isfile(os.path.join(out, "model_0000005.pth"))

    evaluated = run_tool("train_net.py", "--config-file", SCRATCH_CFG, "--eval-only", *TINY,
                         "DATASETS.TUMORSEG_ROOT", real_root, "OUTPUT_DIR", str(tmp_path / "eval"),
                         "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"),
                         "TEST.DETECTIONS_PER_IMAGE", "10")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "COCO results on tumorseg_test" in evaluated.stdout + evaluated.stderr
    assert os.path.isfile(tmp_path / "eval" / "inference" / "tumorseg_test" / "metrics.json")


def test_validation_loss_and_best_checkpoint_on_phantom(phantom_root, tmp_path):
    out = str(tmp_path / "run")
    proc = run_tool("train_net.py", "--config-file", SCRATCH_CFG, *TINY,
                    "DATASETS.TUMORSEG_ROOT", phantom_root, "OUTPUT_DIR", out,
                    "SOLVER.MAX_ITER", "4", "TEST.EVAL_PERIOD", "2", "SOLVER.CHECKPOINT_PERIOD", "100")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = read_metrics_lines(out)
    val = [x for x in lines if "validation_loss" in x]
    assert [x["iteration"] for x in val] == [1, 4]  # after iteration 2, and at the end
    assert all(x["validation_loss"] > 0 and "val_loss_mask" in x for x in val)
    assert all("segm/AP50" in x for x in val)  # validation AP at the same iterations
    assert os.path.isfile(os.path.join(out, "model_best.pth"))
    assert os.path.isfile(os.path.join(out, "inference", "tumorseg_test", "metrics.json"))
    assert "Evaluating " + os.path.join(out, "model_best.pth") in open(os.path.join(out, "log.txt")).read()


class FakeTrainer:
    def __init__(self, max_iter):
        self.iter, self.max_iter, self.stopped_at = 0, max_iter, None

    def request_stop(self):
        self.stopped_at = self.iter


@pytest.mark.parametrize("values,patience,stop_iter", [
    ([1.0, 2.0, 2.0, 1.5, 3.0], 2, 7),      # no gain at evals 3 and 4 -> stop after the 4th
    ([1.0, 2.0, 3.0, 4.0, 5.0], 1, None),   # always improving
    ([float("nan"), 1.0, 0.5, 0.5, 0.5], 3, 9),  # NaN is never an improvement
])
def test_early_stopping(values, patience, stop_iter):
    trainer = FakeTrainer(max_iter=100)
    hook = EarlyStopping(period=2, metric="segm/AP50", patience=patience)
    hook.trainer = trainer
    with EventStorage() as storage:
        trainer.storage = storage
        for k, value in enumerate(values):
            trainer.iter = storage.iter = 2 * k + 1
            storage.put_scalar("segm/AP50", value, smoothing_hint=False)
            hook.after_step()
            if trainer.stopped_at is not None:
                break
    assert trainer.stopped_at == stop_iter


def test_eval_only_with_the_recipe_config(phantom_root, tmp_path):
    """The published recipe's config evaluates a checkpoint of its architecture (R50-FPN)."""
    import torch
    from detectron2.checkpoint import DetectionCheckpointer

    from tumorseg_d2.config import get_tumorseg_cfg, merge_config
    from tumorseg_d2.engine import Trainer

    from conftest import RECIPE_CFG

    cfg = merge_config(get_tumorseg_cfg(), RECIPE_CFG, ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    # Saving tags last_checkpoint, which marks a run folder: evaluation writes beside it.
    weights = tmp_path / "weights"
    weights.mkdir()
    DetectionCheckpointer(Trainer.build_model(cfg), save_dir=str(weights)).save("r50_checkpoint")
    out = tmp_path / "eval"
    proc = run_tool("train_net.py", "--config-file", RECIPE_CFG, "--eval-only",
                    "MODEL.WEIGHTS", str(weights / "r50_checkpoint.pth"), "MODEL.DEVICE", "cpu",
                    "DATASETS.TUMORSEG_ROOT", phantom_root, "OUTPUT_DIR", str(out),
                    "DATALOADER.NUM_WORKERS", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.load(open(out / "inference" / "tumorseg_test" / "metrics.json"))
    assert set(saved) == {"bbox", "segm", "overlap"} and "AP50-1" in saved["segm"]
    assert set(saved["overlap"]) == {"Dice", "IoU", "sensitivity", "Dice_pooled", "specificity",
                                     "patient_Dice"}


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    """A save that dies half-way leaves the previous checkpoint and last_checkpoint intact."""
    from tumorseg_d2.checkpoint import SafeCheckpointer

    model = torch.nn.Linear(2, 2)
    checkpointer = SafeCheckpointer(model, str(tmp_path))
    checkpointer.save("model_final", iteration=1)
    good = (tmp_path / "model_final.pth").read_bytes()

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(good[: len(good) // 2])
        raise KeyboardInterrupt  # as a kill would, mid-write

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_final", iteration=2)
    assert (tmp_path / "model_final.pth").read_bytes() == good
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]
    monkeypatch.undo()
    assert SafeCheckpointer(model, str(tmp_path)).resume_or_load("")["iteration"] == 1


def test_killed_training_resumes_exactly(phantom_root, tmp_path):
    """SIGKILL a real training, --resume it: the final weights are bit-identical to a run that was
    never interrupted (iteration, optimizer, scheduler, random state and data order restored)."""
    common = ["--config-file", SCRATCH_CFG, *TINY, "DATALOADER.NUM_WORKERS", "2",
              "DATASETS.TUMORSEG_ROOT", phantom_root, "SEED", "3", "SOLVER.MAX_ITER", "12",
              "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "0", "DATASETS.VAL", "()",
              "DATASETS.TEST", "()"]
    whole = run_tool("train_net.py", *common, "OUTPUT_DIR", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "tools", "train_net.py"), *common,
                             "OUTPUT_DIR", str(out)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (out / "model_0000005.pth").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before the kill"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model_final.pth").exists()
    last = (out / "last_checkpoint").read_text().strip()
    resume_at = torch.load(out / last, weights_only=False)["iteration"] + 1

    resumed = run_tool("train_net.py", "--resume", *common, "OUTPUT_DIR", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Starting training from iteration {resume_at}" in resumed.stdout + resumed.stderr
    a = torch.load(tmp_path / "whole" / "model_final.pth", weights_only=False)
    b = torch.load(out / "model_final.pth", weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["trainer"]["_trainer"]["optimizer"]["state"].keys() == \
        b["trainer"]["_trainer"]["optimizer"]["state"].keys()


def test_nan_loss_stops_with_the_iteration_the_loss_and_the_last_good_checkpoint(phantom_root,
                                                                                 tmp_path):
    out = tmp_path / "run"
    cfg = setup(SCRATCH_CFG, [*TINY, "DATASETS.TUMORSEG_ROOT", phantom_root, "OUTPUT_DIR", str(out),
                              "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2",
                              "TEST.EVAL_PERIOD", "0", "DATASETS.VAL", "()", "DATASETS.TEST", "()"],
                training=True)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)

    def poison(module, inputs, losses):  # the mask loss diverges at the 4th iteration
        if trainer.iter == 3:
            losses["loss_mask"] = losses["loss_mask"] * float("nan")
        return losses

    trainer.model.register_forward_hook(poison)
    with pytest.raises(FloatingPointError) as err:
        trainer.train()
    message = str(err.value)
    assert "iteration 3" in message and "loss_mask" in message
    assert "model_0000001.pth" in message  # the last good checkpoint, named
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (out / "model_final.pth").exists()


def test_unwritable_output_fails_at_start_up(phantom_root, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = run_tool("train_net.py", "--config-file", SCRATCH_CFG, *TINY,
                    "DATASETS.TUMORSEG_ROOT", phantom_root, "OUTPUT_DIR", str(blocker / "run"))
    assert proc.returncode != 0
    assert f"OUTPUT_DIR {blocker / 'run'} cannot be written" in proc.stderr


def test_full_disk_fails_at_start_up(phantom_root, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    opts = [*TINY, "DATASETS.TUMORSEG_ROOT", phantom_root, "OUTPUT_DIR", str(tmp_path / "run")]
    with pytest.raises(OSError, match="free on the disk of OUTPUT_DIR"):
        Trainer(setup(SCRATCH_CFG, opts, training=True))


@pytest.mark.parametrize("skip", [True, False])
def test_unreadable_training_image_is_named_and_skipped_or_fatal(tmp_path, skip):
    import shutil

    from tumorseg_d2.data import make_phantom_dataset

    root = make_phantom_dataset(str(tmp_path / "data"), counts={"train": 4, "valid": 2, "test": 2})
    coco = json.load(open(os.path.join(root, "train", "_annotations.coco.json")))
    bad = os.path.join(root, "train", coco["images"][1]["file_name"])
    data = open(bad, "rb").read()
    open(bad, "wb").write(data[: len(data) // 3])  # truncated: passes the start-up checks
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
    proc = run_tool("train_net.py", "--config-file", SCRATCH_CFG, *TINY,
                    "DATASETS.TUMORSEG_ROOT", root, "OUTPUT_DIR", str(tmp_path / "run"),
                    "SOLVER.MAX_ITER", "4", "TEST.EVAL_PERIOD", "0", "DATASETS.VAL", "()",
                    "DATASETS.TEST", "()", "DATALOADER.SKIP_BAD_IMAGES", str(skip))
    log = proc.stdout + proc.stderr
    if skip:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"Skipping unreadable training image {bad}" in log
    else:
        assert proc.returncode != 0
        assert f"Cannot read training image {bad}" in log and "SKIP_BAD_IMAGES True" in log


def test_a_finished_training_leaves_no_loader_worker_behind(phantom_root, tmp_path):
    """The workers end with the training, not when the garbage collector finds the trainer: left
    to it, each waited out PyTorch's 5 s shutdown timeout (40 s with 8 workers)."""
    import psutil

    cfg = setup(SCRATCH_CFG, [*TINY, "DATALOADER.NUM_WORKERS", "2", "DATASETS.TUMORSEG_ROOT",
                              phantom_root, "OUTPUT_DIR", str(tmp_path / "run"),
                              "SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "0",
                              "DATASETS.TEST", "()"], training=True)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    trainer = Trainer(cfg)
    trainer.train()
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert not [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], left
    del trainer


def augmentation_cfg(*opts):
    from tumorseg_d2.config import get_tumorseg_cfg, validate_config

    cfg = get_tumorseg_cfg()
    cfg.merge_from_file(SCRATCH_CFG)
    cfg.merge_from_list(list(opts))
    validate_config(cfg)
    return cfg


def mapped(cfg, record, seed):
    from detectron2.utils.env import seed_all_rng

    from tumorseg_d2.data.loader import train_mapper

    seed_all_rng(seed)
    return train_mapper(cfg)(dict(record))


@pytest.fixture
def gray_slice_record(tmp_path):
    """A 400 x 400 slice of gray 100 with one tumor of gray 200 (a polygon, as in TumorSeg)."""
    import cv2
    import numpy as np
    from detectron2.structures import BoxMode

    image = np.full((400, 400, 3), 100, np.uint8)
    image[120:220, 150:290] = 200
    path = str(tmp_path / "slice.png")
    cv2.imwrite(path, image)
    polygon = [150, 120, 290, 120, 290, 220, 150, 220]
    return {"file_name": path, "height": 400, "width": 400, "image_id": 0, "annotations": [
        {"bbox": [150, 120, 290, 220], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
         "segmentation": [polygon], "iscrowd": 0}]}


def test_intensity_jitter_scales_brightness_and_leaves_the_tumor_where_it_was(gray_slice_record):
    plain = augmentation_cfg()
    jittered = augmentation_cfg("INPUT.INTENSITY_JITTER", "0.2")
    ratios = []
    for seed in range(30):
        a, b = mapped(plain, gray_slice_record, seed), mapped(jittered, gray_slice_record, seed)
        # The same seed draws the same flip: the geometry is untouched, only intensities move.
        assert torch.equal(a["instances"].gt_boxes.tensor, b["instances"].gt_boxes.tensor)
        assert a["image"].shape == b["image"].shape
        ratios.append(b["image"].float().mean().item() / a["image"].float().mean().item())
    # Contrast keeps the mean; brightness scales it by a factor in [0.8, 1.2].
    assert all(0.79 <= r <= 1.21 for r in ratios), ratios
    assert min(ratios) < 0.9 and max(ratios) > 1.1, ratios


def test_crop_keeps_boxes_on_their_cropped_masks(gray_slice_record):
    cfg = augmentation_cfg("INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "relative_range",
                           "INPUT.CROP.SIZE", "[0.8, 0.8]")
    sizes = set()
    for seed in range(20):
        out = mapped(cfg, gray_slice_record, seed)
        height, width = out["image"].shape[1:]
        sizes.add((height, width))
        assert max(height, width) <= 320 and len(out["instances"]) == 1
        box = out["instances"].gt_boxes.tensor[0]
        polygon = torch.as_tensor(out["instances"].gt_masks.polygons[0][0]).view(-1, 2)
        assert torch.allclose(box[:2], polygon.min(0).values.float(), atol=1e-3)
        assert torch.allclose(box[2:], polygon.max(0).values.float(), atol=1e-3)
        assert 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height
    assert len(sizes) > 1  # the crops vary in size and aspect


def test_intensity_jitter_outside_0_1_is_refused():
    with pytest.raises(ValueError, match="INPUT.INTENSITY_JITTER"):
        augmentation_cfg("INPUT.INTENSITY_JITTER", "-0.1")
