"""tools/sweep.py: the grid, shared checkpoints, resuming, and the Ray backend."""
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from detectron2.solver import build_lr_scheduler as detectron2_scheduler

from tumorseg_d2.config import get_tumorseg_cfg, merge_config
from tumorseg_d2.data import register_tumorseg
from tumorseg_d2.engine.schedule import build_lr_scheduler
from tumorseg_d2.sweep import run_sweep, sweep_seed, valid_metrics

from conftest import REPO, SCRATCH_CFG, TINY, run_tool

OUTPUTS = ("results.csv", "results.md", "best.json", "loss_box_reg.png", "loss_mask.png",
           "total_loss.png", "validation.png", os.path.join("test", "report.md"))


def sweep_args(out, root, iters=("3", "5"), lrs=("1e-3", "5e-4"), *extra):
    return ["--config-file", SCRATCH_CFG, "--iters", *iters, "--lrs", *lrs, "--output", out,
            *TINY, "DATASETS.TUMORSEG_ROOT", root, "SEED", "7", *extra]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def lrs_of(cfg, build, iters):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    scheduler, lrs = build(cfg, optimizer), []
    for _ in range(iters):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_schedule_depends_on_the_iteration_only():
    cfg = get_tumorseg_cfg()
    cfg.SOLVER.merge_from_list(["BASE_LR", 0.01, "WARMUP_ITERS", 100, "STEPS", (150, 250),
                                "MAX_ITER", 300])
    ours, detectron2s = lrs_of(cfg, build_lr_scheduler, 300), lrs_of(cfg, detectron2_scheduler, 300)
    assert ours == pytest.approx(detectron2s, rel=1e-12)  # Detectron2's schedule, ...
    cfg.SOLVER.MAX_ITER = 1000
    assert lrs_of(cfg, build_lr_scheduler, 300) == ours  # ... whatever the run's length, exactly
    assert lrs_of(cfg, detectron2_scheduler, 300) != detectron2s  # (Detectron2's is not)


