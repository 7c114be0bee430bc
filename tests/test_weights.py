"""Loading COCO model-zoo weights into the 2-class model, and failing fast without them."""
import os
import pickle
import time
from urllib.error import URLError

import numpy as np
import pytest
import torch

from tumorseg_d2.checkpoint import (COCO_MASK_RCNN_R50_FPN_3X, WeightsNotFoundError, cached_path,
                                    resolve_weights, to_url)
from tumorseg_d2.config import get_tumorseg_cfg
from tumorseg_d2.data import register_tumorseg
from tumorseg_d2.engine import Trainer

from conftest import RECIPE_CFG

HEADS = ("roi_heads.box_predictor.cls_score.", "roi_heads.box_predictor.bbox_pred.",
         "roi_heads.mask_head.predictor.")


def recipe_cfg(**overrides):
    cfg = get_tumorseg_cfg()
    cfg.merge_from_file(RECIPE_CFG)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"])
    for k, v in overrides.items():
        cfg.merge_from_list([k, v])
    return cfg


def test_coco_weights_load_into_two_class_model(tmp_path, monkeypatch, phantom_root):
    # A checkpoint in the model zoo's layout: 80 COCO classes, numpy arrays in a pickle.
    coco_cfg = recipe_cfg()
    coco_cfg.MODEL.ROI_HEADS.NUM_CLASSES = 80
    torch.manual_seed(1)
    coco_model = Trainer.build_model(coco_cfg)
    coco_state = {k: v.numpy().copy() for k, v in coco_model.state_dict().items()}
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    local = cached_path(to_url(COCO_MASK_RCNN_R50_FPN_3X))
    os.makedirs(os.path.dirname(local))
    with open(local, "wb") as f:
        pickle.dump({"model": coco_state, "__author__": "Detectron2 Model Zoo"}, f)

    register_tumorseg(phantom_root)
    cfg = recipe_cfg(OUTPUT_DIR=str(tmp_path / "run"))
    assert cfg.MODEL.WEIGHTS == COCO_MASK_RCNN_R50_FPN_3X
    torch.manual_seed(2)
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.resume_or_load(resume=False)
    after = trainer.model.state_dict()

    assert after["roi_heads.box_predictor.cls_score.weight"].shape[0] == 3  # 2 classes + background
    heads = [k for k in after if k.startswith(HEADS)]
    assert len(heads) == 6
    for k, v in after.items():
        if k in heads:
            assert torch.equal(v, before[k]), f"{k} should keep its fresh initialisation"
            assert v.shape != coco_state[k].shape
        else:
            assert np.array_equal(v.numpy(), coco_state[k]), f"{k} not loaded from the checkpoint"


def test_uncached_model_zoo_weights_fail_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path))
    start = time.time()
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_weights(COCO_MASK_RCNN_R50_FPN_3X)
    assert time.time() - start < 1
    msg = str(err.value)
    assert "model_final_f10217.pkl" in msg and str(tmp_path) in msg
    assert "MODEL.WEIGHTS" in msg and to_url(COCO_MASK_RCNN_R50_FPN_3X) in msg


def test_failed_download_names_the_file(tmp_path, monkeypatch):
    from detectron2.utils.file_io import PathManager

    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path))
    monkeypatch.setenv("TUMORSEG_OFFLINE", "0")

    def no_network(url, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(PathManager, "get_local_path", no_network)
    with pytest.raises(WeightsNotFoundError, match="Download failed.*model_final_f10217.pkl"):
        resolve_weights("https://example.invalid/x/model_final_f10217.pkl")


def test_missing_local_weights_file(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="MODEL.WEIGHTS file not found"):
        resolve_weights(str(tmp_path / "model_best.pth"))
    assert resolve_weights("") == ""


def test_trainer_reports_missing_weights_before_training(tmp_path, phantom_root, monkeypatch):
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "empty-cache"))
    register_tumorseg(phantom_root)
    trainer = Trainer(recipe_cfg(OUTPUT_DIR=str(tmp_path / "run")))
    with pytest.raises(WeightsNotFoundError, match="not in the local cache"):
        trainer.resume_or_load(resume=False)
