"""The batched grouping against the loop reference, and hand-built scenes with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pose.config import DecodeConfig
from pose.decode import group_poses, plausible_fits
from pose.gaussian_fit import fit_gaussians
from pose.postprocess import fuse_scales

from .reference_decoder import reference_group

K = 17
CFG = DecodeConfig()


def gaussian(h: int, w: int, x: float, y: float, sigma: float) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w]
    return np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))


def scene(
    people: list[np.ndarray], h: int, w: int, seed: int = 0, noise: float = 0.003
) -> tuple[np.ndarray, np.ndarray]:
    """Network-like outputs on an (h, w) grid for people given as (K, 2) joints in grid pixels.

    Keypoint heatmaps: Gaussian bumps (sigma 2) plus faint noise, so every map has many small peaks;
    center heatmap: a bump at each person's mean joint; regressed joints: those of the person whose center
    is nearest to the pixel.
    """
    rng = np.random.default_rng(seed)
    heat = noise * rng.random((K + 1, h, w))
    centers = [p.mean(0) for p in people]
    for joints, c in zip(people, centers, strict=True):
        for j in range(K):
            heat[j] = np.maximum(heat[j], 0.9 * gaussian(h, w, *joints[j], 2.0))
        heat[K] = np.maximum(heat[K], 0.8 * gaussian(h, w, *c, 2.0))
    kpts = np.zeros((2 * K, h, w))
    if people:
        ys, xs = np.mgrid[0:h, 0:w]
        dist = np.stack([np.hypot(xs - c[0], ys - c[1]) for c in centers])
        owner = dist.argmin(0)
        for j in range(K):
            kpts[2 * j] = np.choose(owner, [p[j, 0] for p in people])
            kpts[2 * j + 1] = np.choose(owner, [p[j, 1] for p in people])
    return heat.astype(np.float32), kpts.astype(np.float32)


def person(cx: float, cy: float, size: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([cx + size * rng.uniform(-1, 1, K), cy + size * rng.uniform(-1, 1, K)], -1).round()


def decode(heat: list[np.ndarray], kpts: list[np.ndarray], scales: list[float], cfg: DecodeConfig = CFG):
    """Run the batched decoder on one image; also return the fused map it grouped on."""
    heat_t = [torch.from_numpy(h)[None] for h in heat]
    base = (heat[scales.index(1.0)].shape[1] * 4, heat[scales.index(1.0)].shape[2] * 4)
    fused = fuse_scales(heat_t, base)
    poses = group_poses(heat_t, [torch.from_numpy(k)[None] for k in kpts], fused, scales, cfg)
    n = int(poses.valid[0].sum())
    return poses.keypoints[0, :n].numpy(), poses.center_scores[0, :n].numpy(), fused[0].numpy()


def assert_same_as_reference(heat, kpts, scales, cfg: DecodeConfig = CFG) -> np.ndarray:
    got, centers, fused = decode(heat, kpts, scales, cfg)
    ref = reference_group(heat, kpts, fused, scales, cfg)
    assert got.shape == ref.keypoints.shape
    np.testing.assert_allclose(centers, ref.center_scores, atol=1e-6)
    # Gaussian-fitted joints come from two float64 optimizers (scipy's MINPACK and ours) that agree to
    # ~1e-6 px on well-posed windows and to ~1e-2 on the odd wrapped or noisy one, as the authors' own
    # pipeline does under float noise (up to 4.4e-2 px, ../shared/parity/README.md).
    tol = 1e-2 if cfg.absorb and cfg.refine else 1e-4
    np.testing.assert_allclose(got[..., :2], ref.keypoints[..., :2], atol=tol)
    np.testing.assert_allclose(got[..., 2], ref.keypoints[..., 2], atol=1e-4)
    return got


@pytest.mark.parametrize("absorb,refine", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_outputs_match_the_loop_reference(absorb: bool, refine: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = 24, 40
    # Gaussian fits on very noisy windows are ill-conditioned (float noise picks the optimum), so the
    # refined variant gets smoother maps; the others get rough ones.
    noise = 0.02 if refine else 0.15
    heat = (
        rng.normal(0, noise, (K + 1, h, w))
        + 0.4 * sum(gaussian(h, w, rng.uniform(0, w), rng.uniform(0, h), 2.0) for _ in range(12))
    ).astype(np.float32)
    kpts = (np.mgrid[0:h, 0:w][::-1].repeat(K, 0).reshape(2 * K, h, w) + rng.normal(0, 6, (2 * K, h, w))).astype(
        np.float32
    )
    cfg = DecodeConfig(absorb=absorb, refine=refine)
    got = assert_same_as_reference([heat], [kpts], [1.0], cfg)
    assert len(got) > 3


def test_random_multiscale_outputs_match_the_loop_reference() -> None:
    rng = np.random.default_rng(5)
    sizes = {2.0: (32, 48), 1.0: (16, 24), 0.5: (8, 12)}
    heat, kpts = [], []
    for s, (h, w) in sizes.items():
        heat.append(
            (rng.normal(0, 0.2, (K + 1, h, w)) + 0.5 * gaussian(h, w, w / 2, h / 2, 2.0 * s)).astype(np.float32)
        )
        kpts.append(
            (np.mgrid[0:h, 0:w][::-1].repeat(K, 0).reshape(2 * K, h, w) + rng.normal(0, 3, (2 * K, h, w))).astype(
                np.float32
            )
        )
    assert_same_as_reference(heat, kpts, list(sizes), DecodeConfig(refine=False))


def _up_interpolate_loop(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """SPEC §3.3 with loops: bilinear, align_corners=True, to ``size - s + 1``, then replicate ``s - 1``."""
    c, h, w = x.shape
    sh, sw = int(size[0] / h), int(size[1] / w)
    oh, ow = size[0] - sh + 1, size[1] - sw + 1
    out = np.zeros((c, size[0], size[1]), np.float64)
    for i in range(size[0]):
        for j in range(size[1]):
            y = min(i, oh - 1) * (h - 1) / max(oh - 1, 1)
            x_ = min(j, ow - 1) * (w - 1) / max(ow - 1, 1)
            y0, x0 = min(int(y), h - 2) if h > 1 else 0, min(int(x_), w - 2) if w > 1 else 0
            ly, lx = y - y0, x_ - x0
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            out[:, i, j] = (
                (1 - ly) * (1 - lx) * x[:, y0, x0]
                + (1 - ly) * lx * x[:, y0, x1]
                + ly * (1 - lx) * x[:, y1, x0]
                + ly * lx * x[:, y1, x1]
            )
    return out


def test_unpadded_fusion_at_scales_that_do_not_divide_the_input_is_the_authors_mean() -> None:
    """A 0.75 map (12x18 under a 64x96 input, ratio 5.33) is upsampled as the authors do, nothing clamped."""
    rng = np.random.default_rng(3)
    maps = [rng.random((K + 1, 16, 24), np.float32), rng.random((K + 1, 12, 18), np.float32)]
    got = fuse_scales([torch.from_numpy(m)[None] for m in maps], (64, 96))[0].numpy()
    want = np.mean([_up_interpolate_loop(m, (64, 96)) for m in maps], axis=0)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_multiscale_outputs_at_a_non_dividing_scale_match_the_loop_reference() -> None:
    rng = np.random.default_rng(6)
    heat, kpts = [], []
    for s, (h, w) in {1.0: (16, 24), 0.75: (12, 18)}.items():
        heat.append(
            (rng.normal(0, 0.2, (K + 1, h, w)) + 0.5 * gaussian(h, w, w / 2, h / 2, 2.0 * s)).astype(np.float32)
        )
        grid = np.mgrid[0:h, 0:w][::-1].repeat(K, 0).reshape(2 * K, h, w)
        kpts.append((grid + rng.normal(0, 3, (2 * K, h, w))).astype(np.float32))
    assert_same_as_reference(heat, kpts, [1.0, 0.75], DecodeConfig(refine=False))


def test_two_people_far_apart_are_found_at_their_joints() -> None:
    a, b = person(12, 12, 6, 1), person(44, 20, 6, 2)
    heat, kpts = scene([a, b], 32, 56)
    got = assert_same_as_reference([heat], [kpts], [1.0])
    assert len(got) == 2
    found = sorted(got, key=lambda p: p[:, 0].mean())
    for pose, truth in zip(found, (a, b), strict=True):
        np.testing.assert_allclose(pose[:, :2], 4 * truth, atol=0.05)  # base pixels = 4 x grid pixels
        assert (pose[:, 2] > 0.5).all()


def test_overlapping_people_stay_apart_and_duplicates_merge() -> None:
    a, b = person(20, 16, 7, 3), person(23, 17, 7, 4)  # centers 3 px apart, different limbs
    heat, kpts = scene([a, b], 32, 48)
    assert len(assert_same_as_reference([heat], [kpts], [1.0])) == 2
    # The same person twice (two center peaks regressing the same joints) is one pose.
    heat2, kpts2 = scene([a], 32, 48)
    heat2[K] = np.maximum(heat2[K], 0.7 * gaussian(32, 48, a[:, 0].mean() + 5, a[:, 1].mean(), 1.0))
    got = assert_same_as_reference([heat2], [kpts2], [1.0], DecodeConfig(refine=False))
    assert len(got) == 1


@pytest.mark.parametrize("dx,dy,absorbed", [(74, 12, True), (75, 0, False), (75, 1, False)])
def test_candidate_just_inside_or_outside_the_absorb_radius(dx: int, dy: int, absorbed: bool) -> None:
    """A left-eye peak at distance 74.97, 75.0 and 75.007 base pixels from the regressed left eye."""
    h, w = 40, 120
    joints = np.full((K, 2), [5.0, 5.0])  # every joint regressed at grid (5, 5) = base (20, 20)
    heat, kpts = scene([joints], h, w, noise=0.0)
    fused = np.zeros((K + 1, 4 * h, 4 * w), np.float32)
    fused[K] = 0.01
    far = [(300 + 12 * (i % 10), 20 + 40 * (i // 10)) for i in range(K + 12)]  # >= 29 peaks far away
    for j in range(K):
        for x, y in far[:29]:
            fused[j] = np.maximum(fused[j], 0.5 * gaussian(4 * h, 4 * w, x, y, 1.0))
    fused[1] = np.maximum(fused[1], 0.9 * gaussian(4 * h, 4 * w, 20 + dx, 20 + dy, 1.0))
    cfg = DecodeConfig(refine=False)
    poses = group_poses(
        [torch.from_numpy(heat)[None]], [torch.from_numpy(kpts)[None]], torch.from_numpy(fused)[None], [1.0], cfg
    )
    assert int(poses.valid.sum()) == 1
    left_eye = poses.keypoints[0, 0, 1].tolist()
    if absorbed:
        assert left_eye[:2] == [20 + dx, 20 + dy] and left_eye[2] == pytest.approx(0.8 * 0.9, rel=1e-3)
    else:
        assert left_eye[:2] == [20.0, 20.0]
        assert left_eye[2] == pytest.approx(0.8 * fused[1, 20, 20], rel=1e-3)  # heat at the regressed joint
    ref = reference_group([heat], [kpts], fused, [1.0], cfg)
    np.testing.assert_allclose(poses.keypoints[0, :1].numpy(), ref.keypoints, atol=1e-5)


def test_a_fit_on_a_ramp_runs_off_the_window_and_the_guard_rejects_it() -> None:
    """A window that only rises (a near-flat map) has no peak: least squares finds a wide Gaussian far off
    the grid with an amplitude above every sample; a fit on a real bump is kept."""
    a, b = torch.meshgrid(torch.arange(13.0), torch.arange(13.0), indexing="ij")
    windows = torch.stack([0.1 + 0.01 * b, 0.8 * torch.exp(-((a - 5.6) ** 2 + (b - 6.3) ** 2) / 8)]).double()
    start = torch.stack([windows[:, 6, 6], *torch.full((2, 2), 6.0).T, torch.full((2,), 2.0)], 1).double()
    params, ok = fit_gaussians(windows, torch.full((2, 2), 13), start)
    assert ok.all()
    assert params[0, 2] > 20 and params[0, 0] > windows[0].max()  # off the grid, above the data
    torch.testing.assert_close(params[1], torch.tensor([0.8, 5.6, 6.3, 2.0], dtype=torch.float64))
    peak = windows.flatten(1).amax(1)
    assert plausible_fits(params, peak, max_gain=2.0).tolist() == [False, True]
    by_hand = torch.tensor(
        [
            [1.0, 6.0, 6.0, 2.0],  # kept
            [1.0, 6.0, 14.5, 2.0],  # peak off the grid
            [1.0, -1.5, 6.0, 2.0],  # peak off the grid
            [2.1, 6.0, 6.0, 2.0],  # amplitude over twice the highest sample
            [float("nan"), 6.0, 6.0, 2.0],
        ],
        dtype=torch.float64,
    )
    assert plausible_fits(by_hand, torch.ones(5, dtype=torch.float64), 2.0).tolist() == [1, 0, 0, 0, 0]


def test_guarded_refinement_leaves_runaway_fits_unapplied(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``refine_max_gain`` a runaway fit leaves its joint as the unrefined decode has it; well-posed
    fits are applied either way."""
    heat, kpts = scene([person(12, 12, 6, 1), person(44, 20, 6, 2)], 32, 56)
    guarded = DecodeConfig(refine_max_gain=2.0)
    refined, _, _ = decode([heat], [kpts], [1.0])
    unrefined, _, _ = decode([heat], [kpts], [1.0], DecodeConfig(refine=False))
    assert np.abs(refined - unrefined).max() > 0.01  # the fits moved the joint scores
    np.testing.assert_array_equal(decode([heat], [kpts], [1.0], guarded)[0], refined)

    import pose.decode as decode_module

    def runaway(data: torch.Tensor, extent: torch.Tensor, start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params, ok = fit_gaussians(data, extent, start)
        return params * torch.tensor([1e9, 1.0, 30.0, 50.0], dtype=params.dtype), ok

    monkeypatch.setattr(decode_module, "fit_gaussians", runaway)
    np.testing.assert_array_equal(decode([heat], [kpts], [1.0], guarded)[0], unrefined)
    assert decode([heat], [kpts], [1.0])[0][..., 2].max() > 1e6  # the authors' rule keeps such a fit


def test_an_image_with_nobody_gives_no_poses() -> None:
    heat = np.full((K + 1, 16, 24), -0.5, np.float32)
    kpts = np.zeros((2 * K, 16, 24), np.float32)
    got, centers, _ = decode([heat], [kpts], [1.0])
    assert got.shape == (0, K, 3) and centers.shape == (0,)


def test_images_of_different_sizes_in_one_batch_equal_one_at_a_time() -> None:
    images = [
        scene([person(10, 10, 5, 7), person(30, 14, 5, 8)], 24, 40, seed=1),
        scene([person(8, 12, 4, 9)], 32, 24, seed=2),
        scene([], 16, 16, seed=3),
    ]
    singles = [decode([h], [k], [1.0]) for h, k in images]
    hmax = max(h.shape[1] for h, _ in images)
    wmax = max(h.shape[2] for h, _ in images)
    heat = torch.zeros(len(images), K + 1, hmax, wmax)
    kpts = torch.zeros(len(images), 2 * K, hmax, wmax)
    for i, (h, k) in enumerate(images):
        heat[i, :, : h.shape[1], : h.shape[2]] = torch.from_numpy(h)
        kpts[i, :, : k.shape[1], : k.shape[2]] = torch.from_numpy(k)
    map_sizes = torch.tensor([h.shape[1:] for h, _ in images])
    fused = fuse_scales([heat], (4 * hmax, 4 * wmax), [map_sizes])
    poses = group_poses([heat], [kpts], fused, [1.0], CFG, base_sizes=4 * map_sizes, map_sizes=[map_sizes])
    for i, (single, _, single_fused) in enumerate(singles):
        n = int(poses.valid[i].sum())
        hb, wb = single_fused.shape[1:]
        np.testing.assert_allclose(fused[i, :, :hb, :wb].numpy(), single_fused, atol=1e-6)
        assert n == len(single)
        np.testing.assert_allclose(poses.keypoints[i, :n].numpy(), single, atol=1e-5)


@pytest.mark.parametrize("kernel", [5, 7])
def test_peak_top_k_by_peaks_alone_equals_the_dense_top_k(kernel: int) -> None:
    """The CPU shortcut ranks only the NMS peaks. It declines exactly when the dense top-k's set depends on
    tie order (fewer than 30 peaks above zero, or a tie at the cut); otherwise values equal the dense
    top-k's and indices name the same pixels, equal values in ascending pixel order."""
    from pose.decode import _peaks, _sparse_top_peaks, _window_max

    rng = np.random.default_rng(kernel)
    answered = declined = 0
    for trial in range(24):
        h, w = [(512, 512), (400, 640), (300, 301)][trial % 3]
        grid = rng.random((1, 1, h // 4, w // 4)) * 0.01
        if trial % 4 == 0:  # negative: fewer than 30 positive peaks, so zeros tie at the cut
            grid = rng.normal(-1.0, 0.1, (1, 1, h // 4, w // 4))
        heat = fuse_scales([torch.from_numpy(grid).float()], (h, w))[0]  # smooth, with replicated borders
        dense = _peaks(heat, kernel).flatten(1).topk(31, dim=1)
        decidable = bool(dense.values[0, 29] > 0) and bool(dense.values[0, 29] != dense.values[0, 30])
        sparse = _sparse_top_peaks(heat, _window_max(heat, kernel) == heat, 30)
        assert (sparse is not None) == decidable, trial
        if sparse is None:
            declined += 1
            continue
        answered += 1
        values, indices = sparse
        assert torch.equal(values[0], dense.values[0, :30])
        assert sorted(indices[0].tolist()) == sorted(dense.indices[0, :30].tolist())
        for v in values[0].unique():  # within a value, ascending pixels
            same = indices[0][values[0] == v]
            assert torch.equal(same, same.sort().values)
    assert answered >= 12 and declined >= 6


def test_chunked_gaussian_fits_equal_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    import pose.gaussian_fit as gaussian_fit

    rng = np.random.default_rng(0)
    m = 40
    a, b = np.mgrid[0:13, 0:13]
    centers = rng.uniform(4, 8, (m, 2))
    data = 0.8 * np.exp(-((a - centers[:, :1, None]) ** 2 + (b - centers[:, 1:, None]) ** 2) / 8.0)
    data += rng.normal(0, 0.01, data.shape)
    extent = torch.from_numpy(rng.integers(7, 14, (m, 2)))
    inside = (torch.arange(13).view(1, 13, 1) < extent[:, :1, None]) & (
        torch.arange(13).view(1, 1, 13) < extent[:, 1:, None]
    )
    data = torch.where(inside, torch.from_numpy(data), 0.0)
    start = torch.tensor([[0.7, 6.0, 6.0, 2.0]], dtype=torch.float64).repeat(m, 1)
    whole, ok_whole = gaussian_fit.fit_gaussians(data, extent, start)
    monkeypatch.setattr(gaussian_fit, "FITS_PER_CHUNK", 7)
    chunked, ok_chunked = gaussian_fit.fit_gaussians(data, extent, start)
    assert ok_whole.sum() > m // 2
    assert torch.equal(ok_whole, ok_chunked)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-9)


def test_lmpar_by_cholesky_agrees_with_the_eigendecomposition(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both solve MINPACK's damping problem; nonsingular systems agree to rounding, singular ones take the
    eigen path (which zeroes rank-deficient Gauss-Newton directions), non-finite ones get a NaN step."""
    import pose.gaussian_fit as gaussian_fit

    gen = torch.Generator().manual_seed(0)
    m, n = 64, 4
    jac = torch.randn(m, n, 30, dtype=torch.float64, generator=gen)
    jac[:8, 3] = jac[:8, 2]  # singular J^T J
    jtj = jac @ jac.transpose(1, 2)
    jtf = torch.randn(m, n, dtype=torch.float64, generator=gen)
    diag = 0.5 + torch.rand(m, n, dtype=torch.float64, generator=gen)
    delta = torch.rand(m, dtype=torch.float64, generator=gen) * torch.logspace(-3, 1, m, dtype=torch.float64)
    par = torch.rand(m, dtype=torch.float64, generator=gen) * (torch.arange(m) % 2)  # zero and nonzero starts
    eigen = gaussian_fit._lmpar_eigen
    routed: list[int] = []

    def spy(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        routed.append(args[0].shape[0])
        return eigen(*args)

    monkeypatch.setattr(gaussian_fit, "_lmpar_eigen", spy)
    step, new_par = gaussian_fit._lmpar(jtj, jtf, diag, delta, par)
    assert routed == [8]
    ref_step, ref_par = eigen(jtj, jtf, diag, delta, par)
    torch.testing.assert_close(step, ref_step, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(new_par, ref_par, rtol=1e-7, atol=1e-9)
    damped = new_par > 0  # the step lands on the trust-region boundary (10% band)
    assert damped.any() and (~damped).any()
    radius = torch.linalg.vector_norm(diag * step, dim=-1)
    assert ((radius[damped] - delta[damped]).abs() <= 0.1 * delta[damped] + 1e-12).all()
    jtj[20, 1, 1] = torch.nan
    step, new_par = gaussian_fit._lmpar(jtj, jtf, diag, delta, par)
    assert step[20].isnan().all() and new_par[20] == par[20] and step[21:].isfinite().all()


@pytest.mark.parametrize("rows,cols", [(13, 13), (9, 13), (13, 7), (20, 6), (5, 31)])
def test_window_samples_pair_values_with_the_authors_meshgrid(rows: int, cols: int) -> None:
    """curve_fit's xdata: ``Y, X = meshgrid(arange(rows), arange(cols))``, sample f at (X.ravel()[f], Y.ravel()[f])
    for the window's row-major values; windows wider than 13 (a wrapped stop index) keep every sample."""
    from pose.decode import _window_samples

    rng = np.random.default_rng(rows * 100 + cols)
    heat = rng.random((2, 3, 40, 50)).astype(np.float32)
    r_lo, c_lo = 4, 7
    window = heat[1, 2, r_lo : r_lo + rows, c_lo : c_lo + cols].ravel()
    y_grid, x_grid = np.meshgrid(np.arange(rows), np.arange(cols))
    grid = (max(13, cols), max(13, rows))
    expected = np.zeros(grid)
    expected[x_grid.ravel(), y_grid.ravel()] = window
    one = torch.tensor([1])
    got = _window_samples(torch.from_numpy(heat), one, one * 2, one * rows, one * cols, one * r_lo, one * c_lo, grid)
    np.testing.assert_array_equal(got[0].numpy(), expected)


@pytest.mark.parametrize("chunk", [1, 96 * 128, 3 * 96 * 128, 1 << 18])
def test_top_peaks_of_a_padded_batch_equal_the_dense_formula(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """Chunks of one map (the per-peak ranking), of one image's worth and of several maps, against the top-k
    of the masked, NMS-zeroed maps of the whole batch."""
    import pose.decode as decode

    monkeypatch.setattr(decode, "_CHUNK", chunk)
    rng = np.random.default_rng(chunk % 97)
    grids = rng.random((3, K, 24, 32)) * 0.01
    grids[1] -= 0.02  # mostly negative: ties at zero, the dense path
    heat = fuse_scales([torch.from_numpy(grids).float()], (96, 128))
    sizes = torch.tensor([[96, 128], [80, 100], [64, 128]])
    values, indices = decode._top_peaks(heat, 5, 30, sizes)
    dense = decode._peaks(decode._mask_padding(heat, sizes), 5).flatten(2).topk(30, dim=2)
    assert torch.equal(values, dense.values)
    for i in range(3):
        for j in range(K):
            if i == 1:  # dense path: torch.topk's own tie order, exactly
                assert torch.equal(indices[i, j], dense.indices[i, j])
            else:
                assert sorted(indices[i, j].tolist()) == sorted(dense.indices[i, j].tolist())
