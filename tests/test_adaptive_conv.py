"""The adaptive convolution against a literal loop transcription of the authors' CUDA kernel (SPEC §2)."""

import numpy as np
import pytest
import torch

from pose.ops import adaptive_conv, affine_to_offsets, deform_conv3x3


def naive_deform_conv(x: np.ndarray, offset: np.ndarray, weight: np.ndarray, dilation: int) -> np.ndarray:
    """Explicit loops over output pixels, taps and corners, following the mmdet v1 kernel rules."""
    b, c, h, w = x.shape
    out = np.zeros((b, weight.shape[0], h, w))
    for n in range(b):
        for ho in range(h):
            for wo in range(w):
                for i in range(3):
                    for j in range(3):
                        k = 3 * i + j
                        py = ho - dilation + i * dilation + offset[n, 2 * k, ho, wo]
                        px = wo - dilation + j * dilation + offset[n, 2 * k + 1, ho, wo]
                        if py <= -1 or px <= -1 or py >= h or px >= w:
                            continue
                        y0, x0 = int(np.floor(py)), int(np.floor(px))
                        ly, lx = py - y0, px - x0
                        sample = np.zeros(c)
                        for yy, xx, wgt in (
                            (y0, x0, (1 - ly) * (1 - lx)),
                            (y0, x0 + 1, (1 - ly) * lx),
                            (y0 + 1, x0, ly * (1 - lx)),
                            (y0 + 1, x0 + 1, ly * lx),
                        ):
                            if 0 <= yy < h and 0 <= xx < w:
                                sample += wgt * x[n, :, yy, xx]
                        out[n, :, ho, wo] += weight[:, :, i, j] @ sample
    return out


@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_deform_conv_matches_naive_loops_including_outside_samples(dilation: int) -> None:
    gen = torch.Generator().manual_seed(dilation)
    x = torch.randn(2, 3, 6, 7, generator=gen, dtype=torch.float64)
    offset = 2.5 * torch.randn(2, 18, 6, 7, generator=gen, dtype=torch.float64)  # many samples land outside
    weight = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64)
    got = deform_conv3x3(x.float(), offset.float(), weight.float(), dilation).double()
    expected = naive_deform_conv(x.numpy(), offset.numpy(), weight.numpy(), dilation)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5, rtol=1e-5)


def test_samples_exactly_on_and_beyond_the_border() -> None:
    """Offsets that put taps exactly at -1, on the last row/column, at H and in between."""
    x = torch.arange(1.0, 1 + 2 * 4 * 5, dtype=torch.float64).view(1, 2, 4, 5)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    values = torch.tensor([-1.0, -0.5, 0.0, 0.25, 3.0, 3.5, 4.0, 4.0 - 1e-9, -1.0 + 1e-9])
    offset = values[torch.randint(len(values), (1, 18, 4, 5), generator=torch.Generator().manual_seed(0))]
    offset = offset.double() - 1.0  # shifts the taps to border positions of every kind
    got = deform_conv3x3(x, offset, weight, 1)
    expected = naive_deform_conv(x.numpy(), offset.numpy(), weight.numpy(), 1)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-9)


def test_zero_offsets_equal_a_dilated_convolution() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 9, 11, generator=gen)
    weight = torch.randn(5, 4, 3, 3, generator=gen)
    for d in (1, 2, 3):
        ref = torch.nn.functional.conv2d(x, weight, padding=d, dilation=d)
        got = deform_conv3x3(x, torch.zeros(1, 18, 9, 11), weight, d)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_affine_offsets_match_the_hand_written_formula() -> None:
    """offset_k = T g_k - g_k with g_k = (row - 1, col - 1) of tap k, T acting on (dy, dx)."""
    t = torch.tensor([0.9, -0.2, 0.3, 1.4]).view(1, 4, 1, 1)
    offsets = affine_to_offsets(t).view(9, 2)
    tm = np.array([[0.9, -0.2], [0.3, 1.4]])
    for k in range(9):
        g = np.array([k // 3 - 1, k % 3 - 1], dtype=float)
        np.testing.assert_allclose(offsets[k].numpy(), tm @ g - g, atol=1e-6)


def test_identity_affine_is_a_plain_convolution_and_scaled_affine_dilates() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 10, 10, dtype=torch.float64, generator=gen)
    weight = torch.randn(2, 3, 3, 3, dtype=torch.float64, generator=gen)
    eye = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64).view(1, 4, 1, 1).expand(1, 4, 10, 10)
    ref = torch.nn.functional.conv2d(x, weight, padding=1)
    torch.testing.assert_close(adaptive_conv(x, eye, weight), ref)
    # T = 2I with dilation 1 samples at q + 2g: a dilation-2 convolution.
    dilated = torch.nn.functional.conv2d(x, weight, padding=2, dilation=2)
    torch.testing.assert_close(adaptive_conv(x, 2 * eye, weight), dilated)


def test_gradients_pass_gradcheck_in_float64() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    # Keep samples away from integer coordinates where bilinear interpolation has kinks.
    affine = (
        torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64).view(1, 4, 1, 1)
        + 0.137
        + 0.05 * torch.rand(1, 4, 4, 5, dtype=torch.float64, generator=gen)
    ).requires_grad_()
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: adaptive_conv(a, b, c, 2), (x, affine, weight))


def test_bad_shapes_are_rejected_with_the_shapes_in_the_message() -> None:
    with pytest.raises(AssertionError, match=r"offset must be \(1, 18, 4, 4\)"):
        deform_conv3x3(torch.zeros(1, 2, 4, 4), torch.zeros(1, 9, 4, 4), torch.zeros(1, 2, 3, 3))
    with pytest.raises(AssertionError, match="weight must be"):
        deform_conv3x3(torch.zeros(1, 2, 4, 4), torch.zeros(1, 18, 4, 4), torch.zeros(1, 3, 3, 3))
