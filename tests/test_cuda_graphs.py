"""Graph replay bookkeeping: buckets, padding by rows, the LRU under a memory budget (a CPU stand-in
records the graphs; the real CUDA recording runs in the GPU check)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from pose.models.hrnet import PoseOutput
from pose.runtimes.cuda_graphs import GraphedNetwork, bucket_for


def network(x: Tensor) -> PoseOutput:
    """Per-image outputs that depend on the whole image, so a mixed-up row shows."""
    per_image = x.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)
    return PoseOutput(x[:, :2] * 2 + per_image, x[:, 1:] - per_image)


@dataclass
class StandInGraph:
    """Replays by calling the network on the static input: what a CUDA graph does, on a CPU."""

    network: object
    inputs: Tensor
    outputs: PoseOutput
    nbytes: int

    def replay(self) -> None:
        fresh = self.network(self.inputs)  # type: ignore[operator]
        for static, new in zip(self.outputs, fresh, strict=True):
            if static is not None:
                static.copy_(new)


class Recorder:
    def __init__(self) -> None:
        self.recorded: list[tuple[int, ...]] = []

    def __call__(self, net: object, example: Tensor) -> StandInGraph:
        self.recorded.append(tuple(example.shape))
        inputs = example.clone()
        return StandInGraph(net, inputs, net(inputs), nbytes=int(example.numel()) * 4)  # type: ignore[operator]


def test_bucket_is_the_smallest_that_holds_the_batch() -> None:
    assert [bucket_for(n) for n in (1, 2, 3, 5, 32, 33, 64)] == [1, 2, 4, 8, 32, 64, 64]
    assert bucket_for(65) is None


def test_padded_batches_give_each_image_its_unbatched_result() -> None:
    recorder = Recorder()
    graphed = GraphedNetwork(network, memory_budget_bytes=1 << 30, capture=recorder)
    x = torch.rand(3, 3, 8, 12)
    got = graphed(x)
    assert recorder.recorded == [(4, 3, 8, 12)]  # padded by one row, not by pixels
    for i in range(3):
        alone = network(x[i : i + 1])
        assert torch.equal(got.heatmaps[i : i + 1], alone.heatmaps)
        assert torch.equal(got.offsets[i : i + 1], alone.offsets)
    again = graphed(torch.rand(4, 3, 8, 12))  # same bucket and shape: replayed, not recorded again
    assert recorder.recorded == [(4, 3, 8, 12)] and again.heatmaps.shape[0] == 4


def test_outputs_survive_the_next_replay() -> None:
    graphed = GraphedNetwork(network, memory_budget_bytes=1 << 30, capture=Recorder())
    first = graphed(torch.zeros(1, 3, 4, 4))
    graphed(torch.ones(1, 3, 4, 4))
    assert torch.equal(first.heatmaps, network(torch.zeros(1, 3, 4, 4)).heatmaps)


def test_least_recently_used_graph_is_dropped_at_the_budget() -> None:
    recorder = Recorder()
    one_graph = 1 * 3 * 8 * 8 * 4  # every graph below holds 192 floats
    graphed = GraphedNetwork(network, memory_budget_bytes=2 * one_graph, capture=recorder)
    graphed(torch.rand(1, 3, 8, 8))
    graphed(torch.rand(1, 3, 16, 4))
    graphed(torch.rand(1, 3, 8, 8))  # used again: now the 16x4 graph is the least recently used
    graphed(torch.rand(1, 3, 4, 16))  # the budget is full: 16x4 goes
    assert list(graphed.graphs) == [(1, 8, 8), (1, 4, 16)]
    assert graphed.evictions == 1
    assert graphed.memory_bytes <= 2 * one_graph
    assert len(recorder.recorded) == 3


def test_budget_holds_after_a_larger_graph_and_the_newest_graph_always_stays() -> None:
    recorder = Recorder()
    small = 1 * 3 * 4 * 4 * 4
    graphed = GraphedNetwork(network, memory_budget_bytes=3 * small, capture=recorder)
    for width in (4, 8, 12):  # 4x4 = one small graph, 4x8 = two, 4x12 = three
        graphed(torch.rand(1, 3, 4, width))
        assert graphed.memory_bytes <= 3 * small
    # 4x8 pushed the 4x4 graph out, and 4x12 (the whole budget) pushed out 4x8.
    assert list(graphed.graphs) == [(1, 4, 12)] and graphed.evictions == 2
    graphed(torch.rand(1, 3, 4, 16))  # larger than the budget: recorded and kept alone
    assert list(graphed.graphs) == [(1, 4, 16)] and graphed.evictions == 3


def test_batches_beyond_the_largest_bucket_run_eagerly() -> None:
    recorder = Recorder()
    graphed = GraphedNetwork(network, memory_budget_bytes=1 << 30, buckets=(1, 2), capture=recorder)
    x = torch.rand(3, 3, 4, 4)
    assert torch.equal(graphed(x).heatmaps, network(x).heatmaps)
    assert recorder.recorded == []


def test_recorded_input_keeps_the_channels_last_layout() -> None:
    recorder = Recorder()
    graphed = GraphedNetwork(network, memory_budget_bytes=1 << 30, capture=recorder)
    graphed(torch.rand(3, 3, 8, 12).to(memory_format=torch.channels_last))
    (graph,) = graphed.graphs.values()
    assert graph.inputs.shape == (4, 3, 8, 12)
    assert graph.inputs.is_contiguous(memory_format=torch.channels_last) and not graph.inputs.is_contiguous()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_cuda_graph_replays_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    from pose.config import load_model_config

    # Full float32: with TensorFloat-32 (cuDNN's default), batches of 3 and 4 may take different
    # algorithms whose roundings differ by more than the tolerance.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    from pose.models.hrnet import create_model

    from .conftest import FIXTURES

    model = create_model(load_model_config(FIXTURES / "tiny_coco_w8_256.yaml")).cuda().eval()
    graphed = GraphedNetwork(model, memory_budget_bytes=1 << 30)
    x = torch.rand(3, 3, 128, 192, device="cuda")
    with torch.inference_mode():
        want = model(x)
        got = graphed(x)
    torch.testing.assert_close(got.heatmaps, want.heatmaps, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.offsets, want.offsets, atol=1e-3, rtol=1e-4)