def test_sweep_on_phantom_shares_checkpoints_and_resumes(phantom_root, tmp_path):
    out = str(tmp_path / "sweep")
    proc = run_tool("sweep.py", *sweep_args(out, phantom_root))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in OUTPUTS:
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert "training iterations: 10 for 4 grid points (separate runs would need 16)" in proc.stdout

    rows = read_csv(os.path.join(out, "results.csv"))
    assert sorted((float(r["lr"]), int(r["iters"])) for r in rows) == \
        [(5e-4, 3), (5e-4, 5), (1e-3, 3), (1e-3, 5)]
    # --metric accepts exactly the figures the validation rows record.
    recorded = {k for line in open(os.path.join(out, "trials", "lr0.001", "milestones.jsonl"))
                for k in json.loads(line)} - {"lr", "iters", "train_s", "eval_s", "checkpoint"}
    cfg = merge_config(get_tumorseg_cfg(), SCRATCH_CFG, [])
    register_tumorseg(phantom_root)
    assert set(valid_metrics(cfg)) == recorded
    # Every file the last lines name exists.
    for name in re.findall(r"[\w/.-]+\.(?:md|csv|json|png)", proc.stdout.split("[sweep] results:")[1]):
        assert os.path.isfile(os.path.join(out, name)) or os.path.isfile(name), name
    assert all(float(r["validation_loss"]) > 0 and r["segm/AP"] != "" for r in rows)
    best = json.load(open(os.path.join(out, "best.json")))
    top = max(rows, key=lambda r: (float(r["segm/AP"]), -int(r["iters"])))
    assert (best["lr"], best["iters"]) == (float(top["lr"]), int(top["iters"]))
    assert best["validated_on"] == "tumorseg_valid" and best["test"]["dataset"] == "tumorseg_test"
    test_metrics = json.load(open(os.path.join(out, "test", "metrics.json")))
    assert test_metrics["weights"] == best["checkpoint"] and os.path.isfile(best["checkpoint"])

    # The checkpoint at 3 iterations of the 5-iteration trial IS a 3-iteration training, even one
    # that validated (AP and loss) after every iteration.
    alone = str(tmp_path / "alone")
    proc = run_tool("train_net.py", "--config-file", SCRATCH_CFG, *TINY,
                    "DATASETS.TUMORSEG_ROOT", phantom_root, "SEED", "7", "OUTPUT_DIR", alone,
                    "SOLVER.BASE_LR", "1e-3", "SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    shared = weights(os.path.join(out, "trials", "lr0.001", "model_after_3_iters.pth"))
    standalone = weights(os.path.join(alone, "model_final.pth"))
    assert shared.keys() == standalone.keys()
    assert all(torch.equal(shared[k], standalone[k]) for k in shared)
    later = weights(os.path.join(out, "trials", "lr0.001", "model_after_5_iters.pth"))
    assert not all(torch.equal(shared[k], later[k]) for k in shared)  # the comparison can fail

    # Rerunning the finished sweep recomputes nothing.
    rows_file = os.path.join(out, "trials", "lr0.001", "milestones.jsonl")
    before = open(rows_file).read()
    again = run_tool("sweep.py", *sweep_args(out, phantom_root))
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert log.count("finished earlier") == 2 and "done earlier; kept" in log
    assert "Starting training" not in log
    assert open(rows_file).read() == before

    # The same folder with another config is refused, not mixed.
    other = run_tool("sweep.py", *sweep_args(out, phantom_root), "SOLVER.IMS_PER_BATCH", "4")
    assert other.returncode != 0
    assert "holds a sweep with another config" in other.stderr
    assert "SOLVER.IMS_PER_BATCH: 2 -> 4" in other.stderr


def test_killed_sweep_resumes_from_its_last_checkpoint(phantom_root, tmp_path):
    out = str(tmp_path / "sweep")
    args = sweep_args(out, phantom_root, ("2", "40"), ("1e-3",), "SOLVER.CHECKPOINT_PERIOD", "4")
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "tools", "sweep.py"), *args],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trial = os.path.join(out, "trials", "lr0.001")
    deadline = time.time() + 600
    while not os.path.isfile(os.path.join(trial, "model_0000011.pth")):
        assert proc.poll() is None and time.time() < deadline, "the sweep ended before the kill"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first_rows = open(os.path.join(trial, "milestones.jsonl")).read()
    assert [json.loads(x)["iters"] for x in first_rows.splitlines()] == [2]
    last = open(os.path.join(trial, "last_checkpoint")).read().strip()
    resume_at = torch.load(os.path.join(trial, last), weights_only=False)["iteration"] + 1

    resumed = run_tool("sweep.py", *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Starting training from iteration {resume_at}" in resumed.stdout + resumed.stderr
    rows = open(os.path.join(trial, "milestones.jsonl")).read()
    assert rows.startswith(first_rows)  # the row at 2 iterations is kept, not recomputed
    assert [json.loads(x)["iters"] for x in rows.splitlines()] == [2, 40]
    assert len(read_csv(os.path.join(out, "results.csv"))) == 2


def test_length_dependent_schedule_trains_each_length(phantom_root, tmp_path):
    out = str(tmp_path / "sweep")
    proc = run_tool("sweep.py", *sweep_args(out, phantom_root, ("2", "3"), ("1e-3",),
                                            "SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "depends on SOLVER.MAX_ITER" in proc.stdout + proc.stderr
    assert sorted(os.listdir(os.path.join(out, "trials"))) == ["lr0.001_iters2", "lr0.001_iters3"]
    assert "training iterations: 5 for 2 grid points (separate runs would need 5)" in proc.stdout


def test_sweep_keeps_the_seed_of_the_config_file(tmp_path):
    assert sweep_seed(str(tmp_path), 7) == 7  # SEED 7 in the file or as an override
    assert 0 <= sweep_seed(str(tmp_path), -1) < 2**16  # none: a new one, recorded in sweep.json
    (tmp_path / "sweep.json").write_text(json.dumps({"config": {"SEED": 123}}))
    assert sweep_seed(str(tmp_path), -1) == 123


def test_every_recorded_figure_of_a_pixel_model_is_a_sweep_metric():
    # The loss terms are named after the model's loss; the config turns the loss pass off.
    cfg = merge_config(get_tumorseg_cfg(), os.path.join(
        REPO, "configs", "baselines", "unet_cpu.yaml"), ["TEST.VAL_LOSS", "True"])
    assert {"overlap/Dice", "val_loss_bce", "val_loss_dice", "segm/AP50"} <= set(valid_metrics(cfg))


def test_a_loss_metric_without_the_validation_loss_is_refused_with_the_reason(tmp_path):
    cfg = merge_config(get_tumorseg_cfg(), SCRATCH_CFG, ["TEST.VAL_LOSS", "False"])
    assert "segm/AP" in valid_metrics(cfg)
    assert not any("loss" in m for m in valid_metrics(cfg))
    with pytest.raises(ValueError, match="TEST.VAL_LOSS False turns off"):
        run_sweep(cfg, metric="validation_loss", output=str(tmp_path / "sweep"))
    assert not os.path.exists(tmp_path / "sweep")


def test_unknown_metric_is_refused_before_training(phantom_root, tmp_path):
    out = str(tmp_path / "sweep")
    proc = run_tool("sweep.py", "--metric", "segm/Dice", *sweep_args(out, phantom_root))
    assert proc.returncode != 0
    assert "--metric segm/Dice is not measured on validation" in proc.stderr
    assert "segm/AP50" in proc.stderr
    assert not os.path.exists(os.path.join(out, "trials"))


def test_sweep_with_ray_backend(phantom_root, tmp_path):
    out = str(tmp_path / "sweep")
    proc = run_tool("sweep.py", "--backend", "ray", "--cpus-per-trial", "1",
                    *sweep_args(out, phantom_root, ("2", "3")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.isdir(os.path.join(out, "ray", "tune"))  # Ray Tune ran the trials
    for name in OUTPUTS:
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert len(read_csv(os.path.join(out, "results.csv"))) == 4


def test_sweep_on_real_data_writes_every_output(real_root, tmp_path):
    out = str(tmp_path / "sweep")
    # One length, without the validation loss: validating 429 real slices is most of the time.
    proc = run_tool("sweep.py", *sweep_args(out, real_root, ("2",), ("1e-4",)),
                    "TEST.DETECTIONS_PER_IMAGE", "10", "TEST.VAL_LOSS", "False")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in OUTPUTS:
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    rows = read_csv(os.path.join(out, "results.csv"))
    assert [int(r["iters"]) for r in rows] == [2]
    assert "validation_loss" not in rows[0]  # TEST.VAL_LOSS False skips the loss pass
    best = json.load(open(os.path.join(out, "best.json")))
    assert best["test"]["coco"]["bbox"]["AP50"] >= 0 and best["validated_on"] == "tumorseg_valid"
    assert json.load(open(os.path.join(out, "test", "metrics.json")))["images"] == 215


def test_sweep_over_seeds_chooses_on_the_mean_and_tests_every_seed(phantom_root, tmp_path):
    out = tmp_path / "seeds"
    proc = run_tool("sweep.py", "--seeds", "2", *sweep_args(str(out), phantom_root, ("2", "3"),
                                                            ("1e-3",)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # SEED 7 in the overrides: the seeds are 7 and 8, each a complete sweep of its own.
    per_seed = {}
    for seed in (7, 8):
        assert json.load(open(out / f"seed{seed}" / "sweep.json"))["config"]["SEED"] == seed
        per_seed[seed] = {int(r["iters"]): float(r["segm/AP"])
                          for r in read_csv(out / f"seed{seed}" / "results.csv")}
    grid = read_csv(out / "seeds.csv")
    for point in grid:
        values = [per_seed[s][int(point["iters"])] for s in (7, 8)]
        assert float(point["mean"]) == pytest.approx(sum(values) / 2)
    best = json.load(open(out / "best.json"))
    top = max(grid, key=lambda p: (float(p["mean"]), -int(p["iters"])))
    assert (best["lr"], best["iters"]) == (float(top["lr"]), int(top["iters"]))
    for seed in (7, 8):
        tested = json.load(open(out / f"seed{seed}" / "test" / "metrics.json"))
        assert tested["weights"].endswith(f"model_after_{best['iters']}_iters.pth")
        assert best["test"]["segm AP50"]["per_seed"][str(seed)] == \
            pytest.approx(tested["coco"]["segm"]["AP50"])
    for name in ("results.md", "seeds.png"):
        assert (out / name).stat().st_size > 0
    assert "over the seeds" in proc.stdout
