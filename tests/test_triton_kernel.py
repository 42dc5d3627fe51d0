"""The fused Triton kernel against the pure-torch adaptive convolution: interpreter on CPU, real on GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

# Without a GPU, conftest sets TRITON_INTERPRET=1 before anything imports triton.
pytest.importorskip("triton", reason="triton is not installed")

from export.triton_kernel import adaptive_conv_triton  # noqa: E402
from pose.ops.adaptive_conv import adaptive_conv, use_implementation  # noqa: E402

from .conftest import ROOT  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def inputs(b: int, c: int, h: int, w: int, o: int, spread: float, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g)
    affine = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 4, 1, 1) + spread * torch.randn(b, 4, h, w, generator=g)
    weight = torch.randn(o, c, 3, 3, generator=g) / (3 * c**0.5)
    return x.to(DEVICE), affine.to(DEVICE), weight.to(DEVICE)


@pytest.mark.parametrize(
    "shape,dilation,spread",
    [((1, 3, 5, 7, 4), 1, 0.6), ((2, 20, 6, 9, 35), 2, 1.5), ((1, 16, 8, 8, 16), 3, 0.2), ((1, 17, 3, 4, 33), 1, 3.0)],
)
def test_kernel_equals_the_torch_op_in_float32(shape: tuple[int, ...], dilation: int, spread: float) -> None:
    """Channel and pixel counts that are not block multiples; large spreads sample far outside."""
    x, affine, weight = inputs(*shape, spread=spread, seed=sum(shape))
    with use_implementation("torch"):
        want = adaptive_conv(x, affine, weight, dilation)
    got = adaptive_conv_triton(x, affine, weight, dilation)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_channels_last_tensors_are_read_in_place_and_give_the_same_result() -> None:
    """A channels-last network hands the op NHWC memory; the output keeps that layout, with no copies."""
    x, affine, weight = inputs(2, 20, 6, 9, 35, spread=0.8, seed=7)
    want = adaptive_conv_triton(x, affine, weight, 2)
    nhwc = [t.to(memory_format=torch.channels_last) for t in (x, affine, weight)]
    got = adaptive_conv_triton(*nhwc, 2)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_registered_as_a_swappable_implementation() -> None:
    x, affine, weight = inputs(1, 4, 4, 4, 4, spread=0.3, seed=1)
    with use_implementation("triton"):
        got = adaptive_conv(x, affine, weight, 1)
    torch.testing.assert_close(got, adaptive_conv(x, affine, weight, 1), atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 1e-1)])
def test_kernel_on_gpu_at_head_sizes(dtype: torch.dtype, tol: float) -> None:
    x, affine, weight = inputs(2, 256, 128, 192, 256, spread=0.15, seed=0)
    want = adaptive_conv(x.double(), affine.double(), weight.double(), 1).float()
    got = adaptive_conv_triton(x.to(dtype), affine.to(dtype), weight.to(dtype), 1).float()
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)


# Compiles in a child process: this one runs Triton under TRITON_INTERPRET, which never compiles.
_COMPILE_FOR_TARGETS = """
import json, sys, torch
from triton.backends.compiler import GPUTarget
from export.triton_kernel import compile_ahead
report = {}
for arch in (80, 90):
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        kernel = compile_ahead(dtype, GPUTarget("cuda", arch, 32))
        report[f"sm_{arch} {dtype}"] = {
            "ptx_target": ".target sm_%d" % arch in kernel.asm["ptx"],
            "cubin_bytes": len(kernel.asm["cubin"]),
            "shared": kernel.metadata.shared,
        }
json.dump(report, sys.stdout)
"""


@pytest.mark.long
def test_kernel_compiles_ahead_of_time_for_ampere_and_hopper() -> None:
    """A compile error (the interpreter accepts code that the compiler rejects) fails here without a GPU."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-c", _COMPILE_FOR_TARGETS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert sorted(report) == sorted(
        f"sm_{a} {d}" for a in (80, 90) for d in ("torch.float32", "torch.float16", "torch.bfloat16")
    )
    for name, kernel in report.items():
        assert kernel["ptx_target"], name
        assert kernel["cubin_bytes"] > 1000, name
        assert kernel["shared"] <= 99 * 1024, name  # fits the opt-in shared memory of an A100 or H100 block
