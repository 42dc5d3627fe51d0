"""Fused adaptive convolution in Triton: sample and accumulate in one kernel, no 9x tap tensor.

Each program computes a tile of output pixels x output channels of one image. For each of the 9 taps it
derives the sampling point from the pixel's 2x2 matrix, then walks the input channels in blocks: the four
bilinear corners are gathered (zero outside the image, the mmdet rule), blended, and multiplied with the
kernel slice by ``tl.dot`` (tensor cores in float16 and bfloat16, exact IEEE products in float32). Used by
the torch backend on CUDA and compiled ahead of time for the TensorRT plugin. On a CPU it runs under
``TRITON_INTERPRET=1`` (tests, small shapes), and :func:`compile_ahead` builds it for a GPU that is not
there, which is how CI catches compile errors.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from pose.ops.adaptive_conv import affine_to_offsets, deform_conv3x3, register_implementation

BLOCK_P, BLOCK_C, BLOCK_O = 64, 16, 32
# The tensor types the kernel is built for, as Triton's signature strings.
POINTER_TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}


@triton.jit
def adaptive_conv_kernel(
    x_ptr,
    affine_ptr,
    w_ptr,
    C,
    H,
    W,
    O,  # noqa: E741 - the output-channel count, named like C, H, W
    dilation,
    # Strides (batch, channel, pixel) in elements, so NCHW and channels-last tensors are read in place;
    # the weight's are (output channel, input channel, tap).
    x_sb,
    x_sc,
    x_sp,
    a_sb,
    a_sc,
    a_sp,
    w_so,
    w_sc,
    w_sk,
    y_sb,
    y_sc,
    y_sp,
    y_ptr,  # inputs, then scalars, then outputs: the calling convention of TensorRT's AOT plugins
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_O: tl.constexpr,
    LOW_PRECISION: tl.constexpr,  # 16-bit tensors: tensor-core products in that type, float32 sums
):
    pid_p = tl.program_id(0)
    pid_o = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)  # image offsets pass 2**31 elements for large batches of wide inputs
    hw = H * W
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < hw
    oy = (p // W).to(tl.float32)
    ox = (p % W).to(tl.float32)
    o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = o < O
    a_base = affine_ptr + b * a_sb + p * a_sp
    t00 = tl.load(a_base, mask=p_ok, other=0.0).to(tl.float32)
    t01 = tl.load(a_base + a_sc, mask=p_ok, other=0.0).to(tl.float32)
    t10 = tl.load(a_base + 2 * a_sc, mask=p_ok, other=0.0).to(tl.float32)
    t11 = tl.load(a_base + 3 * a_sc, mask=p_ok, other=0.0).to(tl.float32)
    x_base = x_ptr + b * x_sb
    acc = tl.zeros((BLOCK_P, BLOCK_O), dtype=tl.float32)
    for k in tl.static_range(9):
        gy = k // 3 - 1  # k is a compile-time constant, so are these (an annotation would re-bind a constexpr)
        gx = k % 3 - 1
        py = oy + gy * dilation + (t00 * gy + t01 * gx - gy)
        px = ox + gx * dilation + (t10 * gy + t11 * gx - gx)
        inside = p_ok & (py > -1.0) & (px > -1.0) & (py < H) & (px < W)
        y0f = tl.floor(py)
        x0f = tl.floor(px)
        ly = py - y0f
        lx = px - x0f
        y0 = y0f.to(tl.int32)
        x0 = x0f.to(tl.int32)
        m00 = inside & (y0 >= 0) & (x0 >= 0)
        m01 = inside & (y0 >= 0) & (x0 + 1 < W)
        m10 = inside & (y0 + 1 < H) & (x0 >= 0)
        m11 = inside & (y0 + 1 < H) & (x0 + 1 < W)
        i00 = y0 * W + x0
        w00 = (1 - ly) * (1 - lx)
        w01 = (1 - ly) * lx
        w10 = ly * (1 - lx)
        w11 = ly * lx
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            c_ok = c < C
            base = x_base + c[None, :] * x_sc
            c_in = c_ok[None, :]
            v = w00[:, None] * tl.load(base + (i00 * x_sp)[:, None], mask=m00[:, None] & c_in, other=0.0).to(tl.float32)
            v += w01[:, None] * tl.load(base + ((i00 + 1) * x_sp)[:, None], mask=m01[:, None] & c_in, other=0.0).to(
                tl.float32
            )
            v += w10[:, None] * tl.load(base + ((i00 + W) * x_sp)[:, None], mask=m10[:, None] & c_in, other=0.0).to(
                tl.float32
            )
            v += w11[:, None] * tl.load(base + ((i00 + W + 1) * x_sp)[:, None], mask=m11[:, None] & c_in, other=0.0).to(
                tl.float32
            )
            wt = tl.load(
                w_ptr + o[None, :] * w_so + c[:, None] * w_sc + k * w_sk, mask=c_ok[:, None] & o_ok[None, :], other=0.0
            )
            if LOW_PRECISION:
                acc += tl.dot(v.to(y_ptr.dtype.element_ty), wt.to(y_ptr.dtype.element_ty))
            else:
                acc += tl.dot(v, wt.to(tl.float32), input_precision="ieee")
    out = y_ptr + b * y_sb + o[None, :] * y_sc + p[:, None] * y_sp
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=p_ok[:, None] & o_ok[None, :])


def adaptive_conv_triton(x: Tensor, affine: Tensor, weight: Tensor, dilation: int = 1) -> Tensor:
    """Same contract as :func:`pose.ops.adaptive_conv` (float32, float16 or bfloat16 in, same dtype out).

    NCHW and channels-last inputs are read in place, and the output takes the input's memory format, so a
    channels-last network pays no layout copies around this op.
    """
    if x.dtype not in POINTER_TYPES:
        raise TypeError(f"the fused adaptive convolution takes {sorted(map(str, POINTER_TYPES))}, got {x.dtype}")
    b, c, h, w = x.shape
    o = weight.shape[0]
    x, affine, weight = (_planar(t.to(x.dtype)) for t in (x, affine, weight))
    channels_last = x.stride(1) == 1 and c > 1
    y = torch.empty(
        b, o, h, w, device=x.device, dtype=x.dtype,
        memory_format=torch.channels_last if channels_last else torch.contiguous_format,
    )  # fmt: skip
    grid = (triton.cdiv(h * w, BLOCK_P), triton.cdiv(o, BLOCK_O), b)
    adaptive_conv_kernel[grid](
        x,
        affine,
        weight,
        c,
        h,
        w,
        o,
        dilation,
        *_strides(x),
        *_strides(affine),
        *_strides(weight),
        *_strides(y),
        y,
        BLOCK_P=BLOCK_P,
        BLOCK_C=BLOCK_C,
        BLOCK_O=BLOCK_O,
        LOW_PRECISION=x.dtype != torch.float32,
    )
    return y


def _planar(t: Tensor) -> Tensor:
    """``t`` itself when each channel's pixels sit at one stride apart (NCHW or channels last), else a copy."""
    return t if t.stride(2) == t.shape[3] * t.stride(3) else t.contiguous()


