"""RoIAlign as weighted gathers over the feature maps' pixels, for CPU inference and training.

torchvision's CPU RoIAlign walks the regions one after another, one channel at a time: for the 300
proposals per image of the CPU recipe it takes about as long as the whole ResNet-18 backbone in
int8, and in training its backward pass alone took a third of each iteration. Every output bin of
RoIAlign is a weighted sum of feature-map pixels, so all bins of all regions can be computed by
``torch.nn.functional.embedding_bag`` over the maps laid out as (pixels, channels): a weighted sum
of rows, vectorized over the channels, parallel over the bins.

RoIAlign is separable: along each axis a bin's samples (about one per pixel with the adaptive
``sampling_ratio``) interpolate between neighbouring pixels, so the bin reads a window of at most
``grid + 1`` rows and as many columns, each pixel weighted by its row weight times its column
weight. A bin of ``grid``x``grid`` samples thus takes ``(grid + 1)**2`` gathers, not the
``4 * grid**2`` of sample-by-sample interpolation. Most regions are gathered as one dense (bins, taps)
array padded to a common window, written straight into the output; the few with larger windows
apart. :class:`GatherROIPooler` pools the regions of all FPN levels at once from one table of every
level's pixels, which the mask pooler reuses, and its channels-last output is flattened in place
for the box head (:class:`PixelsFirstFlatten`; inference only, since it reorders the box head's
weights). The gathers are differentiable: autograd's backward of ``embedding_bag`` scatters the
gradient back to the pixels, the adjoint of the same sums. The sample points and weights are
torchvision's (``aligned``, adaptive or fixed ``sampling_ratio``, samples beyond one pixel outside
the map count zero), so the result is the same up to float rounding; a test compares the two.
"""
import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair
from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import (ROIPooler, assign_boxes_to_levels,
                                         convert_boxes_to_pooler_format)

ROI_ALIGNS = ("torchvision", "gather")


def _axis_windows(start, bin_size, grid, pooled, size):
    """Along one axis, for regions starting at ``start`` with bins of ``bin_size``, ``grid``
    samples per bin, on maps ``size`` pixels long (all (K,)): each bin's first pixel (K, pooled, 1)
    and the weights of the window of pixels from there (K, pooled, L), the samples' bilinear
    weights summed per pixel and averaged over the samples; and each region's window length (K,).
    As in torchvision, a sample more than a pixel outside the map weighs 0, one between the last
    pixel and the map's edge is the last pixel."""
    samples = max(int(grid.max()), 1)
    rank = torch.arange(samples, device=start.device)
    count = grid.clamp(min=1).to(start.dtype)[:, None, None]
    bin_size = bin_size[:, None, None]
    position = torch.arange(pooled, device=start.device)[None, :, None] * bin_size
    c = start[:, None, None] + position + (rank + 0.5) * bin_size / count
    last = (size - 1).to(c.dtype)[:, None, None]
    real = rank < grid[:, None, None]  # samples are padded to the largest grid
    weight = ((c >= -1.0) & (c <= last + 1) & real).to(c.dtype) / count
    c = torch.minimum(c.clamp(min=0), last)
    low = c.floor()
    frac = c - low
    # (a region with x2 < x1 and a fixed sampling ratio has its samples in reverse order)
    first = torch.where(real, low, low[:, :, :1]).amin(2, keepdim=True)
    # Samples are less than a pixel apart with adaptive sampling, so a bin's window is at most
    # grid + 1 pixels; it is measured rather than assumed, for fixed sampling ratios.
    offset = torch.where(real, (low - first).long(), 0)
    length = torch.where(grid > 0, offset.amax((1, 2)) + 2, 0)
    window = c.new_zeros(len(c), pooled, max(int(length.max()), 2))
    window.scatter_add_(2, offset, (1 - frac) * weight)
    window.scatter_add_(2, offset + 1, frac * weight)
    return first.long(), window, length


def _pad_window(window, length):
    return F.pad(window, (0, length - window.shape[2]))


