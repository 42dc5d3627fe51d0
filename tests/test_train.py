"""Training: run config, the authors' init, ablation switches, scoring-net data and fit, resume, DDP, and a
CI-sized run on synthetic figures that must lower the loss and find people on held-out images.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pose.config import load_model_config
from pose.data.synthetic import SceneConfig, write_dataset
from pose.models.hrnet import AdaptiveBlock, PlainBlock, create_model
from pose.ops.adaptive_conv import AdaptiveConv2d
from pose.rescore import load_scoring_net
from pose.train.config import load_train_config
from pose.train.init import init_weights
from pose.train.loop import train
from pose.train.rescore import keypoint_oks, train_scoring_net

from .conftest import FIXTURES, ROOT

TINY = FIXTURES / "tiny_train_w8_128.yaml"
EASY = SceneConfig(
    size=(128, 128), people=(1, 1), height=(0.7, 0.9), occluder_prob=0.0, wide_rotation_prob=0.0, clutter=(0, 2)
)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_dataset(root / "train", 64, seed=1, config=EASY)
    write_dataset(root / "val", 12, seed=2, config=EASY)
    return root


def run_config(tmp_path: Path, data: Path, **overrides) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = {
        "model": str(TINY),
        "train_annotations": str(data / "train" / "annotations.json"),
        "train_images": str(data / "train" / "images"),
        "output": str(tmp_path / "run"),
        "epochs": 1,
        "milestones": [],
        "batch_size": 4,
        "workers": 0,
        "log_every": 1,
        **overrides,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def losses(run: Path) -> list[float]:
    with (run / "log.csv").open() as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def test_run_config_resolves_paths_relative_to_its_file_and_takes_overrides(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "run.yaml"
    path.write_text("model: m.yaml\ntrain_annotations: ../a.json\ntrain_images: imgs\noutput: out\n")
    cfg = load_train_config(path, {"epochs": 3})
    assert cfg.model == tmp_path / "cfg" / "m.yaml" and cfg.train_annotations == tmp_path / "a.json"
    assert cfg.epochs == 3 and cfg.lr == 1e-3 and cfg.milestones == [90, 120] and cfg.bg_weight == 0.1
    assert cfg.min_center_area is None  # the dataset flavour's rule
    assert load_train_config(path, {"min_center_area": 0}).min_center_area == 0
    with pytest.raises(ValueError, match="go together"):
        load_train_config(path, {"val_annotations": "v.json"})


def test_init_follows_the_authors() -> None:
    model = create_model(load_model_config(TINY))
    init_weights(model)
    convs = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and "transform_matrix" not in n]
    weights = torch.cat([c.weight.flatten() for c in convs])
    assert abs(weights.std().item() - 0.001) < 1e-4
    for name, m in model.named_modules():
        if "transform_matrix_conv" in name:
            assert not m.weight.any() and not m.bias.any()  # identity sampling grid at the start
        if isinstance(m, torch.nn.BatchNorm2d):
            assert bool((m.weight == 1).all()) and not m.bias.any()
        if isinstance(m, AdaptiveConv2d):
            bound = 1 / math.sqrt(9 * m.weight.shape[1])
            assert m.weight.abs().max() <= bound and m.weight.std() > bound / 4


def test_ablation_switches_change_the_heads() -> None:
    cfg = load_model_config(TINY)
    arch = cfg.architecture
    full = create_model(cfg)
    plain = create_model(cfg.model_copy(update={"architecture": arch.model_copy(update={"adaptive_blocks": False})}))
    unguided = create_model(
        cfg.model_copy(update={"architecture": arch.model_copy(update={"heatmap_guidance": False})})
    )
    assert any(isinstance(m, AdaptiveBlock) for m in full.modules())
    assert not any(isinstance(m, AdaptiveBlock | AdaptiveConv2d) for m in plain.modules())
    assert any(isinstance(m, PlainBlock) for m in plain.modules())
    features = sum(arch.stage4.channels)
    assert full.transition_reg[0].in_channels == features + 17
    assert unguided.transition_reg[0].in_channels == features
    x = torch.randn(1, 3, 128, 128)
    for model in (full, plain, unguided):
        out = model.eval()(x)
        assert out.heatmaps.shape == (1, 18, 32, 32) and out.offsets.shape == (1, 34, 32, 32)
    # without guidance the regression output does not depend on the heatmap head
    unguided.final_layers[0].weight.data.add_(1.0)
    before = unguided(x).offsets
    unguided.final_layers[0].weight.data.add_(1.0)
    assert torch.equal(before, unguided(x).offsets)


def test_oks_matches_the_coco_formula_by_hand() -> None:
    sigmas = np.full(17, 0.1)
    gt = np.zeros((1, 17, 3))
    gt[0, 0] = [10, 10, 2]
    gt[0, 1] = [20, 20, 1]  # joints 2.. unlabeled: ignored
    pred = np.zeros((2, 17, 2))
    pred[0, 0], pred[0, 1] = [13, 14], [20, 20]  # distance 5 and 0
    pred[1, 0], pred[1, 1] = [10, 10], [20, 20]
    area = 400.0
    expected = (math.exp(-25 / (2 * area * 0.2**2)) + 1) / 2
    oks = keypoint_oks(pred, gt, np.array([area]), sigmas)
    assert oks.shape == (2, 1)
    assert oks[0, 0] == pytest.approx(expected, rel=1e-9) and oks[1, 0] == pytest.approx(1.0)
    assert keypoint_oks(pred, np.zeros((1, 17, 3)), np.array([area]), sigmas)[0, 0] == 0.0


def test_scoring_net_learns_oks_and_saves_in_the_loadable_format(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(3000, 74, generator=g)
    targets = torch.sigmoid(features[:, :5].sum(1))  # a smooth function of the features
    net, history = train_scoring_net(features, targets, epochs=20, batch_size=256)
    assert history[-1] < history[0] / 5
    torch.save(net.state_dict(), tmp_path / "rescore.pth")
    loaded = load_scoring_net(tmp_path / "rescore.pth", 74)
    torch.testing.assert_close(loaded(features[:10]), net(features[:10]))


@pytest.mark.long  # 640 steps: minutes on 2 cores; a CI step of its own (.ci/run), not in the default run
def test_six_hundred_steps_lower_the_loss_and_find_people(tmp_path: Path, synthetic: Path) -> None:
    config = run_config(
        tmp_path,
        synthetic,
        epochs=40,
        milestones=[32],
        lr=2e-3,
        val_annotations=str(synthetic / "val" / "annotations.json"),
        val_images=str(synthetic / "val" / "images"),
    )
    result = train(load_train_config(config), device="cpu", progress=False)
    history = losses(result.output)
    assert len(history) == 40 * 16  # 64 images / batch 4, every step logged
    assert np.mean(history[-32:]) < 0.9 * np.mean(history[:32])
    assert result.metrics[39]["AP"] > 0.0  # the evaluator sees real detections on held-out images
    assert (result.output / "model.pth").is_file() and (result.output / "metrics.json").is_file()
    assert json.loads((result.output / "train_config.json").read_text())["epochs"] == 40
    from pose.api import PoseEstimator

    # torch: the subject is the trained checkpoint; an ONNX export of every run's weights would fill the cache
    est = PoseEstimator.from_config(TINY, weights=result.output / "model.pth", backend="torch")
    assert est.predict(np.zeros((128, 128, 3), np.uint8)).keypoints.shape[1:] == (17, 3)


def test_resume_continues_after_the_last_finished_epoch(tmp_path: Path, synthetic: Path) -> None:
    config = run_config(tmp_path, synthetic, epochs=1, steps_per_epoch=2)
    first = train(load_train_config(config), device="cpu", progress=False)
    state = torch.load(first.output / "last.pth", weights_only=False)
    assert state["epoch"] == 0 and state["global_step"] == 2
    extended = {"epochs": 3, "milestones": [1]}  # longer, and with a milestone the first run has passed
    resumed = train(load_train_config(config, extended), resume=True, device="cpu", progress=False)
    assert resumed.epochs_run == 2
    state = torch.load(first.output / "last.pth", weights_only=False)
    assert state["epoch"] == 2 and state["global_step"] == 6
    rows = list(csv.DictReader((first.output / "log.csv").open()))
    assert [int(r["global_step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [float(r["lr"]) for r in rows] == [1e-3] * 2 + [1e-4] * 4  # the new schedule's rate from epoch 1
    # an uninterrupted run of the same schedule sees the same samples in the same order: the same losses
    straight = run_config(tmp_path / "straight", synthetic, epochs=3, steps_per_epoch=2, milestones=[1])
    train(load_train_config(straight), device="cpu", progress=False)
    np.testing.assert_allclose(losses(tmp_path / "straight" / "run"), [float(r["loss"]) for r in rows], rtol=1e-5)


def test_torchrun_trains_with_two_processes(tmp_path: Path, synthetic: Path) -> None:
    config = run_config(tmp_path, synthetic, epochs=1, steps_per_epoch=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533"]
    result = subprocess.run(
        [*cmd, "-m", "pose", "train", str(config), "--device", "cpu"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / "run" / "last.pth", weights_only=False)
    assert state["global_step"] == 2  # each rank took 2 steps on its half of the data
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert float(rows[-1]["images_per_s"]) > 0 and len(rows) == 2  # only rank 0 writes


def test_higher_hrnet_trains_its_branches_and_2x_head(tmp_path: Path, synthetic: Path) -> None:
    raw = yaml.safe_load(TINY.read_text())
    raw["architecture"].update(type="higher_hrnet", deconv_channels=8)
    model_path = tmp_path / "tiny_higher.yaml"
    model_path.write_text(yaml.safe_dump(raw))
    config = run_config(tmp_path, synthetic, model=str(model_path), steps_per_epoch=6, lr=2e-3)
    torch.manual_seed(0)
    result = train(load_train_config(config), device="cpu", progress=False)
    history = losses(result.output)
    assert len(history) == 6 and all(math.isfinite(x) for x in history)
    state = torch.load(result.output / "model.pth", map_location="cpu", weights_only=False)
    weights = state.get("state_dict", state) if isinstance(state, dict) else state
    assert weights["final_layers.2.bias"].abs().sum() > 0  # the 2x head's bias starts at 0: it was trained
    from pose.api import PoseEstimator

    est = PoseEstimator.from_config(model_path, weights=result.output / "model.pth")
    assert est.predict(np.zeros((128, 128, 3), np.uint8)).keypoints.shape[1:] == (17, 3)
