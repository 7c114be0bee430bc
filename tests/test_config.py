import glob
import os

import pytest
import torch
from detectron2.solver import build_lr_scheduler

from tumorseg_d2.config import get_tumorseg_cfg, merge_config, validate_config
from tumorseg_d2.data import register_tumorseg
from tumorseg_d2.engine import Trainer, check_num_classes

from conftest import RECIPE_CFG, REPO, SCRATCH_CFG, TEST_DEVICE


def load(path, *opts):
    cfg = merge_config(get_tumorseg_cfg(), path, opts)
    validate_config(cfg)
    return cfg


def test_recipe_matches_the_published_setting():
    cfg = load(RECIPE_CFG)
    assert cfg.MODEL.WEIGHTS.startswith("detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x")
    assert (cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.BACKBONE.FREEZE_AT) == (50, 0)
    assert (cfg.SOLVER.OPTIMIZER, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER) == ("ADAM", 5e-4, 3000)
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640,) and cfg.INPUT.MIN_SIZE_TEST == 640
    assert cfg.INPUT.MAX_SIZE_TRAIN == 640 and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 2


def test_learning_rate_is_constant_after_warmup():
    cfg = load(RECIPE_CFG)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    sched = build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(cfg.SOLVER.MAX_ITER):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < cfg.SOLVER.BASE_LR
    assert lrs[cfg.SOLVER.WARMUP_ITERS:] == pytest.approx([cfg.SOLVER.BASE_LR] * (len(lrs) - cfg.SOLVER.WARMUP_ITERS))


@pytest.mark.parametrize("name,cls", [("SGD", torch.optim.SGD), ("ADAM", torch.optim.Adam),
                                      ("ADAMW", torch.optim.AdamW)])
def test_optimizer_from_config(name, cls):
    cfg = load(SCRATCH_CFG, "SOLVER.OPTIMIZER", name, "SOLVER.BETAS", "(0.8, 0.99)")
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)).to(TEST_DEVICE)
    opt = Trainer.build_optimizer(cfg, model)
    assert isinstance(opt, cls)
    assert opt.param_groups[0]["lr"] == cfg.SOLVER.BASE_LR
    if name != "SGD":
        assert opt.param_groups[0]["betas"] == (0.8, 0.99)
        # one fused step on the CPU; on CUDA PyTorch's default (float16's GradScaler would
        # unscale inside a fused step, after gradient clipping)
        assert opt.defaults["fused"] is (True if TEST_DEVICE == "cpu" else None)
        model(torch.ones(1, 1, 5, 5, device=TEST_DEVICE)).sum().backward()
        opt.step()  # a fused step runs on these parameters


def test_bad_values_are_rejected_with_the_key():
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        load(SCRATCH_CFG, "SOLVER.OPTIMIZER", "RMSPROP")
    with pytest.raises(ValueError, match="TEST.BEST_MODE"):
        load(SCRATCH_CFG, "TEST.BEST_MODE", "largest")
    with pytest.raises(ValueError, match="SOLVER.CHECKPOINTS_TO_KEEP is -1"):
        load(SCRATCH_CFG, "SOLVER.CHECKPOINTS_TO_KEEP", "-1")
    with pytest.raises(ValueError, match="Unknown config key SOLVER.BASE_RL.*SOLVER.BASE_LR"):
        load(SCRATCH_CFG, "SOLVER.BASE_RL", "1")
    with pytest.raises(FileNotFoundError, match="no-such.yaml"):
        load("configs/no-such.yaml")


def test_num_classes_must_match_the_dataset(phantom_root):
    register_tumorseg(phantom_root)
    with pytest.raises(ValueError, match="NUM_CLASSES 1"):
        check_num_classes(load(SCRATCH_CFG, "DATASETS.TRAIN", "('tumorseg_agnostic_train',)",
                               "DATASETS.VAL", "('tumorseg_agnostic_valid',)",
                               "DATASETS.TEST", "('tumorseg_agnostic_test',)"))
    check_num_classes(load(SCRATCH_CFG))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"),
                                            recursive=True)))
def test_every_shipped_config_loads_and_validates(path):
    load(path)
