"""Detector configs: chosen by `type`, unknown keys refused, registry complete."""

from __future__ import annotations

import ctypes.util

import pytest
from pydantic import TypeAdapter, ValidationError

from device.errors import HardwareError
from device.vision.blazeface import BlazeFaceConfig
from device.vision.coral_ssd import CoralSsdConfig
from device.vision.detect import DETECTORS, DetectorConfig, create_detector

ADAPTER: TypeAdapter[BlazeFaceConfig | CoralSsdConfig] = TypeAdapter(DetectorConfig)


def test_the_type_field_picks_the_backend_config() -> None:
    blaze = ADAPTER.validate_python({"type": "blazeface", "model": "short", "tiling": {
        "enabled": True, "min_face": 32}})
    assert isinstance(blaze, BlazeFaceConfig)
    assert blaze.model == "short" and blaze.tiling.min_face == 32
    assert blaze.threshold == 0.5 and blaze.max_faces == 100
    coral = ADAPTER.validate_python({"type": "coral-ssd", "device": "usb"})
    assert isinstance(coral, CoralSsdConfig)


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "blazeface", "modle": "full"},           # typo: unknown key
        {"type": "blazeface", "tiling": {"enable": True}},  # typo in a nested section
        {"type": "blazeface", "threshold": 1.5},
        {"type": "yolo"},
    ],
)
def test_bad_configs_are_refused(raw: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ADAPTER.validate_python(raw)


def test_every_config_type_has_a_registered_backend() -> None:
    types = {BlazeFaceConfig().type, CoralSsdConfig().type}
    assert set(DETECTORS) == types
    for cls in (BlazeFaceConfig, CoralSsdConfig):
        assert all(f.description for f in cls.model_fields.values())


@pytest.mark.skipif(ctypes.util.find_library("edgetpu") is not None,
                    reason="the Edge TPU runtime is installed here")
def test_creating_the_coral_backend_without_a_tpu_is_a_hardware_error() -> None:
    with pytest.raises(HardwareError, match="Edge TPU"):
        create_detector(CoralSsdConfig())