def _gather_pool(table, rois, first_pixel, heights, widths, scales, output_size, sampling_ratio,
                 aligned):
    """RoIAlign of ``rois`` (K, 4: x1, y1, x2, y2 in input pixels) from ``table`` (pixels,
    channels): region k's map is ``heights[k]`` x ``widths[k]`` rows of the table from row
    ``first_pixel[k]``, at ``scales[k]`` map pixels per input pixel. Returns (K, pooled_h,
    pooled_w, channels)."""
    pooled_h, pooled_w = output_size
    count = len(rois)
    if not count:
        return table.new_zeros((0, pooled_h, pooled_w, table.shape[1]))
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, j] * scales - offset for j in range(4))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # the legacy layout makes every region at least one pixel
        roi_w, roi_h = roi_w.clamp(min=1), roi_h.clamp(min=1)
    bin_w, bin_h = roi_w / pooled_w, roi_h / pooled_h
    if sampling_ratio > 0:
        grid_h = grid_w = torch.full((count,), sampling_ratio, device=rois.device)
    else:  # adaptive: about one sample per feature-map pixel
        grid_h, grid_w = torch.ceil(bin_h).long(), torch.ceil(bin_w).long()
    # A degenerate region (x2 < x1) has no samples and pools to zeros, as in torchvision.
    empty = (grid_h <= 0) | (grid_w <= 0)
    grid_h, grid_w = torch.where(empty, 0, grid_h), torch.where(empty, 0, grid_w)
    first_row, row_weights, rows = _axis_windows(y1, bin_h, grid_h, pooled_h, heights)
    first_col, col_weights, cols = _axis_windows(x1, bin_w, grid_w, pooled_w, widths)
    longest = max(row_weights.shape[2], col_weights.shape[2])
    step = torch.arange(longest, device=rois.device)
    # Window pixels past the map's end weigh 0; they read its last pixel.
    row_index = (torch.minimum(first_row + step, (heights - 1)[:, None, None]) *
                 widths[:, None, None] + first_pixel[:, None, None])
    col_index = torch.minimum(first_col + step, (widths - 1)[:, None, None])
    row_weights, col_weights = _pad_window(row_weights, longest), _pad_window(col_weights, longest)
    window = torch.maximum(rows, cols)

    def pool(regions, size):
        # (regions, pooled_h, pooled_w, window rows, window columns) taps
        index = row_index[regions, :, None, :size, None] + col_index[regions, None, :, None, :size]
        weight = (row_weights[regions, :, None, :size, None] *
                  col_weights[regions, None, :, None, :size])
        pooled = F.embedding_bag(index.view(-1, size * size), table, mode="sum",
                                 per_sample_weights=weight.view(-1, size * size))
        return pooled.view(-1, pooled_h, pooled_w, pooled.shape[1])

    # Most regions are pooled in one array padded to the 90th percentile's window, straight
    # into the output (padding reads nearby pixels at weight 0, cheaper than a copy of the
    # output); the few larger ones in groups of equal window, copied in.
    bulk = max(int(window.float().quantile(0.9).ceil()), 1)
    out = pool(slice(None), bulk)
    for size in torch.unique(window[window > bulk]).tolist():
        group = torch.nonzero(window == size)[:, 0]
        out.index_copy_(0, group, pool(group, size))
    return out


class _PixelTable(torch.autograd.Function):
    """The maps' pixels copied into one fp32 (pixels, C) table, whose gradient goes back to each
    map as a view of the table's. Built by copies into slices of one tensor under autograd, the
    table's backward would clone the whole table's gradient once per map (autograd's
    ``CopySlices``): four clones of a 35 MB gradient per pooled batch in training."""

    @staticmethod
    def forward(ctx, *maps):
        rows = [m.shape[0] * m.shape[2] * m.shape[3] for m in maps]
        table = maps[0].new_empty((sum(rows), maps[0].shape[1]), dtype=torch.float32)
        starts = [sum(rows[:i]) for i in range(len(maps))]
        for m, start, count in zip(maps, starts, rows):
            table[start:start + count].view(m.shape[0], m.shape[2], m.shape[3], -1).copy_(
                m.permute(0, 2, 3, 1))
        ctx.layout = [(m.shape, m.dtype, start, count) for m, start, count in zip(maps, starts, rows)]
        return table

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()  # rows of it are viewed as maps
        return tuple(grad[start:start + count].view(n, h, w, c).permute(0, 3, 1, 2).to(dtype)
                     for (n, c, h, w), dtype, start, count in ctx.layout)


def _pixel_table(maps):
    """The pixels of every map in ``maps`` (each N, C, H, W) as rows of one fp32 (pixels, C)
    table, and each map's first row in it. bf16 maps (autocast) are pooled in fp32, as
    torchvision's RoIAlign does under autocast."""
    rows = [m.shape[0] * m.shape[2] * m.shape[3] for m in maps]
    return _PixelTable.apply(*maps), [sum(rows[:i]) for i in range(len(maps))]


def gather_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned=True):
    """torchvision's ``roi_align(features, rois, ...)`` computed as weighted gathers: (K, C,
    pooled_h, pooled_w) for ``rois`` (K, 5; image index in the batch, then x1, y1, x2, y2 in input
    pixels) on ``features`` (N, C, H, W)."""
    _, _, height, width = features.shape
    table, _ = _pixel_table([features])
    rois = rois.to(table.dtype)
    image = rois[:, 0].long()
    full = torch.full_like(image, 1)
    out = _gather_pool(table, rois[:, 1:], image * height * width, full * height, full * width,
                       torch.full_like(rois[:, 0], spatial_scale), _pair(output_size),
                       sampling_ratio, aligned)
    return out.permute(0, 3, 1, 2).to(features.dtype)


def _gathers(x):
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
            and not x.is_quantized)


