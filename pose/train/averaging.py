"""Weight averaging over a run's last epochs (SWA-style), then fresh batch-norm statistics.

Late in a run Adam tends to circle a flat basin instead of settling in it; the uniform mean of the weights
saved at the ends of those epochs sits nearer the basin's centre and generalizes better than any one of
them (Izmailov et al., "Averaging Weights Leads to Wider Optima", 2018). Batch-norm statistics do not
average: the mean of running variances is not the variance of the averaged network's activations, so
they are measured again on training images.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader

from pose.checkpoint import CheckpointError, load_state_dict_file

__all__ = ["average_state_dicts", "average_checkpoints", "recalibrate_batchnorm", "training_images"]


def average_state_dicts(states: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Uniform mean of floating-point tensors, in float64 so the order of files does not matter.

    Integer buffers (batch-norm ``num_batches_tracked``) are counters, not weights: the last state's are
    kept. Every state must hold the same names with the same shapes.
    """
    if not states:
        raise ValueError("nothing to average: no states given")
    first = states[0]
    for index, state in enumerate(states[1:], start=1):
        if state.keys() != first.keys():
            differ = sorted(state.keys() ^ first.keys())
            raise CheckpointError(f"state {index} does not hold the same tensors as state 0: {differ[:8]}")
        for name, tensor in state.items():
            if tensor.shape != first[name].shape:
                raise CheckpointError(
                    f"{name}: shape {tuple(tensor.shape)} in state {index}, {tuple(first[name].shape)} in state 0"
                )
    averaged: dict[str, Tensor] = {}
    for name, tensor in first.items():
        if tensor.is_floating_point():
            total = torch.stack([state[name].to(torch.float64) for state in states]).mean(0)
            averaged[name] = total.to(tensor.dtype)
        else:
            averaged[name] = states[-1][name].clone()
    return averaged


def average_checkpoints(paths: Sequence[str | Path]) -> dict[str, Tensor]:
    """Average checkpoint files (ours or the authors' layout) into one ``state_dict``."""
    return average_state_dicts([load_state_dict_file(path) for path in paths])


def training_images(loader: DataLoader, batches: int) -> Iterable[Tensor]:
    """The first ``batches`` image tensors ``(B, 3, H, W)`` of a :class:`KeypointDataset` loader."""
    for index, batch in enumerate(loader):
        if index >= batches:
            return
        yield batch["image"]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: Iterable[Tensor], device: torch.device | str = "cpu") -> int:
    """Measure every batch-norm layer's running mean and variance again, as plain averages over ``images``.

    Returns the number of images seen. ``torch.optim.swa_utils.update_bn`` does the measuring: it resets
    the statistics and sets momentum to ``None`` (a cumulative mean) for the pass, then restores both
    the momenta and the model's train/eval mode.
    """
    batches = iter(images)
    first = next(batches, None)
    if first is None:  # checked before update_bn resets the statistics
        raise ValueError("no images to measure batch-norm statistics on")
    seen = 0

    def counted() -> Iterable[Tensor]:
        nonlocal seen
        for batch in itertools.chain([first], batches):
            seen += batch.shape[0]
            yield batch

    update_bn(counted(), model, device=torch.device(device))
    return seen
