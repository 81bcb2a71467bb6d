"""Configuration models.

Every section is a pydantic model derived from :class:`Section`: unknown keys are
refused, every field carries a description. Backends (detectors, embedders, frame
sources) define their own section next to their code and are chosen by a ``type``
literal, Frigate-style; the service's top-level file model composes them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every configuration model: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