def _strides(t: Tensor) -> tuple[int, int, int]:
    """(batch, channel, pixel) strides; for a weight, (output channel, input channel, tap)."""
    return t.stride(0), t.stride(1), t.stride(3)


# Largest error against the float64 torch op that the start-up check accepts, relative to the output's scale.
SELF_CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}


def self_check(device: torch.device, dtype: torch.dtype) -> float:
    """Compile and run the kernel on a small input, in both layouts, against the torch op in float64.

    What a service runs at start-up before it trusts the kernel. Returns the largest error; raises
    ``RuntimeError`` beyond :data:`SELF_CHECK_TOLERANCE` (a compile or launch error propagates as is).
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 24, 9, 13, generator=g, dtype=torch.float64)
    affine = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64).view(1, 4, 1, 1)
    affine = affine + 0.4 * torch.randn(2, 4, 9, 13, generator=g, dtype=torch.float64)
    weight = torch.randn(40, 24, 3, 3, generator=g, dtype=torch.float64) / 15
    want = deform_conv3x3(x, affine_to_offsets(affine), weight, 2)
    tolerance = SELF_CHECK_TOLERANCE[dtype] * max(1.0, float(want.abs().max()))
    error = 0.0
    for layout in (torch.contiguous_format, torch.channels_last):
        xd, ad, wd = (t.to(device, dtype).contiguous(memory_format=layout) for t in (x, affine, weight))
        got = adaptive_conv_triton(xd, ad, wd, 2).to("cpu", torch.float64)
        error = max(error, float((got - want).abs().max()))
        if not error <= tolerance:  # NaN fails too
            raise RuntimeError(
                f"the fused kernel differs from the torch op by {error:.3g} in {dtype} ({layout}); "
                f"tolerance {tolerance:.3g}"
            )
    return error


def compile_ahead(dtype: torch.dtype, target: Any = None) -> Any:
    """Compile the kernel for ``dtype`` without launching it: to PTX and cubin for ``target``.

    ``target`` is a ``triton.backends.compiler.GPUTarget`` (e.g. ``GPUTarget("cuda", 90, 32)``); without it,
    the current GPU. Needs no GPU when a target is given, so it runs in CI; the TensorRT plugin embeds the
    PTX it returns. Not under ``TRITON_INTERPRET``, which never compiles.
    """
    ty = POINTER_TYPES[dtype]
    strides = ("x_sb", "x_sc", "x_sp", "a_sb", "a_sc", "a_sp", "w_so", "w_sc", "w_sk", "y_sb", "y_sc", "y_sp")
    scalars = dict.fromkeys(("C", "H", "W", "O", "dilation", *strides), "i32")
    constexprs = {"BLOCK_P": BLOCK_P, "BLOCK_C": BLOCK_C, "BLOCK_O": BLOCK_O, "LOW_PRECISION": dtype != torch.float32}
    source = triton.compiler.ASTSource(
        fn=adaptive_conv_kernel,
        signature={
            "x_ptr": ty,
            "affine_ptr": ty,
            "w_ptr": ty,
            **scalars,
            "y_ptr": ty,
            **dict.fromkeys(constexprs, "constexpr"),
        },
        constexprs=constexprs,
    )
    return triton.compile(source, target=target)


register_implementation("triton", adaptive_conv_triton)
