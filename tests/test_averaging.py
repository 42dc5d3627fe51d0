"""Weight averaging: the mean of checkpoints, batch-norm statistics measured again, and the CLI that chains
them over the per-epoch weights a training run keeps.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from pose.checkpoint import CheckpointError, load_state_dict_file, load_weights
from pose.cli import app as cli
from pose.config import load_model_config
from pose.data.synthetic import SceneConfig, write_dataset
from pose.models.hrnet import create_model
from pose.train.averaging import average_state_dicts, recalibrate_batchnorm
from pose.train.config import load_train_config
from pose.train.loop import epoch_weights_path, train

from .conftest import FIXTURES

TINY = FIXTURES / "tiny_train_w8_128.yaml"


def test_average_is_the_elementwise_mean_and_keeps_the_last_counters() -> None:
    states = [
        {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)},
        {"w": torch.tensor([2.0, 4.0]), "n": torch.tensor(5)},
        {"w": torch.tensor([6.0, 0.0]), "n": torch.tensor(9)},
    ]
    averaged = average_state_dicts(states)
    assert averaged["w"].tolist() == [3.0, 2.0]  # (1+2+6)/3, (2+4+0)/3
    assert averaged["w"].dtype == torch.float32
    assert averaged["n"].item() == 9


def test_average_refuses_states_that_do_not_match() -> None:
    with pytest.raises(CheckpointError, match="same tensors"):
        average_state_dicts([{"a": torch.zeros(2)}, {"b": torch.zeros(2)}])
    with pytest.raises(CheckpointError, match=r"a: shape \(3,\) in state 1, \(2,\) in state 0"):
        average_state_dicts([{"a": torch.zeros(2)}, {"a": torch.zeros(3)}])
    with pytest.raises(ValueError, match="nothing to average"):
        average_state_dicts([])


def test_batchnorm_statistics_are_the_mean_of_the_batches_statistics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3)).eval()
    batches = [torch.randn(4, 3, 5, 5) * s + m for s, m in ((1.0, 2.0), (3.0, -1.0), (0.5, 0.0))]
    assert recalibrate_batchnorm(model, batches) == 12
    bn = model[0]
    # by hand: per-channel mean and unbiased variance of each batch, averaged over batches
    means = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    variances = torch.stack([b.transpose(0, 1).reshape(3, -1).var(dim=1) for b in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, means)
    torch.testing.assert_close(bn.running_var, variances)
    assert not model.training and bn.momentum == 0.1  # mode and momentum come back


def test_no_images_leaves_the_statistics_alone() -> None:
    bn = nn.BatchNorm1d(2)
    bn.load_state_dict({**bn.state_dict(), "running_mean": torch.full((2,), 7.0)})
    with pytest.raises(ValueError, match="no images"):
        recalibrate_batchnorm(bn, [])
    assert torch.equal(bn.state_dict()["running_mean"], torch.full((2,), 7.0))


@pytest.mark.slow
def test_a_run_keeps_its_epochs_and_the_cli_averages_them(tmp_path: Path) -> None:
    write_dataset(tmp_path / "train", 8, seed=1, config=SceneConfig(size=(128, 128), people=(1, 2)), negatives=3)
    annotations, images = str(tmp_path / "train" / "annotations.json"), str(tmp_path / "train" / "images")
    run = {
        "model": str(TINY),
        "train_annotations": annotations,
        "train_images": images,
        "output": str(tmp_path / "run"),
        "epochs": 2,
        "milestones": [],
        "batch_size": 4,
        "workers": 0,
        "keep_epoch_weights": True,
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    out = train(load_train_config(tmp_path / "run.yaml"), device="cpu", progress=False).output
    kept = [epoch_weights_path(out, epoch) for epoch in (1, 2)]
    first, last = (load_state_dict_file(path) for path in kept)
    for name, tensor in load_state_dict_file(out / "model.pth").items():
        assert torch.equal(last[name], tensor), name  # the last epoch's file is the run's model.pth

    averaged = tmp_path / "averaged.pth"
    args = ["average-weights", *map(str, kept), "--model", str(TINY), "--out", str(averaged)]
    bn_args = ["--bn-annotations", annotations, "--bn-images", images, "--bn-batches", "2"]
    result = CliRunner().invoke(cli, args + bn_args)
    assert result.exit_code == 0, result.output
    assert "measured on 8 training images" in result.output  # the scenes; images with nobody are left out
    with_empty = CliRunner().invoke(cli, [*args, *bn_args, "--bn-keep-empty"])
    assert with_empty.exit_code == 0 and "measured on 11 training images" in with_empty.output

    model = load_weights(create_model(load_model_config(TINY)), averaged)  # loads strictly
    state = model.state_dict()
    statistics = [name for name in state if name.endswith(("running_mean", "running_var"))]
    weights = [name for name, tensor in first.items() if tensor.is_floating_point() and name not in statistics]
    changed = [name for name in weights if not torch.equal(first[name], last[name])]
    assert changed
    for name in changed:
        torch.testing.assert_close(state[name], (first[name] + last[name]) / 2)
    stale = [name for name in statistics if torch.allclose(state[name], (first[name] + last[name]) / 2)]
    assert not stale  # measured again, not averaged

    mixed = CliRunner().invoke(cli, [*args, "--bn-images", images])
    assert mixed.exit_code != 0 and "go together" in mixed.output
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    wrong = CliRunner().invoke(cli, ["average-weights", str(kept[0]), str(other), "--model", str(TINY), "--out", "x"])
    assert wrong.exit_code != 0 and "same tensors" in wrong.output
