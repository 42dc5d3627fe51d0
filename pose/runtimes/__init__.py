"""Network runtimes below every front-end (API, CLI, bulk jobs, service): torch, ONNX Runtime and TensorRT
behind one :class:`Backend` interface, and the ``auto`` choice among them.

>>> from pose.runtimes import RuntimeOptions, create_backend               # doctest: +SKIP
>>> backend = create_backend(config, RuntimeOptions(backend="auto"))         # doctest: +SKIP
>>> describe_runtime(backend).backend  # 'onnx' on a CPU once it matched torch # doctest: +SKIP
"""

from pose.runtimes.choice import automatic_backend, create_backend
from pose.runtimes.options import DEFAULT_ONNX_CACHE, BackendName, Precision, RuntimeOptions
from pose.runtimes.report import Backend, RuntimeReport, describe_runtime

__all__ = [
    "DEFAULT_ONNX_CACHE",
    "Backend",
    "BackendName",
    "Precision",
    "RuntimeOptions",
    "RuntimeReport",
    "automatic_backend",
    "create_backend",
    "describe_runtime",
]
