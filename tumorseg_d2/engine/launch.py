"""Detectron2's ``launch`` for GPUs, and the same set-up on CPU processes (gloo), so that the
distributed path can run, and be tested, on a machine without a GPU."""
import logging
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as detectron2_launch
from detectron2.engine.launch import DEFAULT_TIMEOUT, _find_free_port
from detectron2.utils import comm

logger = logging.getLogger(__name__)


def launch(main_func, num_gpus_per_machine, num_processes=0, num_machines=1, machine_rank=0,
           dist_url=None, args=(), timeout=DEFAULT_TIMEOUT):
    """Run ``main_func(*args)`` in ``num_gpus_per_machine`` processes per machine, one per GPU
    (Detectron2's launch, NCCL), or, with ``num_processes`` > 0, in that many CPU processes per
    machine with the gloo backend. Either way every process sees the same torch.distributed world,
    Detectron2's ``comm`` helpers work, and ranks are numbered machine by machine."""
    if num_processes <= 0:
        return detectron2_launch(_run_and_leave_group, num_gpus_per_machine,
                                 num_machines=num_machines, machine_rank=machine_rank,
                                 dist_url=dist_url, args=(main_func, args), timeout=timeout)
    world_size = num_machines * num_processes
    if world_size == 1:
        return main_func(*args)
    if dist_url == "auto":
        if num_machines > 1:
            raise ValueError("--dist-url auto works on one machine only: give every machine the "
                             "same tcp://<address of machine 0>:<port>.")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.spawn(_cpu_worker, nprocs=num_processes, daemon=False,
             args=(main_func, world_size, num_processes, machine_rank, dist_url, args, timeout))


def _cpu_worker(local_rank, main_func, world_size, num_processes, machine_rank, dist_url, args,
                timeout):
    rank = machine_rank * num_processes + local_rank
    try:
        dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=rank,
                                timeout=timeout)
    except Exception:
        logger.error(f"Could not join the process group at {dist_url} as rank {rank} of "
                     f"{world_size}.")
        raise
    # The per-machine group that Detectron2's GPU worker makes (comm.get_local_rank uses it).
    for machine in range(world_size // num_processes):
        group = dist.new_group(list(range(machine * num_processes, (machine + 1) * num_processes)))
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    if "OMP_NUM_THREADS" not in os.environ:  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_processes))
    comm.synchronize()
    _run_and_leave_group(main_func, args)


def _run_and_leave_group(main_func, args):
    """Run ``main_func(*args)``, then destroy the process group while the interpreter is alive.
    Left to interpreter shutdown, gloo's worker threads can outlive it and the process aborts
    ("terminate called without an active exception", SIGABRT) after its work is done."""
    try:
        return main_func(*args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
