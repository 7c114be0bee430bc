"""Mask R-CNN's box head with int8 fully connected layers, for CPU inference.

The box head's two fully connected layers run on every proposal (300 per image in the CPU recipe,
each 128 x 7 x 7 = 6272 inputs into 512): about a billion multiply-adds per image. They are
quantized dynamically: the weights once to int8 (per output channel), each batch's activations at
run time from their own range, so no calibration images are needed. The class and box predictors
after them stay fp32, so box coordinates are regressed at full precision. torch's x86 int8
kernels do this; they use VNNI where the CPU has it.
"""
import warnings

import torch
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

BOX_HEADS = ("fp32", "int8")


def quantize_box_head(model):
    """Replace the ``nn.Linear`` layers of ``model.roi_heads.box_head`` by dynamically quantized
    int8 ones, in place; returns ``model``."""
    box_head = getattr(getattr(model, "roi_heads", None), "box_head", None)
    if box_head is None or not any(isinstance(m, torch.nn.Linear) for m in box_head.modules()):
        raise ValueError(f"an int8 box head needs Mask R-CNN with a fully connected box head "
                         f"(MODEL.ROI_BOX_HEAD.NUM_FC > 0); {type(model).__name__} has none: "
                         f"use box_head 'fp32'.")
    if model.device.type != "cpu":
        raise ValueError(f"the int8 box head runs on the CPU only; MODEL.DEVICE is "
                         f"{model.device.type}: use box_head 'fp32' there.")
    with warnings.catch_warnings():
        # torch 2.14 marks torch.ao.quantization and its quantized tensors deprecated (their
        # successor is torchao); the pinned version still computes with them.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.ao.*")
        warnings.filterwarnings("ignore", category=UserWarning, message=".*quantize.*")
        model.roi_heads.box_head = quantize_dynamic(
            box_head, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    return model
