"""The pose tracker on hand-made poses: identities, births and deaths, matching modes and smoothing."""

from __future__ import annotations

import pytest
import torch

from pose.pipeline import PoseResult
from pose.tracking import OneEuroState, PoseTracker, TrackerConfig, box_iou, one_euro, pose_oks

K = 17
SIGMAS = [0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062]
SIGMAS += [0.107, 0.107, 0.087, 0.087, 0.089, 0.089]

# a rough standing figure 100 px tall, joints relative to its top-left corner
_SHAPE = torch.tensor(
    [[20, 5], [18, 3], [22, 3], [15, 5], [25, 5], [10, 20], [30, 20], [8, 35], [32, 35], [6, 50], [34, 50],
     [13, 55], [27, 55], [13, 75], [27, 75], [13, 98], [27, 98]],
    dtype=torch.float32,
)  # fmt: skip


def _pose(x: float, y: float, score: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    joints = _SHAPE + torch.tensor([x, y])
    kp = torch.cat([joints, torch.full((K, 1), score)], dim=1)
    lo, hi = joints.min(0).values, joints.max(0).values
    return kp, torch.cat([lo, hi - lo])


def _frame(*positions: tuple[float, float]) -> PoseResult:
    if not positions:
        empty = torch.zeros(0, K, 3)
        return PoseResult(empty, empty, torch.zeros(0), torch.zeros(0), torch.zeros(0), torch.zeros(0, 4))
    kps, boxes = zip(*(_pose(x, y) for x, y in positions), strict=True)
    kp = torch.stack(kps)
    scores = torch.full((len(positions),), 0.8)
    return PoseResult(kp, kp, scores, scores, scores, torch.stack(boxes))


def test_ids_start_at_one_and_follow_people_in_input_order() -> None:
    tracker = PoseTracker(sigmas=SIGMAS)
    first = tracker.update(_frame((0, 0), (300, 0)), 0.0)
    assert first.track_ids.tolist() == [1, 2]
    # the same two people, a little further, listed the other way round
    second = tracker.update(_frame((305, 2), (4, 1)), 0.04)
    assert second.track_ids.tolist() == [2, 1]
    assert torch.equal(second.keypoints, _frame((305, 2), (4, 1)).keypoints)


def test_people_crossing_keep_their_ids() -> None:
    tracker = PoseTracker(TrackerConfig(patience=10), sigmas=SIGMAS)
    ids_left, ids_right = set(), set()
    for t in range(60):
        a, b = 10.0 + 8 * t, 490.0 - 8 * t  # walk towards each other and past
        # while the two overlap, the one behind is hidden: only one pose is detected
        positions = [(a, 0.0)] if abs(a - b) < 40 else [(a, 0.0), (b, 0.0)]
        tracked = tracker.update(_frame(*positions), t / 25)
        ids_left.add(int(tracked.track_ids[0]))
        if len(positions) == 2:
            ids_right.add(int(tracked.track_ids[1]))
    assert ids_left == {1}
    assert ids_right == {2}


def test_track_survives_its_patience_and_dies_after() -> None:
    tracker = PoseTracker(TrackerConfig(patience=3, motion=False), sigmas=SIGMAS)
    assert tracker.update(_frame((0, 0)), 0.0).track_ids.tolist() == [1]
    for t in range(1, 4):  # unmatched for 3 frames: still alive
        assert len(tracker.update(_frame(), t)) == 0
    assert tracker.update(_frame((0, 0)), 4).track_ids.tolist() == [1]
    for t in range(5, 9):  # unmatched for 4 frames: dead
        tracker.update(_frame(), t)
    assert tracker.num_tracks == 0
    assert tracker.update(_frame((0, 0)), 9).track_ids.tolist() == [2]


def test_ids_are_not_reused_after_reset() -> None:
    tracker = PoseTracker(sigmas=SIGMAS)
    tracker.update(_frame((0, 0), (200, 0)), 0.0)
    tracker.reset()
    assert tracker.num_tracks == 0
    assert tracker.update(_frame((0, 0)), 0.0).track_ids.tolist() == [3]


def test_a_far_pose_starts_a_new_track_instead_of_stealing_one() -> None:
    tracker = PoseTracker(TrackerConfig(motion=False), sigmas=SIGMAS)
    tracker.update(_frame((0, 0)), 0.0)
    assert tracker.update(_frame((400, 300)), 0.04).track_ids.tolist() == [2]


@pytest.mark.parametrize("match", ["oks", "iou"])
def test_both_matching_modes_follow_a_walking_person(match: str) -> None:
    tracker = PoseTracker(TrackerConfig(match=match), sigmas=SIGMAS)  # type: ignore[arg-type]
    ids = [tracker.update(_frame((6.0 * t, 0), (300, 100 - 5.0 * t)), t / 25).track_ids.tolist() for t in range(30)]
    assert all(i == [1, 2] for i in ids)


def test_smoothing_off_returns_raw_keypoints_and_on_removes_jitter() -> None:
    g = torch.Generator().manual_seed(0)
    raw_tracker = PoseTracker(sigmas=SIGMAS)
    smooth_tracker = PoseTracker(TrackerConfig(smoothing=True, min_cutoff=0.5, beta=0.0), sigmas=SIGMAS)
    truth = _frame((100, 100)).keypoints[..., :2]
    raw_err, smooth_err = [], []
    for t in range(100):
        frame = _frame((100, 100))
        frame.keypoints[..., :2] += torch.randn(1, K, 2, generator=g) * 2.0  # 2 px jitter on a still person
        raw = raw_tracker.update(frame, t / 30)
        smooth = smooth_tracker.update(frame, t / 30)
        assert torch.equal(raw.keypoints, frame.keypoints)
        assert torch.equal(smooth.keypoints[..., 2], frame.keypoints[..., 2])  # scores are never filtered
        if t >= 20:
            raw_err.append((raw.keypoints[..., :2] - truth).norm(dim=-1).mean())
            smooth_err.append((smooth.keypoints[..., :2] - truth).norm(dim=-1).mean())
    assert torch.stack(smooth_err).mean() < 0.5 * torch.stack(raw_err).mean()


def test_one_euro_follows_a_moving_signal_with_speed_adaptation() -> None:
    """With beta > 0 the cutoff rises with speed, so a ramp is followed with less lag than without."""
    times = torch.arange(60, dtype=torch.float64) / 30

    def lag(beta: float) -> float:
        state = OneEuroState(torch.zeros(1, 1), torch.zeros(1, 1), times[:1].clone())
        for t in times[1:]:
            state = one_euro(state, torch.full((1, 1), 100.0 * float(t)), t.view(1), 1.0, beta, 1.0)
        return 100.0 * float(times[-1]) - float(state.value)

    assert 0 < lag(0.1) < 0.5 * lag(0.0)


def test_oks_and_iou_of_identical_poses_are_one() -> None:
    kp, box = _pose(10, 20)
    areas = box[2:].prod().view(1)
    assert pose_oks(kp[None], kp[None], areas, torch.tensor(SIGMAS)).item() == pytest.approx(1.0)
    assert box_iou(box[None], box[None]).item() == pytest.approx(1.0)
    far, far_box = _pose(500, 20)
    assert pose_oks(kp[None], far[None], areas, torch.tensor(SIGMAS)).item() < 1e-6
    assert box_iou(box[None], far_box[None]).item() == 0.0


def test_joints_below_the_score_are_left_out_of_oks() -> None:
    kp, box = _pose(0, 0)
    moved = kp.clone()
    moved[:5, :2] += 50  # the head is far off, but with a score nobody trusts
    moved[:5, 2] = 0.01
    oks = pose_oks(kp[None], moved[None], box[2:].prod().view(1), torch.tensor(SIGMAS), min_joint_score=0.1)
    assert oks.item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"match": "box"}, "match"),
        ({"min_similarity": 1.5}, "min_similarity"),
        ({"patience": -1}, "patience"),
        ({"min_cutoff": 0.0}, "min_cutoff"),
    ],
)
def test_bad_config_is_refused_by_name(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrackerConfig(**kwargs)


def test_frames_out_of_time_order_are_refused() -> None:
    tracker = PoseTracker(sigmas=SIGMAS)
    tracker.update(_frame((0, 0)), 1.0)
    with pytest.raises(ValueError, match="time order"):
        tracker.update(_frame((0, 0)), 0.5)


def test_update_batch_equals_frame_by_frame_updates() -> None:
    frames = [_frame((5.0 * t, 0), (200, 3.0 * t)) for t in range(10)]
    times = [t / 25 for t in range(10)]
    batch = PoseTracker(sigmas=SIGMAS).update_batch(frames, times)
    single = PoseTracker(sigmas=SIGMAS)
    for f, t, b in zip(frames, times, batch, strict=True):
        assert torch.equal(single.update(f, t).track_ids, b.track_ids)
