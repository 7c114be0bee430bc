"""Mask R-CNN's backbone (ResNet and FPN, most of the compute) and the RPN head's convolutions in
ONNX Runtime, in fp32 or int8.

The graph is exported with batch, height and width dynamic; it ends with the RPN head's objectness
logits and anchor deltas for every level (a 3x3 convolution over every pixel of every FPN level:
for the CPU recipe at 320 px, 1.3 billion multiply-adds per slice against the backbone's 5.1,
fvcore's count). The rest of the RPN (anchors, decoding,
top-k, NMS) and the RoI heads stay in torch: their data-dependent shapes would need a port of their
own. For int8 the exported graph is quantized statically (ONNX Runtime's QDQ format): weights to
int8 per output channel, activations to uint8 with ranges calibrated on real images run through
the fp32 export. The RPN head's two 1x1 predictors stay fp32, so objectness and box deltas, which
rank and place the proposals, are not rounded to 256 levels; they cost little. Without VNNI the
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
    """The backbone's features, then (with an RPN) its head's objectness logits and anchor deltas
    on the levels the RPN reads."""

    def __init__(self, backbone, rpn=None):
        super().__init__()
        self.backbone, self.rpn = backbone, rpn

    def forward(self, images):
        features = self.backbone(images)
        if self.rpn is None:
            return tuple(features.values())
        objectness, deltas = self.rpn.rpn_head([features[f] for f in self.rpn.in_features])
        return (*features.values(), *objectness, *deltas)


def output_names(backbone, rpn=None):
    """The graph's outputs: feature names, then ``objectness_<level>`` and ``deltas_<level>``."""
    levels = list(rpn.in_features) if rpn is not None else []
    return (list(backbone.output_shape()) + [f"objectness_{f}" for f in levels]
            + [f"deltas_{f}" for f in levels])


def export_backbone(backbone, device="cpu", rpn=None):
    """The backbone (and ``rpn``'s head, when given) as ONNX bytes; tracing runs on a copy, as it
    may update batch-norm statistics."""
    example = torch.zeros(1, 3, 64, 64, device=device)
    buffer = io.BytesIO()
    module = _BackboneOutputs(copy.deepcopy(backbone), copy.deepcopy(rpn)).eval()
    with quiet_tracing():
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=17,
                          input_names=["images"], output_names=output_names(backbone, rpn),
                          dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}})
    return buffer.getvalue()


def _rpn_predictor_nodes(onnx_path):
    """Names of the nodes that write the RPN head's outputs (its 1x1 predictors)."""
    import onnx

    graph = onnx.load(onnx_path).graph
    outputs = {o.name for o in graph.output
               if o.name.startswith(("objectness_", "deltas_"))}
    return [node.name for node in graph.node if outputs & set(node.output)]


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
                        calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=_rpn_predictor_nodes(prepared))
        with open(int8, "rb") as f:
            return f.read()


def use_onnxruntime_backbone(model, threads=None, calibration_inputs=None):
    """Replace the forward of ``model.backbone`` and of its RPN's head (Detectron2's RPN, when the
    model has one) by one ONNX Runtime session of both; with ``calibration_inputs`` (backbone
    inputs, as ``model.preprocess_image`` makes them) the session runs them quantized to int8."""
    import onnxruntime  # imported here: a second of start-up that only this option needs

    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise ValueError(f"an ONNX Runtime backbone needs a model with a backbone (Mask R-CNN); "
                         f"{type(model).__name__} has none: use backbone_runtime 'torch'.")
    rpn = getattr(model, "proposal_generator", None)
    rpn = rpn if hasattr(rpn, "rpn_head") and hasattr(rpn, "in_features") else None
    names = output_names(backbone, rpn)
    graph = export_backbone(backbone, model.device, rpn)
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

    features = list(backbone.output_shape())
    head_outputs = {}  # the RPN head's outputs of the last run, for the features it returned

    def forward(images):
        outputs = session.run(names, {"images": images.detach().float().cpu().numpy()})
        outputs = [torch.from_numpy(o).to(images.device) for o in outputs]
        result = dict(zip(features, outputs))
        if rpn is not None:
            head_outputs.clear()
            head_outputs["inputs"] = [result[f] for f in rpn.in_features]
            levels = len(rpn.in_features)
            head_outputs["objectness"] = outputs[len(features):len(features) + levels]
            head_outputs["deltas"] = outputs[len(features) + levels:]
        return result
    backbone.forward = forward
    if rpn is not None:
        torch_head = rpn.rpn_head.forward

        def rpn_head_forward(inputs):
            computed = head_outputs.get("inputs", ())
            if len(inputs) == len(computed) and all(a is b for a, b in zip(inputs, computed)):
                return head_outputs["objectness"], head_outputs["deltas"]
            return torch_head(inputs)  # features the session did not make: torch's own head
        rpn.rpn_head.forward = rpn_head_forward
    backbone.onnx_graph = graph  # what the session runs, for inspection
    backbone.onnx_session = session
    return model
