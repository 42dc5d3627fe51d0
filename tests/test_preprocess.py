"""Preprocessing and flip against hand-computed cases (SPEC §3.1-3.3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pose.api import PoseEstimator
from pose.config import DEFAULT_MODEL, InputConfig
from pose.inference import flip_test, offsets_to_keypoints, up_interpolate
from pose.models.hrnet import PoseOutput
from pose.preprocess import plan_transform, resize_image, warp_batch

from .scenes import needs_embedded_model


@pytest.mark.parametrize(
    "w,h,size,scale,expected",
    [
        (640, 425, 512, 1.0, (832, 512)),  # 512/425*640 = 770.9 -> up to 832
        (425, 640, 512, 1.0, (512, 832)),  # portrait: width is the short side
        (640, 480, 512, 1.0, (704, 512)),  # 682.7 -> 704
        (640, 425, 256, 0.5, (224, 128)),  # 385.5 -> 448 at scale 1, then halved
        (640, 425, 256, 2.0, (896, 512)),
        (512, 512, 512, 1.0, (512, 512)),  # square: 512 exactly, no rounding up
        (1, 1, 512, 1.0, (512, 512)),
    ],
)
def test_input_size_rounds_the_long_side_up_to_64(
    w: int, h: int, size: int, scale: float, expected: tuple[int, int]
) -> None:
    assert plan_transform(w, h, size, scale).input_size == expected


@pytest.mark.parametrize(
    "w,h,size,scale,expected",
    [
        (640, 425, 256, 1.3, (608, 352)),  # 582.4 -> 608 and 332.8 -> 352: sizes the network's branches fuse at
        (640, 425, 256, 0.3, (160, 96)),  # 134.4 -> 160, 76.8 -> 96
        (640, 425, 256, 1e-38, (32, 32)),  # never below one network stride
    ],
)
def test_other_scales_round_up_to_the_network_stride(
    w: int, h: int, size: int, scale: float, expected: tuple[int, int]
) -> None:
    assert plan_transform(w, h, size, scale).input_size == expected


@needs_embedded_model
@pytest.mark.parametrize("scale", [1.3, 0.3, 1e-38])
def test_any_scale_the_options_allow_runs_through_the_network(scale: float) -> None:
    # The service takes scales in (0, 2]; sizes off the network stride used to fail inside the network (a 500).
    est = PoseEstimator.from_config(DEFAULT_MODEL)
    image = np.zeros((425, 640, 3), np.uint8)
    assert est.predict(image, scales=[1.0, scale], min_score=0).keypoints.shape[1:] == (17, 3)


def test_similarity_maps_the_center_to_the_middle_and_scales_the_short_side() -> None:
    t = plan_transform(640, 425, 512)
    assert t.center == (320, 213)  # int(w/2 + 0.5), int(h/2 + 0.5)
    k = 512 / 425
    np.testing.assert_allclose(t.matrix, [[k, 0, 416 - k * 320], [0, k, 256 - k * 213]], rtol=1e-6, atol=1e-4)
    back = t.inverse() @ np.array([416.0, 256.0, 1.0])
    np.testing.assert_allclose(back, [320, 213], atol=1e-4)


def test_torch_warp_matches_cv2_within_one_grey_level() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (61, 90, 3), dtype=np.uint8)
    image = np.ascontiguousarray(np.repeat(np.repeat(image, 3, 0), 3, 1))  # smooth enough for bilinear
    cfg = InputConfig(size=128)
    t = plan_transform(image.shape[1], image.shape[0], 128)
    ref = (resize_image(image, t).astype(np.float64) / 255 - np.array(cfg.mean)) / np.array(cfg.std)
    got = warp_batch(
        torch.from_numpy(image).permute(2, 0, 1)[None], torch.from_numpy(t.matrix)[None], t.input_size, cfg
    )
    diff = np.abs(got[0].permute(1, 2, 0).numpy() - ref)
    assert diff.max() <= 1.0 / 255 / 0.224 + 1e-6


def test_keypoints_are_pixel_minus_offset() -> None:
    off = torch.zeros(1, 2, 2, 3)
    off[0, 0, 1, 2] = 0.5  # dx at row 1, col 2
    off[0, 1, 1, 2] = -1.0  # dy
    kpts = offsets_to_keypoints(off)
    assert kpts[0, :, 1, 2].tolist() == [1.5, 2.0]
    assert kpts[0, :, 0, 1].tolist() == [1.0, 0.0]


def test_up_interpolate_maps_pixel_i_to_s_times_i() -> None:
    x = torch.arange(6.0).view(1, 1, 2, 3)
    up = up_interpolate(x, (8, 12))
    assert up.shape == (1, 1, 8, 12)
    assert up[0, 0, 4, 8] == x[0, 0, 1, 2]  # exact at s * i
    assert up[0, 0, 0, 2] == 0.5  # halfway between columns 0 and 1
    assert torch.equal(up[0, 0, 7], up[0, 0, 4])  # replicated bottom rows


class _Recorder(torch.nn.Module):
    """A fake network whose outputs encode the input so the flip bookkeeping can be checked by hand."""

    def forward(self, x: torch.Tensor) -> PoseOutput:
        b, _, h, w = x.shape
        heat = torch.zeros(b, 4, h, w)  # K = 3 keypoints + center
        for c in range(4):
            heat[:, c] = x[:, 0] * (c + 1)
        return PoseOutput(heat, torch.zeros(b, 6, h, w))


def test_flip_test_permutes_channels_and_unflips() -> None:
    x = torch.zeros(1, 3, 2, 8)
    x[0, 0, 0, 5] = 1.0
    out = flip_test(_Recorder(), x, flip_index=[0, 2, 1], flip_shift=0)
    # Without a shift the mirrored pass lands on the same pixel; channel 1 reads from flipped channel 2.
    assert out.heatmaps[0, :, 0, 5].tolist() == [1.0, 2.5, 2.5, 4.0]
    # Regressed joints at zero offset: x mirrored back is the pixel itself.
    assert torch.allclose(out.keypoints[0, 0, 0], torch.arange(8.0))
    # Pixel at column 2: mirrored to 5, shifted left by 3 to 2, un-flipped to 5: 3 pixels right of the
    # original response, each carrying half the weight.
    x2 = torch.zeros(1, 3, 2, 8)
    x2[0, 0, 0, 2] = 1.0
    shifted = flip_test(_Recorder(), x2, flip_index=[0, 2, 1], flip_shift=3)
    assert shifted.heatmaps[0, 0, 0].tolist() == [0, 0, 0.5, 0, 0, 0.5, 0, 0]


def test_flip_test_runs_both_passes_as_one_batch_with_the_same_result() -> None:
    """One forward of 2B images; each image's result equals what it gets alone."""
    calls: list[int] = []

    class Counting(_Recorder):
        def forward(self, x: torch.Tensor) -> PoseOutput:
            calls.append(x.shape[0])
            return super().forward(x)

    x = torch.rand(3, 3, 4, 8)
    together = flip_test(Counting(), x, flip_index=[0, 2, 1], flip_shift=3)
    assert calls == [6]
    for i in range(3):
        alone = flip_test(_Recorder(), x[i : i + 1], flip_index=[0, 2, 1], flip_shift=3)
        assert torch.equal(together.heatmaps[i : i + 1], alone.heatmaps)
        assert torch.equal(together.keypoints[i : i + 1], alone.keypoints)


