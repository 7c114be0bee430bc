"""RoIAlign as one weighted gather over the feature map's pixels, for CPU inference.

torchvision's CPU RoIAlign walks the regions one after another, one channel at a time: for the
300 proposals per image of the CPU recipe it takes about as long as the whole ResNet-18 backbone
in int8. Every output bin of RoIAlign is a weighted sum of feature-map pixels (its bilinear
samples' four neighbours each), so all bins of all regions can be computed by one
``torch.nn.functional.embedding_bag`` over the feature map laid out as (pixels, channels): a
weighted sum of rows, vectorized over the channels and parallel over the bins. The sample points,
neighbours and weights are torchvision's (``aligned``, adaptive ``sampling_ratio``, samples beyond
one pixel outside the map count zero), so the result is the same up to float rounding; a test
compares the two.
"""
import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair
from detectron2.layers import ROIAlign

ROI_ALIGNS = ("torchvision", "gather")


def _axis_taps(start, bin_size, pooled, grid, size):
    """Along one axis, for regions starting at ``start`` with bins of ``bin_size`` (both (K,)):
    the pixels either side of each of the ``grid`` samples of each of the ``pooled`` bins and
    their weights, (K, pooled, grid, 2) each; a sample more than a pixel outside the map weighs
    0, one between the last pixel and the map's edge is the last pixel, as in torchvision."""
    bin_size = bin_size[:, None, None]
    position = torch.arange(pooled, device=start.device).view(1, -1, 1) * bin_size
    offset = (torch.arange(grid, device=start.device).view(1, 1, -1) + 0.5) * bin_size / grid
    c = start[:, None, None] + position + offset
    inside = ((c >= -1.0) & (c <= size)).to(c.dtype)
    c = c.clamp(min=0)
    low = c.floor().long()
    last = low >= size - 1
    low = low.clamp(max=size - 1)
    high = torch.where(last, low, low + 1)
    frac = torch.where(last, torch.zeros_like(c), c - low.to(c.dtype))
    return torch.stack([low, high], -1), torch.stack([(1 - frac) * inside, frac * inside], -1)


def _bin_taps(rows, row_weights, cols, col_weights, width):
    """Pixel index and weight of every tap of every bin, (K * bins, taps per bin), from the
    separable row and column taps of :func:`_axis_taps`, the weights averaged over the samples."""
    k, pooled_h, grid_h, _ = rows.shape
    pooled_w, grid_w = cols.shape[1:3]
    # (K, pooled_h, pooled_w, grid_h, grid_w, 2 rows, 2 columns)
    index = (rows * width)[:, :, None, :, None, :, None] + cols[:, None, :, None, :, None, :]
    weight = row_weights[:, :, None, :, None, :, None] * col_weights[:, None, :, None, :, None, :]
    taps = grid_h * grid_w * 4
    return (index.reshape(k * pooled_h * pooled_w, taps),
            weight.reshape(k * pooled_h * pooled_w, taps) / (grid_h * grid_w))


def gather_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned=True):
    """torchvision's ``roi_align(features, rois, ...)`` computed as weighted gathers: (K, C,
    pooled_h, pooled_w) for ``rois`` (K, 5; image index in the batch, then x1, y1, x2, y2 in input
    pixels) on ``features`` (N, C, H, W)."""
    pooled_h, pooled_w = _pair(output_size)
    n, channels, height, width = features.shape
    out = features.new_zeros((len(rois), pooled_h, pooled_w, channels))
    # (pixels, channels): free when the map is channels-last already, one copy otherwise.
    table = features.permute(0, 2, 3, 1).reshape(n * height * width, channels)
    rois = rois.to(features.dtype)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, k] * spatial_scale - offset for k in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # the legacy layout makes every region at least one pixel
        roi_w, roi_h = roi_w.clamp(min=1), roi_h.clamp(min=1)
    bin_w, bin_h = roi_w / pooled_w, roi_h / pooled_h
    if sampling_ratio > 0:
        grid_h = grid_w = torch.full((len(rois),), sampling_ratio, device=rois.device)
    else:  # adaptive: about one sample per feature-map pixel
        grid_h, grid_w = torch.ceil(bin_h).long(), torch.ceil(bin_w).long()
    # Regions sharing a sampling grid are gathered together; a degenerate one (x2 < x1) has no
    # samples and pools to zeros, as in torchvision.
    grids = torch.stack([grid_h, grid_w], 1)
    for grid in torch.unique(grids, dim=0).tolist():
        gh, gw = grid
        if gh <= 0 or gw <= 0:
            continue
        group = torch.nonzero((grids == grids.new_tensor(grid)).all(1))[:, 0]
        rows, row_weights = _axis_taps(y1[group], bin_h[group], pooled_h, gh, height)
        cols, col_weights = _axis_taps(x1[group], bin_w[group], pooled_w, gw, width)
        rows = rows + (rois[group, 0].long() * height)[:, None, None, None]
        index, weight = _bin_taps(rows, row_weights, cols, col_weights, width)
        pooled = F.embedding_bag(index, table, mode="sum", per_sample_weights=weight)
        out[group] = pooled.view(len(group), pooled_h, pooled_w, channels)
    return out.permute(0, 3, 1, 2)


class GatherROIAlign(ROIAlign):
    """Detectron2's ROIAlign with :func:`gather_roi_align` on fp32 CPU maps (torchvision's
    elsewhere, where the batched kernels are fast or other dtypes are asked for)."""

    def forward(self, input, rois):
        if input.device.type != "cpu" or input.dtype != torch.float32 or input.is_quantized:
            return super().forward(input, rois)
        return gather_roi_align(input, rois, self.output_size, self.spatial_scale,
                                self.sampling_ratio, self.aligned)


def use_gather_roi_align(model):
    """Every Detectron2 ROIAlign in ``model`` (the box and mask poolers' levels) replaced by
    :class:`GatherROIAlign`, in place; returns ``model``."""
    found = [(parent, name, child) for parent in model.modules()
             for name, child in parent.named_children() if type(child) is ROIAlign]
    for parent, name, child in found:
        setattr(parent, name, GatherROIAlign(child.output_size, child.spatial_scale,
                                             child.sampling_ratio, child.aligned))
    if not found:
        raise ValueError(f"roi_align 'gather' replaces Detectron2's ROIAlign layers; "
                         f"{type(model).__name__} has none: use roi_align 'torchvision'.")
    return model
