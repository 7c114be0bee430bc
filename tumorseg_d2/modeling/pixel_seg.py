"""Semantic-segmentation baselines of the published work, as Detectron2 meta-architectures.

Each network maps a grayscale slice, resized to MODEL.PIXEL_SEG.INPUT_SIZE (256) and scaled to
[0, 1], to one logit per pixel; the sigmoid of it is the tumor probability. Because they are
registered in META_ARCH_REGISTRY and speak Detectron2's model interface (a list of input dicts in,
a dict of losses in training, ``[{"instances": ...}]`` at inference), tools/train_net.py,
tools/evaluate.py, tools/visualize.py and the trainer's validation use them unchanged.

At inference the probability map is upsampled to the input's original size and thresholded
(MODEL.PIXEL_SEG.THRESHOLD); each 8-connected component becomes one instance whose mask is the
component, whose box is its bounding box and whose score is its mean probability; at most
TEST.DETECTIONS_PER_IMAGE (100) of them, the most probable. With MIN_AREA 0 (the default) and no
more components than that, the union of the instances is exactly the thresholded map, so Dice and
IoU of the instances are those of the map.
The networks see no class: they are trained on the class-agnostic datasets (one class, "tumor").

Networks (parameter counts are those of the published descriptions; tests check them):

- ``EncoderDecoder2``: conv 32, conv 64 (3x3, ReLU, 2x2 max-pool each), two 2x2 stride-2
  transposed convs back to full size: 27,169 parameters.
- ``EncoderDecoder3``: the same with a third level (conv 128): 133,857.
- ``ResidualEncoderDecoder``: three levels of residual blocks (two 3x3 conv + batch norm, 1x1
  projection when the width changes) 32-64-128, and a residual block after each of the first two
  transposed convs: 431,329.
- ``UNet``: encoder 16-32-64-128-256, bridge 512, 2x2 transposed-conv decoder with skip
  connections; every block two 3x3 conv + batch norm + ReLU, then dropout (MODEL.PIXEL_SEG.DROPOUT).
"""
import logging

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from detectron2.utils.logger import log_every_n_seconds
from torch import nn

LOSSES = ("BCE", "DICE", "BCE+DICE")


