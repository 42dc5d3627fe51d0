"""Shared fixtures: the team's shared folder (parity outputs, photos) beside the checkout, when present."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# GNU OpenMP threads spin for a while at each barrier before they sleep; on cores shared with other work a
# spinning thread burns the time slice its partner needs, and the many small operators of the test models
# ran up to 9x slower on 2 cores shared 2:1 (2.5x with this bound), for the same speed on idle cores.
os.environ.setdefault("GOMP_SPINCOUNT", "30000")

import torch  # noqa: E402  (after the OpenMP setting, which is read when torch loads)

# The graphs `auto` exports go to one cache for the run, never the user's ~/.cache/pose: a fresh machine and
# a developer's do the same work (the first test that needs a graph exports it, the others and every
# subprocess reuse it), and a stale graph of an earlier checkout cannot stand in for this one's.
RUN_ONNX_CACHE = Path(tempfile.mkdtemp(prefix="pose-tests-onnx-"))
os.environ["POSE_ONNX_CACHE"] = str(RUN_ONNX_CACHE)

if not torch.cuda.is_available():
    # Triton reads this when first imported, by whichever test module imports it first.
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PARITY = SHARED / "parity"
DATA = SHARED / "data"
FIXTURES = Path(__file__).parent / "fixtures"


def checkout_env() -> dict[str, str]:
    """The environment for a subprocess that must run this checkout's code, wherever ``pose`` is installed from."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    if not (PARITY / "coco" / "ckpt.pth").is_file():
        pytest.skip(f"parity outputs of the authors' code not found at {PARITY}")
    return PARITY


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared test photos not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def bulk_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for bulk jobs: drawn scenes, a file that is not an image and a short video."""
    from .bulk_data import write_inputs

    return write_inputs(tmp_path_factory.mktemp("bulk") / "inputs")


@pytest.fixture(scope="session")
def bulk_local_run(bulk_inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted local bulk job over ``bulk_inputs``; the reference other runs must equal."""
    from pose.bulk import BulkOptions, run_batch

    from .bulk_data import OPTIONS

    out = tmp_path_factory.mktemp("bulk") / "local"
    run_batch([str(bulk_inputs)], out, options=BulkOptions(**OPTIONS, workers=1, progress=False))
    return out


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(RUN_ONNX_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def onnx_cache() -> Path:
    """The run's ONNX cache (``POSE_ONNX_CACHE``, so also the API's, the CLI's and bulk jobs'), holding the
    embedded model's portable graph as ``auto`` exported and checked it (the export is the slowest step of
    the tests that need it)."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from pose.config import DEFAULT_MODEL, load_model_config
    from pose.runtimes import RuntimeOptions, automatic_backend

    backend = automatic_backend(load_model_config(DEFAULT_MODEL), RuntimeOptions(onnx_cache=RUN_ONNX_CACHE))
    assert backend.name == "onnx", getattr(backend, "report", None)
    return RUN_ONNX_CACHE
