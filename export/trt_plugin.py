"""``pose::AdaptiveConv`` as a TensorRT plugin (``tensorrt.plugin``, TensorRT >= 10.7).

Shape and type inference, an autotune space over float32/float16, and an ahead-of-time implementation:
the Triton kernel of :mod:`export.triton_kernel` is compiled to PTX when the engine is built and embedded
in it, so the engine runs without Python. Importing this module registers the plugin.

Status: written against the documented ``tensorrt.plugin`` API; TensorRT is not installable in the
workplace where this was written, so none of this module has run yet (see README).
"""

from __future__ import annotations

import tensorrt as trt
import tensorrt.plugin as trtp
import torch

from export.triton_kernel import BLOCK_O, BLOCK_P, compile_ahead

PLUGIN_ID = "pose::AdaptiveConv"


@trtp.register(PLUGIN_ID)
def adaptive_conv_desc(
    x: trtp.TensorDesc, affine: trtp.TensorDesc, weight: trtp.TensorDesc, dilation: int
) -> trtp.TensorDesc:
    """Output (B, O, H, W): the input's batch and spatial size, the kernel's output channels."""
    y = x.like()
    y.shape_expr[1] = weight.shape_expr[0]
    return y


@trtp.autotune(PLUGIN_ID)
def adaptive_conv_autotune(
    x: trtp.TensorDesc, affine: trtp.TensorDesc, weight: trtp.TensorDesc, dilation: int, outputs: tuple[trtp.TensorDesc]
) -> list[trtp.AutoTuneCombination]:
    """All four tensors share one type; TensorRT times float32 and float16 and keeps the faster."""
    return [trtp.AutoTuneCombination("FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16", "LINEAR")]


@trtp.aot_impl(PLUGIN_ID)
def adaptive_conv_aot(
    x: trtp.TensorDesc,
    affine: trtp.TensorDesc,
    weight: trtp.TensorDesc,
    dilation: int,
    outputs: tuple[trtp.TensorDesc],
    tactic: int,
) -> tuple[str, str, trtp.KernelLaunchParams, trtp.SymExprs]:
    """PTX of the fused kernel for this type, its grid over (pixels, output channels, batch), scalars."""
    compiled = compile_ahead(torch.float16 if x.dtype == trt.float16 else torch.float32)
    b, c, h, w = (x.shape_expr[i] for i in range(4))
    o = weight.shape_expr[0]
    launch = trtp.KernelLaunchParams()
    launch.grid_x = trtp.cdiv(h * w, BLOCK_P)
    launch.grid_y = trtp.cdiv(o, BLOCK_O)
    launch.grid_z = b
    launch.block_x = compiled.metadata.num_warps * 32
    launch.shared_mem = compiled.metadata.shared
    hw = h * w
    # C, H, W, O, dilation, then (batch, channel, pixel) strides of the LINEAR (NCHW) x, affine, weight, y.
    values = [c, h, w, o, dilation, c * hw, hw, 1, hw * 4, hw, 1, c * 9, 9, 1, o * hw, hw, 1]
    scalars = trtp.SymIntExprs(len(values))
    for i, value in enumerate(values):
        scalars[i] = trtp.SymInt32(value)
    return compiled.metadata.name, compiled.asm["ptx"], launch, scalars