# ---------------------------------------------------------------- networks
def _plain_encoder_decoder(widths, cin=1):
    layers = []
    for w in widths:
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        cin = w
    for w in list(reversed(widths[:-1])) + [1]:
        layers.append(nn.ConvTranspose2d(cin, w, 2, stride=2))
        if w != 1:
            layers.append(nn.ReLU(inplace=True))
        cin = w
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the input (1x1 conv + BN when the width changes), ReLU."""

    def __init__(self, cin, cout):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


def _residual_encoder_decoder(cin=1):
    return nn.Sequential(
        ResidualBlock(cin, 32), nn.MaxPool2d(2),
        ResidualBlock(32, 64), nn.MaxPool2d(2),
        ResidualBlock(64, 128), nn.MaxPool2d(2),
        nn.ConvTranspose2d(128, 64, 2, stride=2), ResidualBlock(64, 64),
        nn.ConvTranspose2d(64, 32, 2, stride=2), ResidualBlock(32, 32),
        nn.ConvTranspose2d(32, 1, 2, stride=2),
    )


def _unet_block(cin, cout, dropout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Dropout2d(dropout))


class UNetNetwork(nn.Module):
    def __init__(self, widths=(16, 32, 64, 128, 256), bridge=512, dropout=0.1, cin=1):
        super().__init__()
        chans = [cin] + list(widths)
        self.down = nn.ModuleList(_unet_block(a, b, dropout) for a, b in zip(chans, chans[1:]))
        self.bridge = _unet_block(widths[-1], bridge, dropout)
        ups = [bridge] + list(reversed(widths))
        self.up = nn.ModuleList(nn.ConvTranspose2d(a, b, 2, stride=2) for a, b in zip(ups, ups[1:]))
        # After concatenation with the skip of the same width: 2w channels in, w out.
        self.fuse = nn.ModuleList(_unet_block(2 * w, w, dropout) for w in reversed(widths))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x):
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bridge(x)
        for up, fuse, skip in zip(self.up, self.fuse, reversed(skips)):
            x = fuse(torch.cat([up(x), skip], dim=1))
        return self.head(x)


# ---------------------------------------------------------------- probabilities to instances
def probability_to_instances(probability, threshold=0.5, min_area=0, max_instances=100):
    """Instances from an (H, W) tumor probability map: one per 8-connected component of
    ``probability >= threshold`` with at least ``min_area`` pixels; mask = the component, box = its
    bounding box (XYXY, pixel edges), score = its mean probability, class 0. Only the
    ``max_instances`` highest-scoring components are kept, like Mask R-CNN's detections per image:
    a poorly trained network's noisy map can have thousands, and each mask is a full-size slice."""
    prob = probability.detach().float().cpu().numpy() if torch.is_tensor(probability) \
        else np.asarray(probability, np.float32)
    h, w = prob.shape
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        (prob >= threshold).astype(np.uint8), connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA]
    sums = np.bincount(labels.ravel(), weights=prob.ravel(), minlength=count)
    means = sums / np.maximum(areas, 1)
    candidates = [k for k in range(1, count) if areas[k] >= max(min_area, 1)]  # 0: background
    kept = sorted(candidates, key=lambda k: -means[k])[:max_instances]
    if len(kept) < len(candidates):
        log_every_n_seconds(logging.WARNING, f"The probability map has {len(candidates)} tumor "
                            f"components; the {max_instances} most probable are kept "
                            "(TEST.DETECTIONS_PER_IMAGE).", n=60, name=__name__)
    masks = torch.zeros((len(kept), h, w), dtype=torch.bool)
    boxes = np.zeros((len(kept), 4), np.float32)
    for i, k in enumerate(kept):
        x, y, bw, bh = stats[k, :4]
        masks[i, y:y + bh, x:x + bw] = torch.from_numpy(labels[y:y + bh, x:x + bw] == k)
        boxes[i] = x, y, x + bw, y + bh
    inst = Instances((h, w))
    inst.pred_boxes = Boxes(torch.from_numpy(boxes))
    inst.scores = torch.tensor(means[kept], dtype=torch.float32)
    inst.pred_classes = torch.zeros(len(kept), dtype=torch.int64)
    inst.pred_masks = masks
    return inst


