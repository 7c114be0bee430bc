"""MODEL_EMA: the moving average of the weights follows its definition, is what validation judges
and what evaluation loads, and survives --resume exactly."""
import pytest
import torch
from torch import nn

from tumorseg_d2.checkpoint import SafeCheckpointer
from tumorseg_d2.config import get_tumorseg_cfg, merge_config, validate_config
from tumorseg_d2.engine import Trainer
from tumorseg_d2.engine.ema import ModelEMA, ema_decay
from tumorseg_d2.engine.run import setup

from conftest import SCRATCH_CFG, TINY


def small_model():
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))


def set_weights(model, value):
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.fill_(value)


def test_the_average_follows_its_definition():
    model = small_model()
    set_weights(model, 1.0)
    ema = ModelEMA(model, decay=0.9)
    expected = 1.0
    for step, value in enumerate([3.0, -2.0, 5.0], start=1):
        set_weights(model, value)
        model[1].num_batches_tracked.fill_(step)
        ema.update(model)
        d = min(0.9, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * value
        assert ema_decay(0.9, step) == d
        assert torch.allclose(ema.weights["0.weight"], torch.full_like(model[0].weight, expected))
        assert torch.allclose(ema.weights["1.running_var"], torch.full((2,), expected))
        assert ema.weights["1.num_batches_tracked"] == step  # counts are copied, not averaged
    assert ema_decay(0.9, 1000) == 0.9  # the ramp ends at the configured decay

    with ema.applied_to(model):
        assert torch.allclose(model[0].weight, torch.full_like(model[0].weight, expected))
    assert torch.equal(model[0].weight, torch.full_like(model[0].weight, 5.0))  # its own back


def test_a_decay_outside_0_1_is_refused():
    cfg = merge_config(get_tumorseg_cfg(), None, ["MODEL_EMA.DECAY", "1.0"])
    with pytest.raises(ValueError, match="MODEL_EMA.DECAY is 1.0"):
        validate_config(cfg)


class Killed(Exception):
    pass


def train(phantom_root, out, max_iter=4, kill_at=None, resume=False):
    """Train the tiny model with MODEL_EMA (validation replaced by one that records the weights it
    is given); returns the trainer and those weights."""
    cfg = setup(SCRATCH_CFG, [*TINY, "DATASETS.TUMORSEG_ROOT", phantom_root, "OUTPUT_DIR", str(out),
                              "SEED", "2", "SOLVER.MAX_ITER", str(max_iter), "TEST.EVAL_PERIOD", "2",
                              "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.VAL_LOSS", "False",
                              "DATASETS.TEST", "()", "MODEL_EMA.ENABLED", "True",
                              "MODEL_EMA.DECAY", "0.5"], training=True, resume=resume)
    judged = []

    def test(cls, cfg, model, evaluators=None):
        judged.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"segm": {"AP50": 0.5}}

    def run_step(self):
        if self.iter == kill_at:
            raise Killed
        return Trainer.run_step(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "test", classmethod(test))
        trainer = type("KillableTrainer", (Trainer,), {"run_step": run_step})(cfg)
        trainer.resume_or_load(resume=resume)
        try:
            trainer.train()
        except Killed:
            pass
    return trainer, judged


def test_validation_judges_the_average_and_evaluation_loads_it(phantom_root, tmp_path):
    trainer, judged = train(phantom_root, tmp_path / "run")
    assert trainer.ema.updates == 4
    averaged, trained = trainer.ema.weights, trainer.model.state_dict()
    key = "roi_heads.box_predictor.cls_score.weight"
    assert not torch.equal(averaged[key], trained[key])
    # The validation after the last iteration judged the average, and the model got its own back.
    assert all(torch.equal(judged[-1][k], averaged[k]) for k in averaged)
    checkpoint = torch.load(tmp_path / "run" / "model_final.pth", weights_only=True)
    assert checkpoint["ema"]["updates"] == 4
    assert torch.equal(checkpoint["model"][key], trained[key])

    model = Trainer.build_model(trainer.cfg)
    SafeCheckpointer(model, same_classes=True).load(str(tmp_path / "run" / "model_final.pth"))
    assert torch.equal(model.state_dict()[key], averaged[key])  # evaluation loads the average
    SafeCheckpointer(model, averaged=False).load(str(tmp_path / "run" / "model_final.pth"))
    assert torch.equal(model.state_dict()[key], trained[key])


def test_resume_continues_the_average_exactly(phantom_root, tmp_path):
    whole, _ = train(phantom_root, tmp_path / "whole", max_iter=6)
    train(phantom_root, tmp_path / "killed", max_iter=6, kill_at=3)
    resumed, _ = train(phantom_root, tmp_path / "killed", max_iter=6, resume=True)
    assert resumed.start_iter == 2 and resumed.ema.updates == 6
    assert all(torch.equal(whole.ema.weights[k], resumed.ema.weights[k]) for k in whole.ema.weights)
