"""The CUDA paths (#21). The tests marked ``gpu`` run where torch sees a GPU (README "On a GPU":
``install/gpu_session.sh check`` on a lent machine) and are skipped elsewhere; the choices the
code makes for a GPU are checked everywhere."""
import glob
import json
import os

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from tumorseg_d2.benchmark.speed import (DETECTRON2, DETECTRON2_AMP, OURS, OURS_BF16,
                                         OURS_BF16_PLAIN, OURS_FP16, inference_variants,
                                         training_runs)
from tumorseg_d2.config import get_tumorseg_cfg, merge_config
from tumorseg_d2.predictor import BatchPredictor

from conftest import SCRATCH_CFG, TINY, predictor_cfg, run_tool

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ON_GPU = ["MODEL.DEVICE", "cuda"]


def scratch_cfg(device):
    return merge_config(get_tumorseg_cfg(), SCRATCH_CFG, ["MODEL.DEVICE", device])


def test_training_benchmark_on_a_gpu_sets_amp_beside_detectron2s_own():
    """On CUDA the AMP switch is timed both ways, float16 beside Detectron2's AMPTrainer."""
    runs = {name: cfg for name, _, cfg in training_runs(scratch_cfg("cuda"))}
    assert set(runs) == {OURS, DETECTRON2, OURS_BF16, OURS_FP16, DETECTRON2_AMP}
    assert not runs[OURS].SOLVER.AMP.ENABLED and not runs[DETECTRON2].SOLVER.AMP.ENABLED
    for name in (OURS_FP16, DETECTRON2_AMP):
        assert runs[name].SOLVER.AMP.ENABLED and runs[name].SOLVER.AMP.PRECISION == "float16"
    assert runs[OURS_BF16].SOLVER.AMP.PRECISION == "bfloat16"
    # float16 trains on CUDA only: not offered on the CPU. There the CPU recipe's gathered
    # RoIAlign and channels-last are also timed off, in bf16.
    cpu_runs = {name: cfg for name, _, cfg in training_runs(scratch_cfg("cpu"))}
    assert set(cpu_runs) == {OURS, DETECTRON2, OURS_BF16, OURS_BF16_PLAIN}
    assert cpu_runs[OURS_BF16].MODEL.ROI_ALIGN == "gather" and cpu_runs[OURS_BF16].MODEL.CHANNELS_LAST
    plain = cpu_runs[OURS_BF16_PLAIN]
    assert plain.MODEL.ROI_ALIGN == "torchvision" and not plain.MODEL.CHANNELS_LAST
    assert plain.SOLVER.AMP.ENABLED and plain.SOLVER.AMP.PRECISION == "bfloat16"


def test_inference_benchmark_on_a_gpu_leaves_out_the_cpu_runtimes():
    variants = dict(inference_variants(scratch_cfg("cuda")))
    assert "BatchPredictor bf16" in variants
    assert not any(s.get("backbone_runtime", "torch") != "torch" for s in variants.values())
    batch = variants["BatchPredictor fp32"]
    assert batch["batch"] == 8 and batch["workers"] == min(8, os.cpu_count())
    on_cpu = dict(inference_variants(scratch_cfg("cpu")))
    assert any(s.get("backbone_runtime") == "onnxruntime-int8" for s in on_cpu.values())


