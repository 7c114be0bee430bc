"""Mask R-CNN's backbone (ResNet and FPN, most of the compute) in ONNX Runtime, in fp32 or int8.

The backbone is exported with batch, height and width dynamic; the RPN and RoI heads stay in torch
(their data-dependent shapes would need a port of their own). For int8 the exported graph is
quantized statically (ONNX Runtime's QDQ format): weights to int8 per output channel, activations
to uint8 with ranges calibrated on real images run through the fp32 export. Without VNNI the
8-bit products can saturate 16-bit sums, so weights keep 7 bits there (``reduce_range``), as ONNX
Runtime's guide advises.
"""
import contextlib
import copy
import io
import logging
import os
import tempfile
import time
import warnings

import torch

logger = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnxruntime", "onnxruntime-int8")


@contextlib.contextmanager
def quiet_tracing():
    with warnings.catch_warnings():  # the tracer warns at every data-dependent shape or branch
        warnings.simplefilter("ignore")
        yield


class _BackboneOutputs(torch.nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, images):
        return tuple(self.backbone(images).values())


def export_backbone(backbone, device="cpu"):
    """The backbone as ONNX bytes; tracing runs on a copy, as it may update batch-norm
    statistics."""
    names = list(backbone.output_shape())
    example = torch.zeros(1, 3, 64, 64, device=device)
    buffer = io.BytesIO()
    with quiet_tracing():
        torch.onnx.export(_BackboneOutputs(copy.deepcopy(backbone)).eval(), (example,), buffer,
                          dynamo=False, opset_version=17, input_names=["images"],
                          output_names=names,
                          dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}})
    return buffer.getvalue()


class _Calibration:
    """ONNX Runtime's CalibrationDataReader over backbone inputs (normalized, padded tensors)."""

    def __init__(self, inputs):
        self.inputs = iter(inputs)

    def get_next(self):
        x = next(self.inputs, None)
        return None if x is None else {"images": x.detach().float().cpu().numpy()}


def quantize_int8(onnx_bytes, calibration_inputs):
    """``onnx_bytes`` statically quantized to int8 (QDQ); ``calibration_inputs`` are backbone
    inputs, one (1, 3, H, W) tensor each."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    inputs = list(calibration_inputs)
    if not inputs:
        raise ValueError("int8 quantization needs calibration images; none were given.")
    with tempfile.TemporaryDirectory() as tmp:
        fp32, prepared, int8 = (os.path.join(tmp, n) for n in
                                ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        with open(fp32, "wb") as f:
            f.write(onnx_bytes)
        # Folds batch norm into the convolutions first, so each is quantized once, fused.
        quant_pre_process(fp32, prepared, skip_symbolic_shape=True)
        quantize_static(prepared, int8, _Calibration(inputs), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=not torch.cpu._is_vnni_supported(),
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        with open(int8, "rb") as f:
            return f.read()


def use_onnxruntime_backbone(model, threads=None, calibration_inputs=None):
    """Replace ``model.backbone``'s forward by an ONNX Runtime session of it; with
    ``calibration_inputs`` (backbone inputs, as ``model.preprocess_image`` makes them) the session
    runs the int8 quantized backbone."""
    import onnxruntime  # imported here: a second of start-up that only this option needs

    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise ValueError(f"an ONNX Runtime backbone needs a model with a backbone (Mask R-CNN); "
                         f"{type(model).__name__} has none: use backbone_runtime 'torch'.")
    names = list(backbone.output_shape())
    graph = export_backbone(backbone, model.device)
    if calibration_inputs is not None:
        start = time.perf_counter()
        inputs = list(calibration_inputs)
        graph = quantize_int8(graph, inputs)
        logger.info(f"Backbone quantized to int8 in {time.perf_counter() - start:.1f} s, "
                    f"calibrated on {len(inputs)} images")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    # ONNX Runtime's threads spin-wait after each run by default; torch's RPN and heads run next
    # on the same cores, so the spinning would take their time.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def forward(images):
        outputs = session.run(names, {"images": images.detach().float().cpu().numpy()})
        return {n: torch.from_numpy(o).to(images.device) for n, o in zip(names, outputs)}
    backbone.forward = forward
    backbone.onnx_graph = graph  # what the session runs, for inspection
    backbone.onnx_session = session
    return model
