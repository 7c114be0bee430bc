"""Pure-Python stand-in for Detectron2's compiled module ``detectron2._C``.

install/install_detectron2.py copies this file into the wheel as ``detectron2/_C.py``. Mask R-CNN
R50-FPN needs none of the compiled ops: torchvision provides ROIAlign and NMS, and evaluation uses
pycocotools (``COCOEvaluator(..., use_fast_impl=False)``). Every other op raises NotImplementedError
naming itself, so a config that needs one fails at the first call with a clear message rather than
with an ImportError at ``import detectron2``.
"""
import torch

_FIX = (
    "This detectron2 is the pure-Python v0.6 build installed by tumorseg-d2 "
    "(install/install_detectron2.py), which has no compiled C++/CUDA ops. Use a config that avoids "
    "this op (Mask R-CNN R50-FPN needs none), or install a full detectron2 build: it is kept "
    "when present."
)

# Where each op is used in Detectron2, to make the message useful.
_OPS = {
    "deform_conv_forward": "deformable convolution (DeformConv)",
    "deform_conv_backward_input": "deformable convolution (DeformConv)",
    "deform_conv_backward_filter": "deformable convolution (DeformConv)",
    "modulated_deform_conv_forward": "modulated deformable convolution (ModulatedDeformConv)",
    "modulated_deform_conv_backward": "modulated deformable convolution (ModulatedDeformConv)",
    "roi_align_rotated_forward": "rotated-box ROIAlign (ROIAlignRotated)",
    "roi_align_rotated_backward": "rotated-box ROIAlign (ROIAlignRotated)",
    "box_iou_rotated": "rotated-box IoU (pairwise_iou_rotated)",
    "nms_rotated": "rotated-box NMS (batched_nms_rotated)",
    "InstanceAnnotation": "fast COCO evaluation (COCOeval_opt); pass use_fast_impl=False",
    "COCOevalEvaluateImages": "fast COCO evaluation (COCOeval_opt); pass use_fast_impl=False",
    "COCOevalAccumulate": "fast COCO evaluation (COCOeval_opt); pass use_fast_impl=False",
}


def _missing(op):
    def raise_not_implemented(*args, **kwargs):
        raise NotImplementedError(f"detectron2 op '{op}' ({_OPS.get(op, 'compiled op')}) is not "
                                  f"available. {_FIX}")

    raise_not_implemented.__name__ = op
    return raise_not_implemented


for _op in _OPS:
    globals()[_op] = _missing(_op)


def __getattr__(name):  # any other compiled op of a later Detectron2 version
    if name.startswith("__"):
        raise AttributeError(name)
    return _missing(name)


def get_compiler_version():
    return "none (pure-Python build, no compiled ops)"


def get_cuda_version():
    return "none (pure-Python build, no compiled ops)"


def has_cuda():
    return False


# nms_rotated is called as torch.ops.detectron2.nms_rotated, so it needs a registered op.
_LIB = torch.library.Library("detectron2", "FRAGMENT")
_LIB.define("nms_rotated(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor")
_LIB.impl("nms_rotated", _missing("nms_rotated"), "CompositeExplicitAutograd")
