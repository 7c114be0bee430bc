"""Mixed-precision training on any device: Detectron2's AMPTrainer is CUDA and float16 only.

``SOLVER.AMP.ENABLED`` turns it on and ``SOLVER.AMP.PRECISION`` picks the type: ``bfloat16``
(CPUs with AVX-512 bf16 or AMX, and GPUs from Ampere on) or ``float16`` (CUDA). The forward pass
runs under ``torch.autocast``, which computes convolutions and matrix products in the low precision
and keeps reductions, losses and normalization statistics in float32; parameters, gradients and
the optimizer stay in float32. float16 needs its loss scaled (a GradScaler), bfloat16 does not:
it has float32's exponent range, only fewer mantissa bits.

bfloat16 pays only where the CPU runs it natively (oneDNN with AVX-512 or AMX): elsewhere (AVX2
only) PyTorch's convolutions fall back to a reference kernel, measured 16x slower than float32 on
an AVX2 EPYC, so the trainer and BatchPredictor warn.
"""
import logging
import time

import torch
from detectron2.engine import SimpleTrainer

PRECISIONS = {"bfloat16": torch.bfloat16, "float16": torch.float16}
logger = logging.getLogger(__name__)


def native_bf16_on_cpu():
    """Whether oneDNN runs bfloat16 convolutions natively on this CPU (AVX-512 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the query
        return torch.cpu._is_avx512_supported()


def slow_bf16_warning(dtype, device_type):
    """The warning (also logged) when ``dtype`` would run on a slow fallback here, else None."""
    if dtype != torch.bfloat16 or device_type != "cpu" or native_bf16_on_cpu():
        return None
    message = (f"SOLVER.AMP.PRECISION bfloat16 on a CPU without native bfloat16 (PyTorch sees "
               f"{torch.backends.cpu.get_cpu_capability()}; it needs AVX-512 or AMX): convolutions "
               "fall back to a reference kernel, many times slower than float32 (16x measured on "
               "an AVX2 CPU). Use float32 on this machine (SOLVER.AMP.ENABLED False; "
               "predict's --precision fp32).")
    logger.warning(message)
    return message


def autocast_dtype(cfg):
    """The autocast type of ``cfg`` (None when SOLVER.AMP.ENABLED is False); a type the device
    cannot train in is refused with the fix."""
    if not cfg.SOLVER.AMP.ENABLED:
        return None
    precision = cfg.SOLVER.AMP.PRECISION
    if precision not in PRECISIONS:
        raise ValueError(f"SOLVER.AMP.PRECISION is {precision!r}; use one of "
                         f"{', '.join(PRECISIONS)}.")
    if precision == "float16" and not cfg.MODEL.DEVICE.startswith("cuda"):
        raise ValueError(f"SOLVER.AMP.PRECISION float16 trains on CUDA only (MODEL.DEVICE is "
                         f"{cfg.MODEL.DEVICE}); on the CPU use SOLVER.AMP.PRECISION bfloat16, or "
                         "SOLVER.AMP.ENABLED False.")
    return PRECISIONS[precision]


class MixedPrecisionTrainer(SimpleTrainer):
    """SimpleTrainer with the forward pass under ``torch.autocast(device, dtype)``; float16 with
    a GradScaler (saved in checkpoints, as AMPTrainer does)."""

    def __init__(self, model, data_loader, optimizer, dtype):
        super().__init__(model, data_loader, optimizer)
        self.dtype = dtype
        self.device_type = next(model.parameters()).device.type
        self.grad_scaler = torch.amp.GradScaler(self.device_type) \
            if dtype == torch.float16 else None

    def run_step(self):
        assert self.model.training, "[MixedPrecisionTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        with torch.autocast(self.device_type, dtype=self.dtype):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses, loss_dict = loss_dict, {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())

        self.optimizer.zero_grad()
        if self.grad_scaler is None:
            losses.backward()
        else:
            self.grad_scaler.scale(losses).backward()
        self._write_metrics(loss_dict, data_time)
        if self.grad_scaler is None:
            self.optimizer.step()
        else:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def step_trainer(cfg, model, data_loader, optimizer):
    """The loop that runs one iteration: SimpleTrainer, or MixedPrecisionTrainer with AMP."""
    dtype = autocast_dtype(cfg)
    if dtype is None:
        return SimpleTrainer(model, data_loader, optimizer)
    trainer = MixedPrecisionTrainer(model, data_loader, optimizer, dtype)
    slow_bf16_warning(dtype, trainer.device_type)
    return trainer
