"""Request options: one declaration, one resolution (request, then service settings, then model config)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pose.config import load_model_config
from service.errors import InvalidOptionError
from service.options import PoseOptions, resolve_options
from service.settings import Settings

from .conftest import FIXTURES

CONFIG = load_model_config(FIXTURES / "tiny_coco_w8_256.yaml")


def test_unset_options_take_the_models_defaults() -> None:
    resolved = resolve_options(PoseOptions(), Settings(model=FIXTURES), CONFIG)
    assert resolved.run.flip is CONFIG.test.flip and resolved.run.scales == tuple(CONFIG.test.scales)
    assert resolved.score_threshold == CONFIG.test.score_threshold
    assert resolved.max_people == CONFIG.decode.max_people
    assert not resolved.overlay and not resolved.coco


def test_service_settings_override_the_model_and_requests_override_both() -> None:
    settings = Settings(model=FIXTURES, flip=False, scales=[1.0, 0.5], score_threshold=0.2)
    service = resolve_options(PoseOptions(), settings, CONFIG)
    assert (service.run.flip, service.run.scales, service.score_threshold) == (False, (1.0, 0.5), 0.2)
    request = resolve_options(PoseOptions(flip=True, scales=[1.0], score_threshold=0.0), settings, CONFIG)
    assert (request.run.flip, request.run.scales, request.score_threshold) == (True, (1.0,), 0.0)


def test_requests_that_resolve_alike_share_a_network_pass() -> None:
    settings = Settings(model=FIXTURES)
    implicit = resolve_options(PoseOptions(), settings, CONFIG).run
    explicit = resolve_options(PoseOptions(flip=CONFIG.test.flip, scales=[1.0]), settings, CONFIG).run
    assert implicit == explicit and hash(implicit) == hash(explicit)
    reordered = resolve_options(PoseOptions(scales=[0.5, 1.0]), settings, CONFIG).run
    assert reordered == resolve_options(PoseOptions(scales=[1.0, 0.5]), settings, CONFIG).run
    assert resolve_options(PoseOptions(flip=not CONFIG.test.flip), settings, CONFIG).run != implicit


def test_max_people_is_bounded_by_the_model() -> None:
    with pytest.raises(InvalidOptionError, match="max_people: at most 30"):
        resolve_options(PoseOptions(max_people=31), Settings(model=FIXTURES), CONFIG)
    assert resolve_options(PoseOptions(max_people=30), Settings(model=FIXTURES), CONFIG).max_people == 30


@pytest.mark.parametrize(
    "bad",
    [{"max_people": 0}, {"score_threshold": -1}, {"scales": [2.0]}, {"scales": [1.0, 3.0]}, {"scales": []}, {"x": 1}],
)
def test_invalid_options_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        PoseOptions.model_validate(bad)
