import os
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
SCRATCH_CFG = os.path.join(CONFIGS, "mask_rcnn_R_18_FPN_scratch_cpu.yaml")
RECIPE_CFG = os.path.join(CONFIGS, "mask_rcnn_R_50_FPN_3x_adam.yaml")
# The device of the tests that only need the pipeline to run: the CPU, or on a GPU machine
# TUMORSEG_TEST_DEVICE=cuda (install/gpu_session.sh check), so that they take the CUDA paths.
TEST_DEVICE = os.environ.get("TUMORSEG_TEST_DEVICE", "cpu")
# Small and fast: the scratch config at 160 px, for tests that only need the pipeline to run.
TINY = ["INPUT.MIN_SIZE_TRAIN", "(160,)", "INPUT.MAX_SIZE_TRAIN", "160", "INPUT.MIN_SIZE_TEST",
        "160", "INPUT.MAX_SIZE_TEST", "160", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS",
        "2", "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", TEST_DEVICE]
# One fingerprint cache for the session (its tools too): shared by the tests, never the user's.
os.environ["TUMORSEG_CACHE"] = tempfile.mkdtemp(prefix="tumorseg-test-cache-")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # Tests never download weights: a missing remote weight must fail at once.
    monkeypatch.setenv("TUMORSEG_OFFLINE", "1")


def real_data_root():
    candidates = [os.path.join(os.environ["DETECTRON2_DATASETS"], "tumorseg")] \
        if os.environ.get("DETECTRON2_DATASETS") else []
    candidates.append(os.path.join(REPO, "..", "shared", "datasets", "tumorseg"))
    for root in candidates:
        if os.path.isfile(os.path.join(root, "test", "_annotations.coco.json")):
            return os.path.abspath(root)
    return None


@pytest.fixture(scope="session")
def real_root():
    root = real_data_root()
    if root is None:
        msg = ("real TumorSeg data not found ($DETECTRON2_DATASETS/tumorseg or "
               "../shared/datasets/tumorseg)")
        if os.environ.get("TUMORSEG_REQUIRE_REAL_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return root


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory):
    from tumorseg_d2.data import make_phantom_dataset

    root = tmp_path_factory.mktemp("phantom") / "tumorseg"
    return str(make_phantom_dataset(str(root), counts={"train": 12, "valid": 6, "test": 6}))


def run_tool(script, *args, timeout=900):
    """Run tools/<script> as a user would; returns the completed process (output in .stdout)."""
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", script), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    return proc


# Calibrated so the run takes about two minutes on 2 CPU cores and the phantom is learnt: the
# recipe's 60 iterations at 224 px (test bbox AP50 about 70; 40 iterations at 320 px stay near 30).
DEMO_ITERS = "60"
DEMO_SIZE = ["INPUT.MIN_SIZE_TRAIN", "(224,)", "INPUT.MAX_SIZE_TRAIN", "224",
             "INPUT.MIN_SIZE_TEST", "224", "INPUT.MAX_SIZE_TEST", "224"]


@pytest.fixture(scope="session")
def phantom_demo(tmp_path_factory):
    """One run of the README's demo on the phantom; its checkpoint serves the picture tests."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    proc = run_tool("demo.py", "--phantom", "--output", str(out), "--iters", DEMO_ITERS,
                    "SEED", "1", *DEMO_SIZE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.fixture(scope="session")
def checkpoint(phantom_demo):
    """(weights, data root) of the demo's model trained on the phantom."""
    out, _ = phantom_demo
    return str(out / "train" / "model_best.pth"), str(out / "phantom" / "tumorseg")


def predictor_cfg(weights, opts=()):
    from tumorseg_d2.config import get_tumorseg_cfg, merge_config
    return merge_config(get_tumorseg_cfg(), SCRATCH_CFG,
                        ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights, *opts])
