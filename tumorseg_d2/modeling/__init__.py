"""Models tumorseg-d2 registers in Detectron2's META_ARCH_REGISTRY (imported by tumorseg_d2.config)."""
from .pixel_seg import (EncoderDecoder2, EncoderDecoder3, PixelSegmenter, ResidualEncoderDecoder,
                        UNet, probability_to_instances)

__all__ = ["EncoderDecoder2", "EncoderDecoder3", "PixelSegmenter", "ResidualEncoderDecoder", "UNet",
           "probability_to_instances"]