# ---------------------------------------------------------------- losses
def soft_dice_loss(logits, target, eps=1.0):
    """1 - soft Dice, 2 sum(p t) / (sum(p) + sum(t)), per image with p = sigmoid(logits), averaged
    over the batch; ``eps`` keeps an empty slice predicted empty at a loss of 0."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    dice = (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)
    return 1 - dice.mean()


# ---------------------------------------------------------------- the meta-architecture
class PixelSegmenter(nn.Module):
    """Detectron2 model interface around a network that outputs one tumor logit per pixel."""

    # tumorseg_d2.predictor.BatchPredictor reads the probability map straight from the outputs.
    returns_probability_map = True

    def __init__(self, cfg, network, stride):
        super().__init__()
        self.network = network
        c = cfg.MODEL.PIXEL_SEG
        if c.LOSS.upper() not in LOSSES:
            raise ValueError(f"MODEL.PIXEL_SEG.LOSS is {c.LOSS!r}; use one of {LOSSES}.")
        if c.INPUT_SIZE <= 0 or c.INPUT_SIZE % stride:
            raise ValueError(f"MODEL.PIXEL_SEG.INPUT_SIZE is {c.INPUT_SIZE}; "
                             f"{cfg.MODEL.META_ARCHITECTURE} halves it {stride.bit_length() - 1} "
                             f"times, so it must be a positive multiple of {stride} (e.g. 256).")
        self.input_size, self.loss = c.INPUT_SIZE, c.LOSS.upper()
        self.threshold, self.min_area = c.THRESHOLD, c.MIN_AREA
        self.max_instances = cfg.TEST.DETECTIONS_PER_IMAGE
        self.in_channels = c.IN_CHANNELS
        self.to(torch.device(cfg.MODEL.DEVICE))

    @property
    def device(self):
        return next(self.parameters()).device

    def preprocess(self, batched_inputs):
        """(B, C, S, S) float in [0, 1] at size S: C = 1, each image's mean over its channels
        (gray), or C = 3, its channels as they are (e.g. LGG's three MRI sequences)."""
        images = []
        for x in batched_inputs:
            image = x["image"].to(self.device, torch.float32)
            if self.in_channels == 1:
                image = image.mean(dim=0, keepdim=True)
            elif image.shape[0] == 1:
                image = image.expand(3, -1, -1)
            images.append(F.interpolate(image[None] / 255.0, size=(self.input_size,) * 2,
                                        mode="bilinear", align_corners=False))
        return torch.cat(images)

    def targets(self, batched_inputs):
        """(B, 1, S, S) float: the union of each image's tumor masks, resized like its image."""
        out = []
        for x in batched_inputs:
            h, w = x["image"].shape[-2:]
            inst = x.get("instances")
            mask = torch.zeros((h, w), dtype=torch.bool)
            if inst is not None and inst.has("gt_masks") and len(inst):
                masks = inst.gt_masks
                if isinstance(masks, PolygonMasks):
                    masks = BitMasks.from_polygon_masks(masks, h, w)
                mask = masks.tensor.any(dim=0)
            out.append(F.interpolate(mask[None, None].float(), size=(self.input_size,) * 2,
                                     mode="nearest"))
        return torch.cat(out).to(self.device)

    def forward(self, batched_inputs):
        logits = self.network(self.preprocess(batched_inputs))
        if self.training:
            return self.losses(logits, self.targets(batched_inputs))
        return self.postprocess(logits, batched_inputs)

    def losses(self, logits, target):
        losses = {}
        if "BCE" in self.loss:
            losses["loss_bce"] = F.binary_cross_entropy_with_logits(logits, target)
        if "DICE" in self.loss:
            losses["loss_dice"] = soft_dice_loss(logits, target)
        return losses

    def postprocess(self, logits, batched_inputs):
        results = []
        for logit, x in zip(logits, batched_inputs):
            h, w = x.get("height", x["image"].shape[-2]), x.get("width", x["image"].shape[-1])
            prob = torch.sigmoid(F.interpolate(logit[None], size=(h, w), mode="bilinear",
                                               align_corners=False))[0, 0].cpu()
            instances = probability_to_instances(prob, self.threshold, self.min_area,
                                                 self.max_instances)
            results.append({"instances": instances, "probability": prob})
        return results


def in_channels(cfg):
    """MODEL.PIXEL_SEG.IN_CHANNELS, checked: 1 (gray) or 3 (the image's channels)."""
    c = cfg.MODEL.PIXEL_SEG.IN_CHANNELS
    if c not in (1, 3):
        raise ValueError(f"MODEL.PIXEL_SEG.IN_CHANNELS is {c}; use 1 (the mean of the image's "
                         "channels) or 3 (the channels as they are).")
    return c


@META_ARCH_REGISTRY.register()
class EncoderDecoder2(PixelSegmenter):
    def __init__(self, cfg):
        super().__init__(cfg, _plain_encoder_decoder((32, 64), in_channels(cfg)), stride=4)


@META_ARCH_REGISTRY.register()
class EncoderDecoder3(PixelSegmenter):
    def __init__(self, cfg):
        super().__init__(cfg, _plain_encoder_decoder((32, 64, 128), in_channels(cfg)), stride=8)


@META_ARCH_REGISTRY.register()
class ResidualEncoderDecoder(PixelSegmenter):
    def __init__(self, cfg):
        super().__init__(cfg, _residual_encoder_decoder(in_channels(cfg)), stride=8)


@META_ARCH_REGISTRY.register()
class UNet(PixelSegmenter):
    def __init__(self, cfg):
        super().__init__(cfg, UNetNetwork(dropout=cfg.MODEL.PIXEL_SEG.DROPOUT,
                                          cin=in_channels(cfg)), stride=32)
