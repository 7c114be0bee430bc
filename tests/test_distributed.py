"""The distributed path (Detectron2's launch, torch.distributed) on CPU processes with gloo."""
import atexit
import json
import os

import pytest
import torch
import torch.distributed as dist
from detectron2.utils import comm

from conftest import CONFIGS, SCRATCH_CFG, TINY, run_tool

TWO_PROCESSES = ["--num-gpus", "0", "--num-processes", "2", "--dist-url", "auto"]


def _threads():
    return [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]


def _train_and_record_the_groups_at_exit(out_dir):
    """Runs in each worker: a DistributedDataParallel step and Detectron2's all_gather (which caches
    a gloo group), with the model left in a reference cycle as a trainer leaves it; at interpreter
    shutdown, write whether a group is still up and which threads are left."""
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
    model(torch.randn(8, 4)).sum().backward()
    comm.all_gather(dist.get_rank())
    cycle = {"model": model}
    cycle["self"] = cycle
    assert any("gloo" in name for name in _threads())  # the check below can fail
    path = os.path.join(out_dir, f"rank{dist.get_rank()}.json")
    atexit.register(lambda: open(path, "w").write(json.dumps(
        {"initialized": dist.is_initialized(), "threads": sorted(set(_threads()))})))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads threads from Linux's /proc")
def test_each_process_ends_its_groups_threads_before_the_interpreter_shuts_down(tmp_path):
    """Group threads left to interpreter shutdown can abort a finished worker (SIGABRT from gloo's
    or the TCP store's threads), failing a run whose work was done; launch ends them when the work
    returns. destroy_process_group alone does not: the groups' threads run while any reference to
    a group lives (Detectron2's comm holds two, a trainer's DistributedDataParallel one)."""
    from tumorseg_d2.engine.launch import launch

    launch(_train_and_record_the_groups_at_exit, 0, num_processes=2, dist_url="auto",
           args=(str(tmp_path),))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0.json", "rank1.json"]
    for path in tmp_path.iterdir():
        record = json.loads(path.read_text())
        assert record["initialized"] is False
        assert not [t for t in record["threads"] if "gloo" in t or "tcpstore" in t], record


def test_two_processes_train_validate_early_stop_and_checkpoint(phantom_root, tmp_path):
    out = tmp_path / "run"
    proc = run_tool("train_net.py", *TWO_PROCESSES, "--config-file", SCRATCH_CFG, *TINY,
                    "SOLVER.IMS_PER_BATCH", "4", "DATASETS.TUMORSEG_ROOT", phantom_root,
                    "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "20", "TEST.EVAL_PERIOD", "2",
                    "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EARLY_STOP_PATIENCE", "1",
                    "TEST.BEST_METRIC", "segm/AP50", "SEED", "1",
                    timeout=900)  # a hang (a rank left waiting in a collective) ends here
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "World size: 2" in log
    # Untrained, segm/AP50 is 0 at the first two validations: with patience 1 every process
    # stops after iteration 4 (a process that did not would wait forever in its next all-reduce).
    assert "Early stopping at iteration 4" in log
    assert json.loads((out / "training_summary.json").read_text())["iterations"] == 4
    assert (out / "model_best.pth").is_file()
    assert (out / "inference" / "tumorseg_test" / "metrics.json").is_file()
    assert (out / "log.txt.rank1").is_file()
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert any("segm/AP50" in r for r in rows) and any("validation_loss" in r for r in rows)


def test_two_processes_of_batch_2_follow_one_process_of_batch_4(phantom_root, tmp_path):
    """DistributedDataParallel averages the two processes' gradients, and the data stream gives
    each process its share of the same images: with a network whose loss is a mean over images
    and that has no batch statistics (EncoderDecoder2), the trajectory is the same."""
    common = ["--config-file", os.path.join(CONFIGS, "baselines", "encoder_decoder_2level.yaml"),
              "DATASETS.TUMORSEG_ROOT", phantom_root, "MODEL.DEVICE", "cpu", "SEED", "5",
              "MODEL.PIXEL_SEG.INPUT_SIZE", "64", "MODEL.PIXEL_SEG.LOSS", "BCE+DICE",
              "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "8", "SOLVER.CHECKPOINT_PERIOD", "1",
              "TEST.EVAL_PERIOD", "0", "TEST.EARLY_STOP_PATIENCE", "0", "DATASETS.TEST", "()",
              "DATALOADER.NUM_WORKERS", "0"]
    one = run_tool("train_net.py", *common, "OUTPUT_DIR", str(tmp_path / "one"))
    assert one.returncode == 0, (one.stdout + one.stderr)[-3000:]
    two = run_tool("train_net.py", *TWO_PROCESSES, *common, "OUTPUT_DIR", str(tmp_path / "two"),
                   timeout=900)
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]

    def losses(run):
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.json").read_text().splitlines()]
        return {r["iteration"]: r["total_loss"] for r in rows if "total_loss" in r}
    a, b = losses("one"), losses("two")
    assert sorted(a) == list(range(8)) and sorted(b) == sorted(a)
    assert all(abs(a[i] - b[i]) <= 1e-5 * max(1.0, abs(a[i])) for i in a), (a, b)
    wa = torch.load(tmp_path / "one" / "model_final.pth", weights_only=False)["model"]
    wb = torch.load(tmp_path / "two" / "model_final.pth", weights_only=False)["model"]
    assert wa.keys() == wb.keys()
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6) for k in wa)
    # Not the same as a different data order: the first loss differs for another seed.
    other = run_tool("train_net.py", *common, "SOLVER.MAX_ITER", "1", "SEED", "6",
                     "OUTPUT_DIR", str(tmp_path / "other"))
    assert other.returncode == 0, (other.stdout + other.stderr)[-3000:]
    assert losses("other")[0] != a[0]
