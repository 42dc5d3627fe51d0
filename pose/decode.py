"""Batched grouping: center NMS, pose NMS, heatmap absorption and Gaussian refinement (SPEC §4.1-4.4).

Semantics are the authors' ``HeatmapRegParser.parse``, including its quirks (sub-threshold keypoint
candidates stay absorbable with value 0; the non-absorbed heat lookup reads row=int(x), col=int(y)); they
are kept because published AP numbers depend on them. Everything runs as tensor code over the whole batch
on the input's device. The one sequential step is the greedy pose NMS, whose outcome depends on the
order of decisions: it iterates over candidate *ranks* (at most ``max_people`` per scale), each step a
batch-wide tensor operation, so its cost does not grow with the batch. Host syncs: one for the windows to
refine, and a few inside the Gaussian fit (early stopping); on CPU, where they cost nothing, more (the
peak search picks its path per map, the fit checks its working set every step).

Letters: B batch, S scales, N candidates (S * max_people), P poses, K keypoints, T top-k candidates.
Padded batches: every map may be padded at right/bottom; ``sizes`` carry each image's valid size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pose.config import DecodeConfig
from pose.gaussian_fit import fit_gaussians

__all__ = ["Poses", "group_poses"]

_NEG = -1e30  # fills padding so it never wins a max-pool or a top-k
_FIT_GRID = 13  # side of the Gaussian-fit window (SPEC §4.4: joint ± 6)


@dataclass
class Poses:
    """Grouped poses of a batch, in the authors' order (not sorted by final score)."""

    keypoints: Tensor  # (B, P, K, 3) x, y, score in pixels of the scale-1 network input
    scores: Tensor  # (B, P) mean joint score (the paper's naive score)
    center_scores: Tensor  # (B, P) center-heatmap peak of each pose
    valid: Tensor  # (B, P) bool: P is the largest count in the batch


def _mask_padding(x: Tensor, sizes: Tensor) -> Tensor:
    """Set pixels outside each image's (h, w) to a very negative value."""
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows < sizes[:, 0].view(-1, 1, 1)) & (cols < sizes[:, 1].view(-1, 1, 1))  # (B, h, w)
    inside = inside.view(x.shape[0], *([1] * (x.dim() - 3)), h, w)
    return x.masked_fill(~inside, _NEG)


