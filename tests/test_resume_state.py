"""--resume restores checkpoint selection and early stopping, and records every iteration once.

Validation is replaced by a scripted figure per iteration, so that which evaluation is best is
known in advance; the interruption is an exception raised at the start of an iteration, after
the last checkpoint (the SIGKILL of a real process is in tests/test_training.py)."""
import json
import os

import pytest
import torch
from detectron2.utils.events import get_event_storage

from tumorseg_d2.engine import Trainer
from tumorseg_d2.engine.run import final_weights, setup, write_training_summary
from tumorseg_d2.evaluation.curves import read_metrics

from conftest import SCRATCH_CFG, TINY


class Killed(Exception):
    pass


def scripted(values):
    """A Trainer.test that returns segm/AP50 = values[iterations done] (0.1 when not listed)."""
    def test(cls, cfg, model, evaluators=None):
        # The evaluation after the last iteration is logged at MAX_ITER, as in Detectron2.
        done = min(get_event_storage().iter + 1, cfg.SOLVER.MAX_ITER)
        return {"segm": {"AP50": values.get(done, 0.1)}}
    return classmethod(test)


def train(phantom_root, out, monkeypatch, values, kill_at=None, resume=False, **keys):
    opts = [*TINY, "DATASETS.TUMORSEG_ROOT", phantom_root, "OUTPUT_DIR", str(out), "SEED", "2",
            "TEST.EVAL_PERIOD", "2", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.VAL_LOSS", "False",
            "TEST.BEST_METRIC", "segm/AP50", "DATASETS.TEST", "()"]
    for k, v in keys.items():
        opts += [k.replace("__", "."), str(v)]
    cfg = setup(SCRATCH_CFG, opts, training=True, resume=resume)
    monkeypatch.setattr(Trainer, "test", scripted(values))
    if kill_at is not None:
        run_step = Trainer.run_step

        def dying_step(self):
            if self.iter == kill_at:
                raise Killed(f"killed at iteration {kill_at}")
            return run_step(self)
        monkeypatch.setattr(Trainer, "run_step", dying_step)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    try:
        trainer.train()
    except Killed:
        return trainer
    finally:
        monkeypatch.undo()
    write_training_summary(cfg, trainer)
    return trainer


def metrics_rows(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def tensorboard_steps(out):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_resume_keeps_the_best_checkpoint_and_logs_each_iteration_once(phantom_root, tmp_path,
                                                                       monkeypatch):
    values = {2: 0.9, 4: 0.5, 6: 0.4, 8: 0.3}  # the best evaluation comes before the kill
    out = tmp_path / "run"
    train(phantom_root, out, monkeypatch, values, kill_at=5, SOLVER__MAX_ITER=8)
    best = (out / "model_best.pth").read_bytes()
    assert torch.load(out / "model_best.pth", weights_only=False)["iteration"] == 1

    trainer = train(phantom_root, out, monkeypatch, values, resume=True, SOLVER__MAX_ITER=8)
    assert trainer.start_iter == 4
    assert (out / "model_best.pth").read_bytes() == best, "a worse evaluation replaced the best"
    assert final_weights(str(out)) == str(out / "model_best.pth")  # what the test split gets

    rows = metrics_rows(out)
    iterations = [r["iteration"] for r in rows]
    assert len(iterations) == len(set(iterations)), iterations
    assert iterations == sorted(iterations)
    assert [r["segm/AP50"] for r in rows if "segm/AP50" in r] == [0.9, 0.5, 0.4, 0.3]
    for tag, steps in tensorboard_steps(out).items():
        assert steps == sorted(set(steps)), (tag, steps)
    # plot_metrics and the sweep's plots: x is the number of iterations trained.
    assert [x for x, _ in read_metrics(str(out))["segm/AP50"]] == [2, 4, 6, 8]

    summary = json.loads((out / "training_summary.json").read_text())
    assert [(s["from"], s["to"]) for s in summary["sessions"]] == [(0, 4), (4, 8)]
    assert summary["iterations"] == 8
    assert summary["seconds"] == pytest.approx(sum(s["seconds"] for s in summary["sessions"]),
                                               abs=0.1)


def test_resumed_early_stopping_stops_where_an_uninterrupted_run_does(phantom_root, tmp_path,
                                                                      monkeypatch):
    # Best at 4; no improvement at 6 and 8: with patience 2 the run stops after 8 iterations.
    values = {2: 0.5, 4: 0.6, 6: 0.55, 8: 0.58, 10: 0.3}
    keys = {"SOLVER__MAX_ITER": 20, "TEST__EARLY_STOP_PATIENCE": 2}
    whole = train(phantom_root, tmp_path / "whole", monkeypatch, values, **keys)
    assert whole.iterations_done() == 8

    out = tmp_path / "killed"
    train(phantom_root, out, monkeypatch, values, kill_at=7, **keys)
    resumed = train(phantom_root, out, monkeypatch, values, resume=True, **keys)
    assert resumed.start_iter == 6
    assert resumed.iterations_done() == 8
    assert json.loads((out / "training_summary.json").read_text())["iterations"] == 8


def test_extending_a_finished_run_continues_after_its_last_iteration(phantom_root, tmp_path,
                                                                      monkeypatch):
    """The validation after the last iteration is the best: model_best.pth, saved after
    model_final.pth and so the checkpoint --resume reads, names the last iteration done (found
    on a GPU, where such a run skipped an iteration)."""
    out = tmp_path / "run"
    train(phantom_root, out, monkeypatch, {2: 0.5, 4: 0.9}, SOLVER__MAX_ITER=4)
    assert (out / "last_checkpoint").read_text() == "model_best.pth"
    assert torch.load(out / "model_best.pth", weights_only=False)["iteration"] == 3
    trainer = train(phantom_root, out, monkeypatch, {}, resume=True, SOLVER__MAX_ITER=6)
    assert trainer.start_iter == 4 and trainer.iterations_done() == 6
    iterations = [r["iteration"] for r in metrics_rows(out)]
    assert sorted(set(iterations)) == iterations, iterations
    summary = json.loads((out / "training_summary.json").read_text())
    assert [(s["from"], s["to"]) for s in summary["sessions"]] == [(0, 4), (4, 6)]
