"""Only training writes into a training run's folder; the other tools write under their own
outputs, leave the dataset catalog as they found it, and read the split that fits the config."""
import hashlib
import json
import os
import re
import shlex
import subprocess
import tempfile

import pytest
from detectron2.data import MetadataCatalog

from tumorseg_d2.config import check_trainable, get_tumorseg_cfg, merge_config

from conftest import CONFIGS, RECIPE_CFG, REPO, SCRATCH_CFG, TINY, run_tool


def snapshot(folder):
    """{relative path: sha256} of every file under ``folder``."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def finished_run(phantom_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    proc = run_tool("train_net.py", "--config-file", SCRATCH_CFG, *TINY,
                    "DATASETS.TUMORSEG_ROOT", phantom_root, "OUTPUT_DIR", str(run),
                    "SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "2", "TEST.VAL_LOSS", "False")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_every_tool_leaves_a_finished_run_byte_identical(finished_run, phantom_root, tmp_path):
    run = finished_run
    before = snapshot(run)
    assert {"config.yaml", "log.txt", "metrics.json", "model_final.pth",
            "training_summary.json"} <= set(before)
    config = str(run / "config.yaml")  # the run's own config: its OUTPUT_DIR is the run
    weights = str(run / "model_final.pth")
    calls = {
        "evaluate": ["evaluate.py", "--config-file", config, "--weights", weights],
        "eval-only": ["train_net.py", "--config-file", config, "--eval-only",
                      "MODEL.WEIGHTS", weights],
        "visualize": ["visualize.py", "--config-file", config, "--weights", weights, "--num", "2",
                      "--output", str(tmp_path / "vis")],
        "predict": ["predict.py", "--config-file", config, "--weights", weights, "--input",
                    os.path.join(phantom_root, "test"), "--output", str(tmp_path / "pred")],
        "compare": ["compare.py", str(run), "--output", str(tmp_path / "compare"), "--images", "1"],
        "benchmark": ["benchmark.py", "--config-file", config, "--sections", "limit", "--images",
                      "1", "--output", str(tmp_path / "bench")],
        "plot_metrics": ["plot_metrics.py", str(run), "--output", str(tmp_path / "curves.png")],
    }
    for name, call in calls.items():
        proc = run_tool(*call)
        assert proc.returncode == 0, (name, proc.stderr[-3000:])
        assert snapshot(run) == before, f"tools/{call[0]} changed {run}"
    # Evaluations of the run without --output go beside it.
    assert (run.parent / "run-eval" / "evaluation" / "tumorseg_test" / "report.md").is_file()
    assert (run.parent / "run-eval" / "inference" / "tumorseg_test" / "metrics.json").is_file()

    for call in (["evaluate.py", "--config-file", config, "--weights", weights],
                 ["predict.py", "--config-file", config, "--weights", weights, "--input",
                  os.path.join(phantom_root, "test")],
                 ["benchmark.py", "--config-file", config]):
        inside = run_tool(*call, "--output", str(run / "out"))
        assert inside.returncode != 0, call
        assert f"is inside the training run {os.path.realpath(run)}" in inside.stderr, call
    assert snapshot(run) == before


def test_compare_runs_the_readme_command_line_as_written(phantom_root, tmp_path):
    readme = open(os.path.join(REPO, "README.md")).read()
    (line,) = [m for m in re.findall(r"^\.venv/bin/python tools/compare\.py --train .*$", readme,
                                     re.M) if "SOLVER.MAX_ITER" in m]
    argv = shlex.split(line)
    out_at = argv.index("--output") + 1
    argv[out_at] = str(tmp_path / "quick")  # where it writes, not what it does
    env = dict(os.environ, DETECTRON2_DATASETS=os.path.dirname(phantom_root))
    argv[0] = os.path.join(REPO, argv[0]) if os.path.exists(os.path.join(REPO, argv[0])) \
        else "python"
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    iters = int(argv[argv.index("SOLVER.MAX_ITER") + 1])
    (run,) = [d for d in (tmp_path / "quick").iterdir() if (d / "training_summary.json").is_file()]
    assert json.loads((run / "training_summary.json").read_text())["iterations"] == iters
    assert (tmp_path / "quick" / "compare.md").is_file()


def test_make_baselines_passes_its_args_as_overrides():
    from tumorseg_d2.cli.compare import parse_args

    dry = subprocess.run(["make", "-n", "baselines", "ARGS=SOLVER.MAX_ITER 10 SEED 3"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    (line,) = [x for x in dry.stdout.replace("\\\n", " ").splitlines() if "tools/compare.py" in x]
    args = parse_args(shlex.split(line)[2:])
    assert args.opts == ["SOLVER.MAX_ITER", "10", "SEED", "3"]
    assert len(args.train) == 5 and not args.runs and args.output == "output/baselines"


def test_an_evaluator_in_a_temporary_folder_leaves_the_catalog_alone(phantom_root):
    from tumorseg_d2.data import register_tumorseg
    from tumorseg_d2.evaluation import TumorCOCOEvaluator

    register_tumorseg(phantom_root)
    with tempfile.TemporaryDirectory() as tmp:
        TumorCOCOEvaluator("tumorseg_test", tmp)
    assert "json_file" not in MetadataCatalog.get("tumorseg_test").as_dict()
    with tempfile.TemporaryDirectory() as tmp:  # v0.6 would read the deleted conversion here
        assert TumorCOCOEvaluator("tumorseg_test", tmp)._coco_api.getImgIds()


def test_benchmarks_use_the_one_class_split_for_a_class_agnostic_config(phantom_root, tmp_path):
    pixel_cfg = os.path.join(CONFIGS, "baselines", "encoder_decoder_2level_cpu.yaml")
    proc = run_tool("benchmark_eval.py", "--config-file", pixel_cfg, "--root", phantom_root,
                    "--repeats", "1", "--output", str(tmp_path / "eval.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "eval.json").read_text())["dataset"] == "tumorseg_agnostic_test"
    agnostic = ["DATASETS.TRAIN", "('tumorseg_agnostic_train',)", "DATASETS.VAL",
                "('tumorseg_agnostic_valid',)", "DATASETS.TEST", "('tumorseg_agnostic_test',)",
                "MODEL.ROI_HEADS.NUM_CLASSES", "1"]
    proc = run_tool("benchmark.py", "--config-file", SCRATCH_CFG, "--sections", "limit",
                    "--images", "1", "--output", str(tmp_path / "bench"), *TINY, *agnostic,
                    "DATASETS.TUMORSEG_ROOT", phantom_root, "OUTPUT_DIR", str(tmp_path / "none"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    bench = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    assert bench["dataset"] == "tumorseg_agnostic_test_first1"


def test_training_from_scratch_with_frozen_batch_norm_is_refused():
    cfg = merge_config(get_tumorseg_cfg(), RECIPE_CFG, ["MODEL.WEIGHTS", ""])
    with pytest.raises(ValueError, match=r"MODEL.RESNETS.NORM is FrozenBN.*"
                                         r"MODEL.RESNETS.NORM BN MODEL.BACKBONE.FREEZE_AT 0"):
        check_trainable(cfg)
    frozen_stages = merge_config(get_tumorseg_cfg(), SCRATCH_CFG, ["MODEL.BACKBONE.FREEZE_AT", "2"])
    with pytest.raises(ValueError, match="MODEL.BACKBONE.FREEZE_AT is 2"):
        check_trainable(frozen_stages)
    # The keys the message names make it trainable; pretrained weights need neither.
    check_trainable(merge_config(get_tumorseg_cfg(), RECIPE_CFG, [
        "MODEL.WEIGHTS", "", "MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0"]))
    check_trainable(merge_config(get_tumorseg_cfg(), RECIPE_CFG, []))
    check_trainable(merge_config(get_tumorseg_cfg(), SCRATCH_CFG, []))


def test_train_net_refuses_the_frozen_scratch_config(phantom_root, tmp_path):
    proc = run_tool("train_net.py", "--config-file", RECIPE_CFG, "MODEL.WEIGHTS", "", "MODEL.DEVICE",
                    "cpu", "DATASETS.TUMORSEG_ROOT", phantom_root, "OUTPUT_DIR", str(tmp_path / "r"))
    assert proc.returncode != 0
    assert "MODEL.RESNETS.NORM BN MODEL.BACKBONE.FREEZE_AT 0" in proc.stderr
