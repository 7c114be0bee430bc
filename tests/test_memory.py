"""KEEP_FREED_MEMORY: freed memory kept for reuse (tumorseg_d2/engine/memory.py).

What it changes is counted, not timed: the page faults of a training step made again and again,
in a fresh process for each setting, which is process-wide and cannot be undone."""
import platform
import subprocess
import sys
import textwrap

import pytest

from tumorseg_d2.config import get_tumorseg_cfg, merge_config
from tumorseg_d2.engine import run
from tumorseg_d2.engine.memory import keep_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Page faults per step of a small convolutional network's forward and backward pass, whose
# activations and gradients (8 MB each) are made and freed at every step, as in training.
FAULTS = textwrap.dedent("""
    import resource, sys, torch
    from tumorseg_d2.engine.memory import keep_freed_memory
    taken = keep_freed_memory() if sys.argv[1] == "on" else None
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(32, 32, 3, padding=1))
    x = torch.randn(4, 3, 128, 128)
    def step():
        net(x).square().mean().backward()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()  # the first step's memory is new either way
    before = faults()
    for _ in range(10):
        step()
    print(taken, (faults() - before) / 10)
""")


def faults_per_step(setting):
    proc = subprocess.run([sys.executable, "-c", FAULTS, setting], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    taken, faults = proc.stdout.split()
    return taken, float(faults)


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's")
def test_freed_memory_is_reused_instead_of_faulted_in_again_only_with_the_setting():
    # Without the setting each step faults in about 4,700 pages of 4 KiB (18 MB) here, with it
    # 400-800 (one bench of training: 75,000 against 8,300 per iteration).
    taken_off, off = faults_per_step("off")
    taken_on, on = faults_per_step("on")
    assert (taken_off, taken_on) == ("None", "True")
    assert off > 2000, off
    assert on < off / 3, (on, off)


@pytest.mark.skipif(GLIBC, reason="where the C library is glibc the setting is taken")
def test_without_glibc_nothing_is_changed():
    assert keep_freed_memory() is False


def test_the_cpu_configs_keep_freed_memory_and_the_default_does_not():
    assert get_tumorseg_cfg().KEEP_FREED_MEMORY is False
    for config in ("configs/mask_rcnn_R_18_FPN_scratch_cpu.yaml",
                   "configs/mask_rcnn_R_18_FPN_scratch_cpu_60min_bf16.yaml"):
        assert merge_config(get_tumorseg_cfg(), config, []).KEEP_FREED_MEMORY is True


@pytest.mark.parametrize("key, taken, calls, warned", [
    (False, True, 0, False), (True, True, 1, False), (True, False, 1, True)])
def test_the_set_up_applies_the_key_and_says_where_it_cannot(monkeypatch, caplog, key, taken,
                                                               calls, warned):
    called = []
    monkeypatch.setattr(run, "keep_freed_memory", lambda: called.append(1) or taken)
    cfg = get_tumorseg_cfg()
    cfg.KEEP_FREED_MEMORY = key
    with caplog.at_level("WARNING", logger="tumorseg_d2"):
        run.apply_memory_setting(cfg)
    assert len(called) == calls
    assert ("KEEP_FREED_MEMORY True has no effect here" in caplog.text) is warned