class _TableCache:
    """The pixel table of the maps pooled last, within one call of the ROI heads: the box and
    the mask pooler read the same features, so the second reuses the first's table. It is
    emptied before and after each call (hooks on the ROI heads), so it never outlives the
    features it was made from nor sees them changed."""

    def __init__(self):
        self.clear()

    def clear(self, *_):
        self.maps, self.table = (), None

    def __call__(self, maps):
        if not (len(maps) == len(self.maps) and all(a is b for a, b in zip(maps, self.maps))):
            self.maps, self.table = tuple(maps), _pixel_table(maps)
        return self.table


class GatherROIPooler(ROIPooler):
    """Detectron2's ROIPooler (RoIAlign levels) with every level's regions pooled at once by
    :func:`_gather_pool` on fp32 or bf16 (autocast) CPU maps, in fp32; torchvision's kernels
    elsewhere, where the batched kernels are fast or other dtypes are asked for. The output, in
    the maps' dtype, is a (K, C, H, W) view of a channels-last array."""

    table_cache = None  # a _TableCache shared by the poolers of one model

    def forward(self, x, box_lists):
        if not (len(box_lists) and all(_gathers(m) for m in x)):
            return super().forward(x, box_lists)
        assert len(x) == len(self.level_poolers) and len(box_lists) == x[0].shape[0]
        rois = convert_boxes_to_pooler_format(box_lists).float()
        if len(x) == 1:
            level = torch.zeros(len(rois), dtype=torch.long, device=rois.device)
        else:
            level = assign_boxes_to_levels(box_lists, self.min_level, self.max_level,
                                           self.canonical_box_size, self.canonical_level)
        table, starts = (self.table_cache or _pixel_table)(x)
        heights = torch.tensor([m.shape[2] for m in x], device=rois.device)[level]
        widths = torch.tensor([m.shape[3] for m in x], device=rois.device)[level]
        scales = torch.tensor([p.spatial_scale for p in self.level_poolers],
                              dtype=rois.dtype, device=rois.device)[level]
        first_pixel = (torch.tensor(starts, device=rois.device)[level] +
                       rois[:, 0].long() * heights * widths)
        first = self.level_poolers[0]
        out = _gather_pool(table, rois[:, 1:], first_pixel, heights, widths, scales,
                           first.output_size, first.sampling_ratio, first.aligned)
        return out.permute(0, 3, 1, 2).to(x[0].dtype)


class PixelsFirstFlatten(torch.nn.Flatten):
    """Flattens (K, C, H, W) in (H, W, C) order: a view of a channels-last array such as
    :class:`GatherROIPooler`'s output, where flattening in (C, H, W) order would copy it. The
    fully connected layer after it has its weight's columns put in the same order."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1).flatten(1)


def _flatten_pixels_first(box_head, pooler):
    """A Detectron2 FastRCNNConvFCHead's flatten and first fully connected layer switched to
    (H, W, C) order, in place: the same outputs up to float rounding. Its convolutions, if any,
    keep the pooler's H x W (3x3, padding 1)."""
    flatten, fc = getattr(box_head, "flatten", None), getattr(box_head, "fc1", None)
    if type(flatten) is not torch.nn.Flatten or type(fc) is not torch.nn.Linear:
        return
    height, width = pooler.output_size
    channels = fc.in_features // (height * width)
    if channels * height * width != fc.in_features:
        return
    with torch.no_grad():
        fc.weight.copy_(fc.weight.view(-1, channels, height, width).permute(0, 2, 3, 1)
                        .reshape(fc.weight.shape))
    box_head.flatten = PixelsFirstFlatten()


def use_gather_roi_align(model, flatten_pixels_first=True):
    """Every Detectron2 ROIPooler in ``model`` whose levels are RoIAlign (the box and mask
    poolers) turned into a :class:`GatherROIPooler`, in place; returns ``model``. With
    ``flatten_pixels_first`` the box head's flatten reads its channels-last output in place
    (:class:`PixelsFirstFlatten`), which reorders fc1's weight: for inference, not for a model
    that trains or saves checkpoints (they would not load into Detectron2's box head)."""
    found = [m for m in model.modules() if type(m) is ROIPooler
             and all(type(p) is ROIAlign for p in m.level_poolers)]
    for pooler in found:
        pooler.__class__ = GatherROIPooler
    if not found:
        raise ValueError(f"roi_align 'gather' replaces Detectron2's RoIAlign poolers; "
                         f"{type(model).__name__} has none: use roi_align 'torchvision' "
                         "(MODEL.ROI_ALIGN, --roi-align).")
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None:
        cache = _TableCache()
        roi_heads.register_forward_pre_hook(cache.clear)
        roi_heads.register_forward_hook(cache.clear)
        for pooler in roi_heads.modules():
            if isinstance(pooler, GatherROIPooler):
                pooler.table_cache = cache
        if flatten_pixels_first and isinstance(getattr(roi_heads, "box_pooler", None),
                                               GatherROIPooler):
            _flatten_pixels_first(roi_heads.box_head, roi_heads.box_pooler)
    return model
