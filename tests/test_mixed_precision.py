"""Mixed-precision training on the CPU (SOLVER.AMP.ENABLED, PRECISION bfloat16; #20)."""
import itertools
import json
import os

import pytest
import torch
from detectron2.utils.events import EventStorage
from torch import nn

from tumorseg_d2.config import get_tumorseg_cfg, merge_config, validate_config
from tumorseg_d2.engine import amp
from tumorseg_d2.engine.amp import MixedPrecisionTrainer, autocast_dtype, step_trainer

from conftest import SCRATCH_CFG, TINY, run_tool


class Regression(nn.Module):
    """y = 3x through a linear layer; records the type its layer computed in."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 1)
        self.seen = []

    def forward(self, batch):
        x, y = batch
        out = self.linear(x)
        self.seen.append(out.dtype)
        return {"loss_mse": ((out.float() - y) ** 2).mean()}


def batches():
    g = torch.Generator().manual_seed(0)
    while True:
        x = torch.randn(16, 8, generator=g)
        yield x, 3 * x.sum(1, keepdim=True)


def test_bf16_autocast_computes_in_bf16_and_keeps_fp32_weights_that_learn():
    torch.manual_seed(0)
    model = Regression().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02)
    trainer = MixedPrecisionTrainer(model, batches(), optimizer, torch.bfloat16)
    assert trainer.grad_scaler is None  # bf16 has fp32's range: no loss scaling
    with EventStorage() as storage:
        for _ in range(150):
            trainer.run_step()
            storage.step()
    losses = [v for v, _ in storage.history("total_loss").values()]
    assert set(model.seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32
               for p in model.parameters())
    assert losses[-1] < 0.05 * losses[0]  # it learns (the fit is limited by bf16's 8 bits)
    assert "grad_scaler" not in trainer.state_dict()


def test_precision_keys_are_checked_with_the_fix():
    cfg = merge_config(get_tumorseg_cfg(), SCRATCH_CFG, ["SOLVER.AMP.ENABLED", "True"])
    assert autocast_dtype(merge_config(get_tumorseg_cfg(), SCRATCH_CFG, [])) is None
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    with pytest.raises(ValueError, match="float16 trains on CUDA only.*bfloat16"):
        autocast_dtype(cfg)  # Detectron2's default precision, float16, on the CPU
    cfg.SOLVER.AMP.PRECISION = "bfloat16"
    assert autocast_dtype(cfg) == torch.bfloat16
    cfg.SOLVER.AMP.PRECISION = "bf16"
    with pytest.raises(ValueError, match="SOLVER.AMP.PRECISION is 'bf16'"):
        validate_config(cfg)
    cfg.SOLVER.AMP.ENABLED = False
    model = Regression()
    plain = step_trainer(cfg, model, batches(), torch.optim.SGD(model.parameters(), lr=0.1))
    assert not isinstance(plain, MixedPrecisionTrainer)


def test_bf16_on_a_cpu_without_it_is_warned_with_the_fix(monkeypatch):
    monkeypatch.setattr(amp, "native_bf16_on_cpu", lambda: False)
    message = amp.slow_bf16_warning(torch.bfloat16, "cpu")
    assert "without native bfloat16" in message and "SOLVER.AMP.ENABLED False" in message
    assert amp.slow_bf16_warning(torch.float32, "cpu") is None
    monkeypatch.setattr(amp, "native_bf16_on_cpu", lambda: True)
    assert amp.slow_bf16_warning(torch.bfloat16, "cpu") is None


def test_mask_rcnn_trains_and_resumes_in_bf16(phantom_root, tmp_path):
    out = str(tmp_path / "run")
    common = ["--config-file", SCRATCH_CFG, *TINY, "DATASETS.TUMORSEG_ROOT", phantom_root,
              "OUTPUT_DIR", out, "SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", "bfloat16",
              "TEST.EVAL_PERIOD", "0", "TEST.VAL_LOSS", "False", "SOLVER.CHECKPOINT_PERIOD", "1",
              "DATASETS.TEST", "()"]
    first = run_tool("train_net.py", *common, "SOLVER.MAX_ITER", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_tool("train_net.py", "--resume", *common, "SOLVER.MAX_ITER", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Starting training from iteration 1" in open(os.path.join(out, "log.txt")).read()
    with open(os.path.join(out, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    losses = [r["total_loss"] for r in rows if "total_loss" in r]
    assert losses and all(0 < v < float("inf") for v in losses)
    weights = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu",
                         weights_only=False)["model"]
    assert all(w.dtype in (torch.float32, torch.int64) for w in weights.values())
    assert not any(itertools.chain.from_iterable(
        torch.isnan(w).any().view(1) for w in weights.values() if w.is_floating_point()))