def _window_max(x: Tensor, kernel: int) -> Tensor:
    """``max_pool2d(x, kernel, 1, kernel // 2)`` (borders padded with -inf), as separable in-place maxima.

    Exactly equal, and several times faster than ``max_pool2d`` on CPU for 17 maps at input resolution.
    """
    out = x.clone()
    for axis in (-1, -2):
        src = x if axis == -1 else out.clone()
        for d in range(1, kernel // 2 + 1):
            n = src.shape[axis]
            torch.maximum(out.narrow(axis, 0, n - d), src.narrow(axis, d, n - d), out=out.narrow(axis, 0, n - d))
            torch.maximum(out.narrow(axis, d, n - d), src.narrow(axis, 0, n - d), out=out.narrow(axis, d, n - d))
    return out


def _peaks(x: Tensor, kernel: int | Tensor) -> Tensor:
    """Zero every pixel that is not the max of its window (plateaus count as peaks).

    ``kernel`` is one size, or a (B,) tensor of 3, 5 or 7 per image.
    """
    if isinstance(kernel, int):
        return x * (_window_max(x, kernel) == x)
    out = torch.zeros_like(x)
    for k in (3, 5, 7):
        keep = (_window_max(x, k) == x) & (kernel == k).view(-1, *([1] * (x.dim() - 1)))
        out = torch.where(keep, x, out)
    return out


def _sparse_top_peaks(x: Tensor, is_peak: Tensor, count: int) -> tuple[Tensor, Tensor] | None:
    """``(x * is_peak).flatten(1).topk(count)`` for one (1, H, W) map and its NMS peaks, ranking the peaks alone.

    Heatmap peaks are a few thousand of a map's pixels; gathering them and ranking those costs less than
    zeroing the rest and ranking every pixel (CPU, memory-bound). Returns None when the chosen set would
    depend on tie order (fewer than ``count`` peaks above zero, or a tie at the ``count``-th value): the
    caller then runs the dense version. Otherwise the result is the dense one's, except that equal
    values come in ascending pixel order, where ``torch.topk`` leaves their order unspecified.
    """
    peak = is_peak.reshape(-1).nonzero().squeeze(1)  # (S,) flat indices
    if peak.numel() < count:
        return None
    value = x.reshape(-1)[peak]
    top, pos = value.topk(min(count + 1, value.numel()))
    if not bool(top[count - 1] > 0) or (top.numel() > count and bool(top[count] == top[count - 1])):
        return None
    # A unique set; equal values within it in ascending pixel order (torch.topk leaves their order open).
    pos = pos[:count].sort().values
    top, order = value[pos].sort(descending=True, stable=True)
    return top.view(1, -1), peak[pos[order]].view(1, -1)


_CHUNK = 1 << 18  # elements per peak-finding chunk: about 1 MB of float32, so the passes stay in cache


def _top_peaks(x: Tensor, kernel: int, count: int, sizes: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``topk(count)`` of every map's NMS peaks (:func:`_peaks`); on CPU one cache-sized chunk of maps at a time.

    The same as ``_peaks(x, kernel).flatten(2).topk(count, dim=2)`` (top-k runs row by row), except that
    on CPU equal values inside a large map's chosen set come in ascending pixel order
    (:func:`_sparse_top_peaks`). On CPU the full-resolution passes are memory-bound: chunks of maps that fit
    in the cache, never a batch-sized copy, make them several times faster. Other devices take the whole
    batch at once.

    Args:
        x: Tensor[B, C, H, W]; sizes: Tensor[B, 2] valid (H, W) per image, or None when unpadded.

    Returns:
        values and flat indices, Tensor[B, C, min(count, H * W)] each.
    """
    b, c, h, w = x.shape
    if x.device.type != "cpu":
        heat = x if sizes is None else _mask_padding(x, sizes)
        return _peaks(heat, kernel).flatten(2).topk(min(count, h * w), dim=2)
    step = max(1, _CHUNK // (h * w))
    values, indices = [], []
    for i in range(b):  # x[i] is contiguous even when x is a channel slice of a larger batch
        for start in range(0, c, step):
            chunk = x[i, start : start + step]
            if sizes is not None:
                chunk = _mask_padding(chunk, sizes[i : i + 1].expand(chunk.shape[0], 2))
            is_peak = _window_max(chunk, kernel) == chunk  # as _peaks
            sparse = _sparse_top_peaks(chunk, is_peak, count) if chunk.shape[0] == 1 and h * w > count else None
            val, idx = sparse or (chunk * is_peak).flatten(1).topk(min(count, h * w), dim=1)
            values.append(val)
            indices.append(idx)
    return torch.cat(values).view(b, c, -1), torch.cat(indices).view(b, c, -1)


def _center_candidates(
    heatmaps: list[Tensor],
    keypoints: list[Tensor],
    map_sizes: list[Tensor],
    scales: list[float],
    base_sizes: Tensor,
    cfg: DecodeConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """Top centers of every scale with the joints regressed there, in base-input pixels.

    Returns candidates (B, N, K, 2), their center scores (B, N) and validity (B, N), scales in list order,
    each by descending score.
    """
    if 1.0 not in scales:
        raise ValueError(f"scales must include 1.0 (the grouping resolution), got {scales}")
    one = scales.index(1.0)
    k = keypoints[0].shape[1] // 2
    max_ori = _mask_padding(heatmaps[one][:, -1], map_sizes[one]).flatten(1).amax(1)  # (B,)
    all_pos, all_val, all_ok = [], [], []
    for heat, kpts, size, scale in zip(heatmaps, keypoints, map_sizes, scales, strict=True):
        b, _, h, w = heat.shape
        factor = 1.0 if scale == 1.0 else cfg.scale_decrease
        center = _mask_padding(heat[:, -1], size)  # (B, h, w)
        center_max = center.flatten(1).amax(1).view(b, 1, 1)
        center = factor * center / center_max * max_ori.view(b, 1, 1)
        center = _mask_padding(center, size)
        mean_side = (size[:, 0] + size[:, 1]).float() / 2
        hi, lo = cfg.pool_thresholds
        kernel = torch.where(mean_side > hi, 7, torch.where(mean_side > lo, 5, 3))
        val, idx = _peaks(center.unsqueeze(1), kernel).flatten(1).topk(min(cfg.max_people, h * w), dim=1)
        ratio = (base_sizes[:, 1].float() / size[:, 1].float()).view(b, 1, 1, 1)  # Wb / w per image
        joints = kpts.view(b, k, 2, h * w).permute(0, 3, 1, 2)  # (B, h*w, K, 2)
        pos = ratio * torch.gather(joints, 1, idx.view(b, -1, 1, 1).expand(-1, -1, k, 2))
        all_pos.append(pos)
        all_val.append(val)
        all_ok.append(val > cfg.keypoint_threshold * factor)
    return torch.cat(all_pos, 1), torch.cat(all_val, 1), torch.cat(all_ok, 1)


def _pose_nms(pos: Tensor, score: Tensor, ok: Tensor, cfg: DecodeConfig) -> tuple[Tensor, Tensor]:
    """The authors' greedy duplicate removal. Returns kept candidate indices (B, P) and validity (B, P).

    Two candidates are duplicates when more than ``pose_nms_overlap`` joints lie closer than
    ``pose_nms_distance``. Walking candidates in order, each not-yet-ignored one elects the best-scoring
    member of its duplicate set; the elected one is kept unless already ignored, and the whole set is
    ignored from then on.
    """
    b, n = score.shape
    dist = torch.linalg.vector_norm(pos.unsqueeze(2) - pos.unsqueeze(1), dim=-1)  # (B, N, N, K)
    similar = ((dist < cfg.pose_nms_distance).sum(-1) > cfg.pose_nms_overlap) & ok.unsqueeze(1) & ok.unsqueeze(2)
    masked_score = torch.where(similar, score.unsqueeze(1), torch.full_like(similar, float("-inf"), dtype=score.dtype))
    best = masked_score.argmax(-1)  # (B, N): elected member of each candidate's set
    ignored = ~ok
    kept = torch.zeros_like(ok)
    elected_at = torch.full((b, n), n, dtype=torch.long, device=score.device)  # step at which a pose was kept
    rows = torch.arange(b, device=score.device)
    for i in range(n):  # sequential by definition; each step is batch-wide
        m = best[:, i]
        keep = ~ignored[:, i] & ~ignored[rows, m]
        kept[rows, m] |= keep
        elected_at[rows, m] = torch.where(keep, torch.full_like(m, i), elected_at[rows, m])
        ignored |= similar[:, i] & keep.unsqueeze(1)
    count = kept.sum(1)
    # Keep order = election order; more than max_people: the best max_people, by descending score.
    order = torch.where(kept, elected_at.to(score.dtype), torch.full_like(score, float("inf"))).argsort(
        dim=1, stable=True
    )
    kept_scores = torch.gather(torch.where(kept, score, torch.full_like(score, float("-inf"))), 1, order)
    top = kept_scores.topk(min(cfg.max_people, n), dim=1).indices  # top-k of the kept list, as the authors
    too_many = (count > cfg.max_people).view(b, 1)
    order = torch.where(too_many, torch.gather(order, 1, top), order[:, : top.shape[1]])
    valid = torch.arange(order.shape[1], device=score.device).view(1, -1) < count.clamp(max=cfg.max_people).view(b, 1)
    return order, valid


def _joint_values(maps: Tensor, row: Tensor, col: Tensor) -> Tensor:
    """``maps[b, k, row[b, p, k], col[b, p, k]]``, Tensor[B, P, K]: every pose's joint ``k`` read on map
    ``k``, by a four-index gather (no flattened copy of a non-contiguous batch of maps)."""
    b, k = maps.shape[:2]
    images = torch.arange(b, device=maps.device).view(b, 1, 1)
    joints = torch.arange(k, device=maps.device).view(1, 1, k)
    return maps[images, joints, row, col]


def _bilinear_trunc(heat: Tensor, xy: Tensor, sizes: Tensor) -> Tensor:
    """Heat at (x, y) from the 4 neighbours of (int(x), int(y)); 0 when any neighbour is outside.

    Args:
        heat: (B, K, H, W); xy: (B, P, K, 2); sizes: (B, 2) valid (H, W). Returns (B, P, K).
    """
    b, _, h, w = heat.shape
    x, y = xy[..., 0], xy[..., 1]
    x0, y0 = torch.trunc(x), torch.trunc(y)
    u, v = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    hb, wb = sizes[:, 0].view(b, 1, 1), sizes[:, 1].view(b, 1, 1)
    inside = (x0 >= 0) & (x0 + 1 < wb) & (y0 >= 0) & (y0 + 1 < hb)
    xc, yc = x0.clamp(0, w - 2), y0.clamp(0, h - 2)
    value = (
        (1 - u) * (1 - v) * _joint_values(heat, yc, xc)
        + u * (1 - v) * _joint_values(heat, yc, xc + 1)
        + (1 - u) * v * _joint_values(heat, yc + 1, xc)
        + u * v * _joint_values(heat, yc + 1, xc + 1)
    )
    return torch.where(inside, value, torch.zeros_like(value))


def _absorb(
    fused: Tensor, sizes: Tensor, joints: Tensor, scores: Tensor, cfg: DecodeConfig, padded: bool = True
) -> tuple[Tensor, Tensor]:
    """Move each joint to the nearest same-type heatmap peak within ``max_absorb_distance``.

    Peaks: 5x5 max-pool NMS, top ``max_people`` per joint type, values below the threshold set to 0 (but
    still absorbable). A joint with no peak in range keeps its position and multiplies its score by the
    heat at row=int(x), col=int(y), clamped: the authors' swapped lookup, kept for parity.
    """
    b, _, h, w = fused.shape
    val, idx = _top_peaks(fused, 5, cfg.max_people, sizes if padded else None)  # (B, K, T)
    val = val * (val > cfg.keypoint_threshold)
    cand = torch.stack(((idx % w).to(fused.dtype), (idx // w).to(fused.dtype)), -1)  # (B, K, T, 2)
    dist = torch.linalg.vector_norm(joints.unsqueeze(3) - cand.unsqueeze(1), dim=-1)  # (B, P, K, T)
    nearest_dist, nearest = dist.min(-1)
    absorbed = nearest_dist < cfg.max_absorb_distance
    p = joints.shape[1]
    gather_idx = nearest.unsqueeze(-1)  # (B, P, K, 1)
    cand_xy = torch.gather(
        cand.unsqueeze(1).expand(-1, p, -1, -1, -1), 3, gather_idx.unsqueeze(-1).expand(-1, -1, -1, 1, 2)
    ).squeeze(3)
    cand_val = torch.gather(val.unsqueeze(1).expand(-1, p, -1, -1), 3, gather_idx).squeeze(3)
    # Swapped lookup: row from x, column from y, each clamped to the *other* axis' range.
    row = torch.trunc(joints[..., 0]).long().clamp(min=0).minimum(sizes[:, 0].view(b, 1, 1) - 1)
    col = torch.trunc(joints[..., 1]).long().clamp(min=0).minimum(sizes[:, 1].view(b, 1, 1) - 1)
    swapped = _joint_values(fused, row, col)
    new_joints = torch.where(absorbed.unsqueeze(-1), cand_xy, joints)
    new_scores = scores * torch.where(absorbed, cand_val, swapped)
    return new_joints, new_scores


def _unique_first(key: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Distinct values of ``key``, the index of each one's first occurrence, and the inverse map."""
    values, inverse = torch.unique(key, return_inverse=True)
    first = torch.full_like(values, key.numel()).scatter_reduce(
        0, inverse, torch.arange(key.numel(), device=key.device), reduce="amin"
    )
    return values, first, inverse


def _window_samples(
    heat: Tensor,
    image: Tensor,
    joint: Tensor,
    rows: Tensor,
    cols: Tensor,
    row_lo: Tensor,
    col_lo: Tensor,
    grid: tuple[int, int],
) -> Tensor:
    """The fit's samples of each window ``F[row_lo : row_lo + rows, col_lo : col_lo + cols]``, float64.

    The authors' xdata pairs the window's row-major value ``f`` with the coordinates ``(a, b) =
    (f // rows, f % rows)``: right for square windows only. Every window is then a ``cols x rows`` grid of
    ``(a, b)`` samples, laid out on a ``grid`` (Ga, Gb) one with zeros outside.

    Args:
        heat: Tensor[B, K, H, W] keypoint heatmaps; the others Tensor[M], one entry per window.

    Returns:
        Tensor[M, Ga, Gb].
    """
    h, w = heat.shape[-2:]
    a = torch.arange(grid[0], device=heat.device).view(1, -1, 1)
    b = torch.arange(grid[1], device=heat.device).view(1, 1, -1)
    f = a * rows.view(-1, 1, 1) + b  # value index of each (a, b)
    inside = (a < cols.view(-1, 1, 1)) & (b < rows.view(-1, 1, 1))
    wr = f // cols.view(-1, 1, 1) + row_lo.view(-1, 1, 1)
    wc = f % cols.view(-1, 1, 1) + col_lo.view(-1, 1, 1)
    # Four-index gathers: no flattened copy of a (non-contiguous) batch of maps.
    values = heat[image.view(-1, 1, 1), joint.view(-1, 1, 1), wr.clamp(0, h - 1), wc.clamp(0, w - 1)]
    return torch.where(inside, values, 0.0).double()


def plausible_fits(params: Tensor, peak: Tensor, max_gain: float) -> Tensor:
    """Fits whose peak lies on the 13x13 sample grid (one pixel of slack) and whose amplitude is at most
    ``max_gain`` times the window's highest sample.

    On near-flat windows (blank images) the authors' fit can converge to a far-away, enormous Gaussian
    (amplitudes of 1e10 were seen), which lets a pose on an all-black image outscore every real person.
    A rejected fit leaves its joint as it was, as a failed fit does. Off by default
    (``DecodeConfig.refine_max_gain``): the authors keep every converged fit, and parity needs that.

    Args:
        params: Tensor[M, 4] fitted ``(A, y0, x0, sigma)`` in window coordinates.
        peak: Tensor[M] the highest sample of each window.
        max_gain: the largest accepted ratio of amplitude to ``peak``.
    """
    amp, centre = params[:, 0], params[:, 1:3]
    on_grid = ((centre >= -1) & (centre <= _FIT_GRID)).all(1)
    return on_grid & (amp <= max_gain * peak.clamp(min=0)) & torch.isfinite(params).all(1)


def _refine(
    fused: Tensor, sizes: Tensor, joints: Tensor, scores: Tensor, center: Tensor, valid: Tensor, cfg: DecodeConfig
) -> tuple[Tensor, Tensor]:
    """Gaussian-fit refinement of every joint scoring above ``adjust_threshold`` (SPEC §4.4)."""
    b, k, h, w = fused.shape
    hb, wb = sizes[:, 0].view(b, 1, 1), sizes[:, 1].view(b, 1, 1)
    r = torch.trunc(joints[..., 1] + 0.5).long()  # (B, P, K)
    c = torch.trunc(joints[..., 0] + 0.5).long()
    todo = valid.unsqueeze(-1) & (scores > cfg.adjust_threshold)
    todo &= (r != 0) & (r != hb - 1) & (c != 0) & (c != wb - 1)
    todo &= (r >= -hb) & (r < hb) & (c >= -wb) & (c < wb)  # else the authors' code raises and skips
    # Window F[r_lo:r_stop, c_lo:c_stop] with Python slice semantics (a negative stop counts from the end).
    r_lo, r_stop = (r - 6).clamp(min=0), torch.minimum(hb - 1, r + 6) + 1
    c_lo, c_stop = (c - 6).clamp(min=0), torch.minimum(wb - 1, c + 6) + 1
    r_stop = torch.where(r_stop < 0, r_stop + hb, r_stop)
    c_stop = torch.where(c_stop < 0, c_stop + wb, c_stop)
    rows, cols = r_stop - r_lo, c_stop - c_lo
    todo &= (rows > 0) & (cols > 0) & (rows * cols >= 4)  # curve_fit raises with fewer samples than parameters
    sel = todo.nonzero(as_tuple=True)
    if sel[0].numel() == 0:  # nonzero() syncs once; every later shape depends on it
        return joints, scores
    # A fit depends only on (image, joint type, rounded position): fit each distinct window once, as the
    # authors' per-joint cache does, and share the result.
    key = ((sel[0] * k + sel[2]) * (2 * h) + r[sel] + h) * (2 * w) + c[sel] + w
    _, first, inverse = _unique_first(key)
    one = tuple(idx[first] for idx in sel)
    bi, ki = one[0], one[2]
    rows_s, cols_s, rlo_s, clo_s = rows[one], cols[one], r_lo[one], c_lo[one]
    rr, cc = r[one] % hb.view(-1)[bi], c[one] % wb.view(-1)[bi]  # negative indices wrap, as in torch
    start = torch.stack(
        [
            fused[bi, ki, rr, cc].double(),
            (r[one] - rlo_s).double(),
            (c[one] - clo_s).double(),
            torch.full_like(rows_s, 2, dtype=torch.float64),
        ],
        dim=1,
    )
    extent = torch.stack([cols_s, rows_s], 1)  # (a, b) grid of each window, see _window_samples
    wide = (extent > _FIT_GRID).any(1)  # only windows whose stop wrapped around (joints far outside the map)
    if not bool(wide.any()):
        data = _window_samples(fused[:, :k], bi, ki, rows_s, cols_s, rlo_s, clo_s, (_FIT_GRID, _FIT_GRID))
        params, ok = fit_gaussians(data, extent, start)
        peak = data.flatten(1).amax(1)
    else:
        params, ok = torch.empty_like(start), torch.empty_like(wide)
        peak = torch.empty_like(start[:, 0])
        for part in (~wide, wide):
            idx = part.nonzero().squeeze(1)
            if idx.numel():
                grid = (int(cols_s[idx].max().clamp(min=_FIT_GRID)), int(rows_s[idx].max().clamp(min=_FIT_GRID)))
                data = _window_samples(
                    fused[:, :k], bi[idx], ki[idx], rows_s[idx], cols_s[idx], rlo_s[idx], clo_s[idx], grid
                )
                params[idx], ok[idx] = fit_gaussians(data, extent[idx], start[idx])
                peak[idx] = data.flatten(1).amax(1)
    if cfg.refine_max_gain is not None:
        ok &= plausible_fits(params, peak, cfg.refine_max_gain)
    params, ok = params[inverse], ok[inverse]
    rlo_s, clo_s = r_lo[sel], c_lo[sel]
    amp, y0, x0 = params[:, 0], params[:, 1], params[:, 2]
    new_xy = torch.stack([(clo_s.double() + x0), (rlo_s.double() + y0)], -1).to(joints.dtype)
    new_score = (amp * center.unsqueeze(-1).expand(-1, -1, k)[sel].double()).to(scores.dtype)
    joints = joints.clone()
    scores = scores.clone()
    joints[sel] = torch.where(ok.unsqueeze(-1), new_xy, joints[sel])
    scores[sel] = torch.where(ok, new_score, scores[sel])
    return joints, scores


def group_poses(
    heatmaps: list[Tensor],
    keypoints: list[Tensor],
    fused: Tensor,
    scales: list[float],
    cfg: DecodeConfig,
    base_sizes: Tensor | None = None,
    map_sizes: list[Tensor] | None = None,
) -> Poses:
    """Group one batch's network outputs into poses in scale-1 input pixels.

    Args:
        heatmaps: per scale, Tensor[B, K + 1, h_s, w_s] flip-aggregated heatmaps (center last).
        keypoints: per scale, Tensor[B, 2K, h_s, w_s] absolute joint positions in map pixels.
        fused: Tensor[B, K + 1, H, W] heatmaps fused at the scale-1 input resolution.
        scales: the scale of each entry, in processing order; must contain 1.0.
        cfg: thresholds.
        base_sizes: Tensor[B, 2] valid (H, W) of ``fused`` per image (default: its full size).
        map_sizes: per scale, Tensor[B, 2] valid (h_s, w_s) (default: the full map sizes).

    Returns:
        :class:`Poses` with ``P <= cfg.max_people``.
    """
    b, kp1, h, w = fused.shape
    k = kp1 - 1
    dev = fused.device
    padded = base_sizes is not None
    if base_sizes is None:
        base_sizes = torch.tensor([[h, w]], device=dev).expand(b, 2)
    if map_sizes is None:
        map_sizes = [torch.tensor([list(x.shape[-2:])], device=dev).expand(b, 2) for x in heatmaps]
    pos, score, ok = _center_candidates(heatmaps, keypoints, map_sizes, scales, base_sizes, cfg)
    order, valid = _pose_nms(pos, score, ok, cfg)
    p = order.shape[1]
    joints = torch.gather(pos, 1, order.view(b, p, 1, 1).expand(-1, -1, k, 2))  # (B, P, K, 2)
    center = torch.gather(score, 1, order) * valid  # (B, P)
    if cfg.absorb:
        joint_scores = center.unsqueeze(-1).expand(-1, -1, k)
        joints, joint_scores = _absorb(fused[:, :k], base_sizes, joints, joint_scores, cfg, padded)
        if cfg.refine:
            joints, joint_scores = _refine(fused, base_sizes, joints, joint_scores, center, valid, cfg)
    else:
        joint_scores = center.unsqueeze(-1) * _bilinear_trunc(fused[:, :k], joints, base_sizes)
    joint_scores = joint_scores * valid.unsqueeze(-1)
    kpts = torch.cat([joints, joint_scores.unsqueeze(-1)], -1)
    return Poses(kpts, joint_scores.mean(-1), center, valid)
