"""The backbone graph to int8: static QDQ quantization in ONNX Runtime, calibrated on drawn scenes and,
when given, the user's own images.

Weights are quantized per output channel (int8) and activations per tensor (uint8) with ranges measured
on the calibration inputs. The result is reproducible: the drawn scenes are seeded, the user's images are
read in name order, and the calibration is deterministic, so the same inputs make the same file.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any, Literal

import numpy as np

from export.onnx_export import DropPrefix
from pose.config import ModelConfig
from pose.preprocess import image_to_tensor, plan_transform, resize_image

__all__ = ["CALIBRATION_SCENES", "METHODS", "calibration_images", "calibration_key", "quantize_backbone"]

CALIBRATION_SCENES = 32  # drawn scenes, seeded; flipped copies are calibrated on too, as the flip test runs them
CALIBRATION_SEED = 1234  # not the agreement check's seed: the check runs on scenes the calibration never saw
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
RECIPE = "qdq-u8s8-perchannel-percentile-v1"  # changes whenever the recipe below does, so caches are remade
Method = Literal["minmax", "entropy", "percentile"]
METHODS: dict[str, Any] = {
    "minmax": lambda m: m.MinMax,
    "entropy": lambda m: m.Entropy,
    "percentile": lambda m: m.Percentile,
}


def _user_images(folder: Path | None) -> list[Path]:
    if folder is None:
        return []
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def calibration_key(folder: Path | None) -> str:
    """A short digest of the calibration set: the recipe, the drawn scenes, and the user's images' bytes."""
    h = hashlib.sha256(f"{RECIPE}/{CALIBRATION_SCENES}/{CALIBRATION_SEED}".encode())
    for path in _user_images(folder):
        h.update(path.name.encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:12]


def calibration_images(folder: Path | None = None) -> list[np.ndarray]:
    """Seeded drawn scenes of 1-6 people at photo-like sizes, then the user's images (RGB, name order)."""
    import cv2

    from pose.data.synthetic import SceneConfig, render_scene

    rng = np.random.default_rng(CALIBRATION_SEED)
    sizes = ((480, 640), (640, 480), (512, 512))
    images = [
        render_scene(rng, SceneConfig(size=sizes[i % len(sizes)], people=(1, 6)))[0][..., ::-1].copy()
        for i in range(CALIBRATION_SCENES)
    ]
    for path in _user_images(folder):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if image is None:
            raise ValueError(f"calibration image {path} cannot be decoded")
        images.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return images


def _network_inputs(config: ModelConfig, images: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
    """Each image as the network sees it at scale 1, and its mirror image (the flip test's second pass)."""
    for image in images:
        for picture in (image, np.ascontiguousarray(image[:, ::-1])):
            t = plan_transform(picture.shape[1], picture.shape[0], config.input.size)
            yield image_to_tensor(resize_image(picture, t), config.input).numpy()


@contextmanager
def _quantizer_noise() -> Iterator[None]:
    """Keep the quantizer to what matters: it prints its calibration progress to stdout and advises a
    pre-processing pass (shape inference, which ONNX Runtime's own graph optimizations make redundant here)
    on the root logger at every run."""
    advice = DropPrefix("Please consider")
    root = logging.getLogger()
    root.addFilter(advice)
    try:
        with redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(advice)


def quantize_backbone(
    float_graph: Path, out: Path, config: ModelConfig, images: Sequence[np.ndarray], method: Method = "percentile"
) -> None:
    """Write the int8 QDQ version of the backbone graph ``float_graph`` (input ``image``) to ``out``.

    Activation ranges are by default the 0.001st-99.999th percentiles of the calibration activations: on
    the embedded model's drawn scenes they kept more poses within 0.5 px of float32 than the extremes
    (``minmax``) or ``entropy`` did (``python -m bench.quantized``). The inputs are fed two at a time (an
    image and its mirror), so memory holds one pair's activations, not the whole set's.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
    )

    inputs = list(_network_inputs(config, images))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.set_range(0, len(inputs))

        def __len__(self) -> int:
            return len(inputs)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.pending = iter(inputs[start_index:end_index])

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.pending, None)  # (1, 3, H, W)
            return None if x is None else {"image": x}

    with _quantizer_noise():
        _quantize(float_graph, out, Reader(), method)


def _quantize(float_graph: Path, out: Path, reader: Any, method: Method) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(float_graph),
        str(out),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=METHODS[method](CalibrationMethod),
        extra_options={"CalibStridedMinMax": 2},
    )
