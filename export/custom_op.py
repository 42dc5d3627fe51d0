"""The adaptive convolution as one graph node: a torch custom op, its ONNX schema and its translation.

In the "plugin" ONNX variant every adaptive convolution is a single ``pose.AdaptiveConv`` node
(inputs ``x``, ``affine``, ``weight``; attribute ``dilation``) that TensorRT runs through our plugin.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxscript
import torch
from onnx.reference.op_run import OpRun
from torch import Tensor

from pose.ops.adaptive_conv import _adaptive_conv_torch, register_implementation

DOMAIN = "pose"
OP_TYPE = "AdaptiveConv"


@torch.library.custom_op("pose::adaptive_conv", mutates_args=())
def adaptive_conv_op(x: Tensor, affine: Tensor, weight: Tensor, dilation: int) -> Tensor:
    """Opaque to the exporter; computes with the pure-torch implementation."""
    return _adaptive_conv_torch(x, affine, weight, dilation)


@adaptive_conv_op.register_fake
def _(x: Tensor, affine: Tensor, weight: Tensor, dilation: int) -> Tensor:
    return x.new_empty(x.shape[0], weight.shape[0], x.shape[2], x.shape[3])


register_implementation("custom_op", lambda x, a, w, d: torch.ops.pose.adaptive_conv(x, a, w, d))


def _register_schema() -> None:
    if onnx.defs.has(OP_TYPE, DOMAIN):
        return
    schema = onnx.defs.OpSchema(
        OP_TYPE,
        DOMAIN,
        1,
        doc="3x3 convolution whose taps follow a per-pixel 2x2 affine matrix (deformable conv, offsets T G - G).",
        inputs=[
            onnx.defs.OpSchema.FormalParameter("x", "T", "features (B, C, H, W)"),
            onnx.defs.OpSchema.FormalParameter("affine", "T", "row-major 2x2 matrix per pixel (B, 4, H, W)"),
            onnx.defs.OpSchema.FormalParameter("weight", "T", "kernel (O, C, 3, 3)"),
        ],
        outputs=[onnx.defs.OpSchema.FormalParameter("y", "T", "(B, O, H, W)")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float types")],
        attributes=[onnx.defs.OpSchema.Attribute("dilation", onnx.defs.OpSchema.AttrType.INT, "grid dilation")],
    )
    onnx.defs.register_schema(schema)


_register_schema()
OPSET = onnxscript.values.Opset(DOMAIN, 1)  # after the schema, so calls know the node's outputs


def _translate(x, affine, weight, dilation: int):  # noqa: ANN001, ANN202 - called by the exporter's tracer
    return OPSET.AdaptiveConv(x, affine, weight, dilation=dilation, _outputs=1)


TRANSLATION_TABLE = {torch.ops.pose.adaptive_conv.default: _translate}


class AdaptiveConvReference(OpRun):
    """``pose.AdaptiveConv`` for ``onnx.reference.ReferenceEvaluator`` (runs the pure-torch op)."""

    op_domain = DOMAIN

    def _run(self, x, affine, weight, dilation=1):  # noqa: ANN001, ANN202 - OpRun signature
        tensors = (torch.from_numpy(np.array(v, dtype=np.float32)) for v in (x, affine, weight))
        out = _adaptive_conv_torch(*tensors, int(dilation))
        return (out.numpy().astype(np.asarray(x).dtype),)


AdaptiveConvReference.__name__ = OP_TYPE
