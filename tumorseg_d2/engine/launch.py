"""Detectron2's ``launch`` for GPUs, and the same set-up on CPU processes (gloo), so that the
distributed path can run, and be tested, on a machine without a GPU."""
import gc
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
    # The per-machine group that Detectron2's GPU worker makes (comm.get_local_rank uses it). No
    # other reference to it may outlive the work (see _leave_process_groups), so no local name.
    comm._LOCAL_PROCESS_GROUP = _per_machine_groups(world_size, num_processes)[machine_rank]
    if "OMP_NUM_THREADS" not in os.environ:  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_processes))
    comm.synchronize()
    _run_and_leave_group(main_func, args)


def _per_machine_groups(world_size, num_processes):
    """One group per machine, its processes' ranks; every process makes all of them, in order."""
    return [dist.new_group(list(range(first, first + num_processes)))
            for first in range(0, world_size, num_processes)]


def _run_and_leave_group(main_func, args):
    """Run ``main_func(*args)``, then stop the process groups' threads while the interpreter is
    alive. Left to interpreter shutdown, gloo's threads (and the TCP store's) are torn down during
    finalization and the process can abort ("terminate called without an active exception",
    SIGABRT) after its work is done."""
    try:
        return main_func(*args)
    finally:
        _leave_process_groups()


def _leave_process_groups():
    """Destroy the process groups and drop every reference to them, so that their threads end now:
    destroy_process_group alone leaves a group's threads running while anything still holds it."""
    if dist.is_initialized():
        dist.destroy_process_group()
    # Detectron2's comm keeps two: the per-machine group and, cached, its gloo group.
    comm._LOCAL_PROCESS_GROUP = None
    comm._get_global_gloo_group.cache_clear()
    gc.collect()  # a DistributedDataParallel in a reference cycle (a trainer's) holds its group