class _HigherRecorder(torch.nn.Module):
    """A fake HigherHRNet with zero offsets: every 4x pixel regresses itself, at any input."""

    def forward(self, x: torch.Tensor) -> PoseOutput:
        b, _, h, w = x.shape
        h4, w4 = h // 4, w // 4
        return PoseOutput(torch.zeros(b, 4, h4, w4), torch.zeros(b, 6, h4, w4), torch.zeros(b, 3, 2 * h4, 2 * w4))


def test_higher_hrnet_flip_mirrors_joints_on_the_regression_grid() -> None:
    # The flipped pass's joints are mirrored as w - 1 - x on the 4x grid, then doubled onto the 2x grid:
    # 2x pixel j holds 2 * (j // 2) in both orientations. Mirroring on the 2x grid (2w - 1 - x) would put
    # the flipped joint one 2x pixel right, and the average half a pixel right, everywhere.
    out = flip_test(_HigherRecorder(), torch.zeros(1, 3, 8, 32), flip_index=[0, 2, 1], flip_shift=3)
    assert out.heatmaps.shape == (1, 4, 4, 16) and out.keypoints.shape == (1, 6, 4, 16)
    kpts = out.keypoints[0].view(3, 2, 4, 16)
    xs = 2 * (torch.arange(16.0) // 2)
    ys = 2 * (torch.arange(4.0) // 2)
    assert torch.equal(kpts[:, 0], xs.expand(3, 4, 16))
    assert torch.equal(kpts[:, 1], ys.view(4, 1).expand(3, 4, 16))