@gpu
@pytest.mark.parametrize("precision", ["float32", "bfloat16", "float16"])
def test_mask_rcnn_trains_resumes_and_tests_on_the_gpu(precision, phantom_root, tmp_path):
    out = str(tmp_path / "run")
    amp = ["SOLVER.AMP.ENABLED", str(precision != "float32"), "SOLVER.AMP.PRECISION",
           "float16" if precision == "float32" else precision]
    common = ["--config-file", SCRATCH_CFG, *TINY, *ON_GPU, *amp, "DATASETS.TUMORSEG_ROOT",
              phantom_root, "OUTPUT_DIR", out, "SOLVER.CHECKPOINT_PERIOD", "2",
              "TEST.EVAL_PERIOD", "2"]
    first = run_tool("train_net.py", *common, "SOLVER.MAX_ITER", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_tool("train_net.py", "--resume", *common, "SOLVER.MAX_ITER", "4")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = open(os.path.join(out, "log.txt")).read()
    assert "Starting training from iteration 2" in log and "running on the CPU" not in log
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.json")) if line.strip()]
    assert [r["iteration"] for r in rows if "total_loss" in r][-1] == 3
    assert all(np.isfinite(r["total_loss"]) for r in rows if "total_loss" in r)
    checkpoint = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu",
                            weights_only=False)
    assert all(w.dtype != torch.float16 and w.device.type == "cpu"
               for w in checkpoint["model"].values())
    # float16 scales its loss; the scaler's state is saved, as Detectron2's AMPTrainer saves it.
    step_state = checkpoint["trainer"]["_trainer"]
    assert ("grad_scaler" in step_state) == (precision == "float16")
    # The end-of-training test and its report ran on the GPU's detections.
    assert os.path.isfile(os.path.join(out, "evaluation", "tumorseg_test", "metrics.json"))


@gpu
def test_batch_predictor_on_the_gpu_finds_what_it_finds_on_the_cpu(checkpoint):
    weights, root = checkpoint
    images = sorted(glob.glob(os.path.join(root, "test", "*.jpg")))
    on_cpu = BatchPredictor(predictor_cfg(weights))(images)
    on_gpu = BatchPredictor(predictor_cfg(weights, ON_GPU))(images)
    in_bf16 = BatchPredictor(predictor_cfg(weights, ON_GPU), precision="bf16")(images)
    assert next(BatchPredictor(predictor_cfg(weights, ON_GPU)).model.parameters()).is_cuda
    compared = 0
    for cpu, cuda, bf16 in zip(on_cpu, on_gpu, in_bf16):
        confident = np.asarray(cpu["scores"]) > 0.5
        if not confident.any():
            continue
        compared += 1
        # fp32 on either device: the same detections up to floating-point order of operations.
        n = int(confident.sum())
        np.testing.assert_allclose(cuda["boxes"][:n], cpu["boxes"][:n], atol=1.0)
        np.testing.assert_allclose(cuda["scores"][:n], cpu["scores"][:n], atol=0.02)
        # bf16 (8 mantissa bits) may reorder close scores, but finds each confident tumor.
        overlap = box_iou(torch.as_tensor(np.asarray(cpu["boxes"][:n], np.float32)),
                          torch.as_tensor(np.asarray(bf16["boxes"], np.float32).reshape(-1, 4)))
        assert overlap.numel() and (overlap.max(dim=1).values > 0.7).all(), overlap
    assert compared >= len(images) // 2, "the phantom's model found too few tumors to compare"


@gpu
def test_predict_and_benchmark_tools_run_on_the_gpu(checkpoint, tmp_path):
    weights, root = checkpoint
    predicted = tmp_path / "predicted"
    proc = run_tool("predict.py", "--config-file", SCRATCH_CFG, "--weights", weights, "--input",
                    os.path.join(root, "test"), "--output", str(predicted), "--save-json",
                    *ON_GPU)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.isfile(predicted / "predictions.json")
    bench = tmp_path / "bench"
    proc = run_tool("benchmark.py", "--config-file", SCRATCH_CFG, "--output", str(bench),
                    "--images", "4", "--repeats", "1", "--train-iters", "2", "--train-rounds",
                    "1", "--sections", "limit,train,infer", "MODEL.WEIGHTS", weights,
                    "DATASETS.TUMORSEG_ROOT", root, *TINY, *ON_GPU,
                    "OUTPUT_DIR", str(tmp_path / "unused"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.load(open(bench / "benchmark.json"))
    assert result["machine"]["gpu"] == torch.cuda.get_device_name(0)
    # A GPU's matmul limit is in TFLOP/s: far above any CPU's.
    assert result["limit"]["matmul_gflops"]["bf16"] > 10_000
    assert result["training"][DETECTRON2_AMP]["iterations_timed"] == 2
    assert result["training"]["fp16_ratio_to_detectron2_amp"] > 0
    assert all(r["gpu_peak_memory_mib"] > 0 for r in result["inference"])
