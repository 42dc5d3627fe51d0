"""Checkpoint loading: the authors' files as they are, ours, and one clear error for each bad case."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pose.checkpoint import CheckpointError, load_weights, save_checkpoint
from pose.config import load_model_config
from pose.models.hrnet import create_model

from .conftest import FIXTURES, ROOT


@pytest.fixture(scope="module")
def tiny():
    return create_model(load_model_config(FIXTURES / "tiny_coco_w8_256.yaml"))


def test_our_checkpoint_round_trips_with_a_ddp_prefix(tmp_path: Path, tiny) -> None:
    torch.manual_seed(1)
    for p in tiny.parameters():
        p.data.normal_()
    path = tmp_path / "ours.pth"
    save_checkpoint(tiny, path, "tiny")
    fresh = create_model(load_model_config(FIXTURES / "tiny_coco_w8_256.yaml"))
    load_weights(fresh, path)
    for (name, a), b in zip(tiny.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    ddp = tmp_path / "ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny.state_dict().items()}}, ddp)
    load_weights(fresh, ddp)


def test_truncated_file_is_reported_as_unreadable(tmp_path: Path, tiny) -> None:
    path = tmp_path / "full.pth"
    torch.save(tiny.state_dict(), path)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*cut.pth: truncated"):
        load_weights(tiny, cut)


def test_checkpoint_of_another_architecture_lists_the_mismatched_shapes(tmp_path: Path, tiny) -> None:
    other = create_model(load_model_config(FIXTURES / "tiny_crowdpose_w8_256.yaml"))
    path = tmp_path / "crowd.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(
        CheckpointError,
        match=r"another shape .*final_layers\.0\.weight \(14, 16, 1, 1\) != \(17, 16, 1, 1\).*another architecture",
    ):
        load_weights(tiny, path)


def test_missing_key_is_named(tmp_path: Path, tiny) -> None:
    state = dict(tiny.state_dict())
    del state["transition_reg.1.running_var"]
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"1 missing keys: transition_reg\.1\.running_var"):
        load_weights(tiny, path)


def test_unequal_shared_weights_are_refused(tmp_path: Path, tiny) -> None:
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    state["multi_level_layers_4x_heatmap.2.0.stn_conv1.weight"] += 1
    path = tmp_path / "unshared.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="share their conv weights"):
        load_weights(tiny, path)


def test_missing_file_and_non_state_dict(tmp_path: Path, tiny) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(tiny, tmp_path / "nope.pth")
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="holds no state_dict"):
        load_weights(tiny, path)


def test_every_shipped_config_builds() -> None:
    for folder in sorted((ROOT / "model_repo").iterdir()):
        if (folder / "config.yaml").is_file():
            create_model(load_model_config(folder))
