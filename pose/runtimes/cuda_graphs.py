"""The network as replayed CUDA graphs: one per (batch bucket, input shape), kept in an LRU under a budget.

At batch 1 the W32 network issues about 6,000 kernel launches; the CPU, not the GPU, sets the pace
(29-44 ms eager against 7 ms as a graph on an H200). A graph is recorded once per input shape and batch
bucket and then replayed with one call. Batches are padded up to their bucket with extra *rows*, never
pixels: every image is computed alone (eval-mode norms do not mix the batch), so results equal the
unbatched ones. Shapes that warm-up did not record are recorded on first use; the least recently used
graphs are dropped when the memory budget is reached.
"""

from __future__ import annotations

import gc
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from pose.models.hrnet import PoseOutput

__all__ = ["BUCKETS", "CapturedGraph", "GraphedNetwork", "bucket_for", "capture_cuda_graph"]

log = logging.getLogger("pose.runtimes")

BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # network batches: a flip test runs 2B images, so 64 serves 32 requests

Network = Callable[[Tensor], PoseOutput]


class CapturedGraph(Protocol):
    """A recorded forward: write ``inputs``, ``replay()``, read ``outputs``."""

    inputs: Tensor
    outputs: PoseOutput
    nbytes: int  # device memory it holds

    def replay(self) -> None: ...


def bucket_for(n: int, buckets: Iterable[int] = BUCKETS) -> int | None:
    """The smallest bucket that holds ``n`` rows; None when none does (the batch runs eagerly)."""
    return min((b for b in buckets if b >= n), default=None)


@dataclass
class _CudaGraph:
    graph: torch.cuda.CUDAGraph
    inputs: Tensor
    outputs: PoseOutput
    nbytes: int

    def replay(self) -> None:
        self.graph.replay()


def capture_cuda_graph(network: Network, example: Tensor) -> CapturedGraph:
    """Record ``network`` on a static copy of ``example`` (warm-up runs first, on a side stream).

    The warm-up lets cuDNN pick its algorithms and Triton compile before recording; the graph gets a
    private memory pool, which is freed with it, so its size can be measured and budgeted.
    """
    device = example.device
    inputs = example.clone()
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(2):
            network(inputs)
    torch.cuda.current_stream(device).wait_stream(stream)
    torch.cuda.synchronize(device)
    # Recording starts by emptying the allocator's cache; empty it first, or the warm-up's freed
    # activations count in ``before`` and the graph's pool is measured as (nearly) nothing.
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        outputs = network(inputs)
    return _CudaGraph(graph, inputs, outputs, max(0, torch.cuda.memory_reserved(device) - before))


def _zeros_like_rows(x: Tensor, rows: int) -> Tensor:
    """Zeros of ``rows`` images shaped and laid out like ``x`` (a channels-last network records NHWC)."""
    nhwc = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    zeros = x.new_zeros(rows, *x.shape[1:])
    return zeros.contiguous(memory_format=torch.channels_last) if nhwc else zeros


class GraphedNetwork:
    """``(B, 3, H, W) -> PoseOutput`` by graph replay; batches beyond the largest bucket run eagerly.

    Args:
        network: the eager network; it is what gets recorded.
        memory_budget_bytes: graphs are dropped, least recently used first, to stay under it.
        buckets: batch sizes to record; a batch is padded to the smallest that holds it.
        capture: how a graph is recorded (:func:`capture_cuda_graph`; tests pass a stand-in).
    """

    def __init__(
        self,
        network: Network,
        memory_budget_bytes: int,
        buckets: Iterable[int] = BUCKETS,
        capture: Callable[[Network, Tensor], CapturedGraph] = capture_cuda_graph,
    ) -> None:
        self.network = network
        self.memory_budget_bytes = memory_budget_bytes
        self.buckets = tuple(sorted(buckets))
        self.capture = capture
        self.graphs: OrderedDict[tuple[int, int, int], CapturedGraph] = OrderedDict()
        self.evictions = 0

    @property
    def memory_bytes(self) -> int:
        return sum(g.nbytes for g in self.graphs.values())

    def __call__(self, x: Tensor) -> PoseOutput:
        n, _, h, w = x.shape
        bucket = bucket_for(n, self.buckets)
        if bucket is None:
            return self.network(x)
        graph = self._graph(bucket, x)
        graph.inputs[:n].copy_(x)  # rows n.. keep earlier images: computed, never read
        graph.replay()
        # Copies: the next replay overwrites the static outputs.
        heat_2x = graph.outputs.heatmaps_2x
        return PoseOutput(
            graph.outputs.heatmaps[:n].clone(),
            graph.outputs.offsets[:n].clone(),
            None if heat_2x is None else heat_2x[:n].clone(),
        )

    def _graph(self, bucket: int, x: Tensor) -> CapturedGraph:
        key = (bucket, x.shape[2], x.shape[3])
        graph = self.graphs.get(key)
        if graph is not None:
            self.graphs.move_to_end(key)
            return graph
        example = _zeros_like_rows(x, bucket)
        example[: x.shape[0]] = x
        graph = self.capture(self.network, example)
        self.graphs[key] = graph
        log.info("recorded a CUDA graph for batch %d at %dx%d (%.0f MB)", *key, graph.nbytes / 2**20)
        self._evict_over_budget()
        return graph

    def _evict_over_budget(self) -> None:
        """Drop the least recently used graphs until the rest fit the budget; the newest always stays.

        A graph's size is only known once it is recorded, so the budget is enforced right after.
        """
        while len(self.graphs) > 1 and self.memory_bytes > self.memory_budget_bytes:
            dropped_key, dropped = self.graphs.popitem(last=False)
            del dropped  # the last reference: its memory pool can now be released
            self.evictions += 1
            log.info("dropped the CUDA graph for batch %d at %dx%d (memory budget)", *dropped_key)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # hand the dropped graph's pool back to the driver
