"""The CUDA-graph replay of the network now lives below every front-end, in :mod:`pose.runtimes.cuda_graphs`."""

from pose.runtimes.cuda_graphs import BUCKETS, CapturedGraph, GraphedNetwork, bucket_for, capture_cuda_graph

__all__ = ["BUCKETS", "CapturedGraph", "GraphedNetwork", "bucket_for", "capture_cuda_graph"]
