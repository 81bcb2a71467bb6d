"""PRIVACY.md stays true: every test it cites exists, and every ``[section] key`` it
names is a real setting (with the default it states, where it states one)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

from device.console.config import ConsoleConfig
from device.service.config import FacegateConfig

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "PRIVACY.md").read_text(encoding="utf-8")


def test_every_cited_test_exists() -> None:
    cited = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", TEXT)
    assert len(cited) >= 8
    for path, name in cited:
        source = (ROOT / path).read_text(encoding="utf-8")
        assert not name or f"def {name}(" in source, f"{path}::{name} is cited but missing"


def test_every_cited_setting_exists_with_its_stated_default() -> None:
    settings = set(re.findall(r"`\[(\w+)\] (\w+)`", TEXT))
    assert ("retention", "max_purge_share") in settings
    assert ("store", "url") in settings and ("review", "session_expiry_s") in settings
    defaults = FacegateConfig.model_fields
    for section, key in settings:
        # A unit's section (an optional one: `X | None`), or else the console's.
        sections = [m for config in (FacegateConfig, ConsoleConfig)
                    for m in _models(config.model_fields.get(section))]
        assert sections, f"[{section}] is not a section of the unit's or the console's config"
        assert any(key in m.model_fields for m in sections), f"[{section}] {key} is not a setting"
    retention = defaults["retention"].default_factory()  # type: ignore[misc,call-arg]
    assert retention.max_purge_share == 0.2 and retention.purge_always_allowed == 1
    assert retention.purge_interval_s == 3600 and retention.outbox_max_age_s == 7 * 86400


def _models(field: Any) -> list[Any]:
    """The config models a field may hold (none when there is no such field)."""
    if field is None:
        return []
    annotation = field.annotation
    return [a for a in (get_args(annotation) or (annotation,)) if hasattr(a, "model_fields")]
