"""Tensor operators of the method that have no torch equivalent."""

from pose.ops.adaptive_conv import AdaptiveConv2d, adaptive_conv, affine_to_offsets, deform_conv3x3

__all__ = ["AdaptiveConv2d", "adaptive_conv", "affine_to_offsets", "deform_conv3x3"]
