"""Getting the model ready to serve: load, warm up, seed the batch-time estimate, and on a first start switch
to ONNX Runtime later instead of waiting for its graph.

On a CPU the automatic backend is ONNX Runtime on a graph exported from the torch network and checked
against it, which on a first start (nothing in ``POSE_ONNX_CACHE`` yet) takes about half a minute for the
embedded model and minutes for a full-size one. The service does not keep its readiness waiting for that:
it loads the torch network, warms it up and becomes ready, then exports and checks the graph in the
background and moves the next batches onto it once it has matched torch. Every later start finds the graph
in the cache and starts on ONNX Runtime directly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from pose.config import ModelConfig, load_model_config
from pose.pipeline import BatchPipeline
from pose.rescore import ScoringNet, load_scoring_net
from pose.runtimes import create_backend
from pose.runtimes.graphs import portable_onnx_ready
from pose.runtimes.onnxruntime_backend import ArenaBound
from pose.runtimes.options import BackendName
from service.backends import Backend
from service.batch_cost import BatchCostModel, work_units
from service.batcher import UnitsOf
from service.options import PoseOptions, RunOptions, resolve_options
from service.settings import Settings

__all__ = ["COMMON_SHAPES", "Loaded", "faster_backend_later", "load", "units_of", "warm_up"]

log = logging.getLogger("pose.service")

# Photo shapes whose network inputs are prepared before readiness when CUDA graphs are on: square, and
# the usual landscape and portrait (4:3). Other shapes are recorded on first use.
COMMON_SHAPES = ((640, 640), (480, 640), (640, 480))


@dataclass
class Loaded:
    """A model ready to warm up: its config, the runtime it runs on and the pipeline around it."""

    config: ModelConfig
    backend: Backend
    pipeline: BatchPipeline


def faster_backend_later(config: ModelConfig, settings: Settings) -> bool:
    """``auto`` on a CPU with no portable graph yet: serve torch first, ONNX Runtime once exported and checked."""
    if settings.backend != "auto" or not settings.device.startswith("cpu") or settings.precision != "float32":
        return False
    return not portable_onnx_ready(config, settings.runtime_options())


def load(settings: Settings, config: ModelConfig | None = None, backend: BackendName | None = None) -> Loaded:
    """The configured model on the runtime the settings ask for (``backend`` overrides ``POSE_BACKEND``)."""
    config = config or load_model_config(settings.model)
    options = settings.runtime_options()
    network = create_backend(config, replace(options, backend=backend) if backend else options)
    scoring_net: ScoringNet | None = None
    rescore_path = config.resolve(config.rescore_weights)
    if rescore_path is not None and rescore_path.is_file():
        scoring_net = load_scoring_net(rescore_path, config.keypoints.score_feature_dim).to(network.device)
    else:
        log.warning("no scoring net at %s: poses are ranked by the mean joint score", rescore_path)
    return Loaded(config, network, BatchPipeline(config, network, scoring_net, network.device))


def warm_up(loaded: Loaded, settings: Settings) -> BatchCostModel:
    """Run every batch size the batcher can form (powers of two up to the maximum) once, then time a batch of
    one and a full batch again: the batch-time estimate admission starts from.

    With CUDA graphs, every common shape too, so their graphs are recorded before the pod is ready. ONNX
    Runtime's arena is then held to what these batches needed (:class:`ArenaBound`).
    """
    size = settings.max_batch_size
    sizes = sorted({min(2**i, size) for i in range(size.bit_length() + 1)})
    graphs = getattr(loaded.backend, "graphs", None)
    shapes = COMMON_SHAPES if graphs is not None else COMMON_SHAPES[1:2]
    run = resolve_options(PoseOptions(), settings, loaded.config).run
    for h, w in shapes:
        image = np.zeros((h, w, 3), np.uint8)
        for n in sizes:
            loaded.pipeline.run([image] * n, run.flip, run.scales)
    cost = BatchCostModel()
    h, w = shapes[0]
    image = np.zeros((h, w, 3), np.uint8)
    for n in dict.fromkeys((1, size)):
        started = time.perf_counter()
        loaded.pipeline.run([image] * n, run.flip, run.scales)
        cost.observe(work_units([(w, h)] * n, run, loaded.config.input.size), time.perf_counter() - started)
    if isinstance(loaded.backend, ArenaBound):
        loaded.backend.settle_arena()
    return cost


def units_of(config: ModelConfig) -> UnitsOf:
    """A request's network work from its decoded images (the batcher's cost unit)."""

    def units(images: Sequence[np.ndarray], run: RunOptions) -> float:
        return work_units(((im.shape[1], im.shape[0]) for im in images), run, config.input.size)

    return units
