"""Tiling for large frames: find small faces a single downscaled pass would lose.

A 40 px face in a 1920×1080 frame squeezed into a 192 px input is 4 px wide and
invisible to the model. In tiled mode the detector runs on the whole frame (large
faces) and on overlapping square tiles at a pyramid of scales. The finest tile
side is chosen so the smallest face to find (``min_face``, frame pixels) is
``model_face`` input pixels wide; each coarser level doubles the side, until the
faces a level may cut (those larger than its overlap) are ones the whole-frame
pass sees at ``model_face`` input pixels anyway, or a tile would cover the frame.

Tiles overlap by ``overlap`` of their side. A face at most that large is wholly
inside at least one tile of its level; a detection that touches an inner tile edge
(one that is not the frame border) is dropped, since it is a cut face that a
neighbouring tile or a coarser level sees whole. The surviving candidates of every
pass are merged by one weighted NMS in frame pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from device.config import Section
from device.vision.boxes import Candidates


class TilingConfig(Section):
    """Tiled (multi-scale) detection for frames much larger than the model input."""

    enabled: bool = Field(
        False, description="Run on overlapping tiles as well as the whole frame (slower)."
    )
    min_face: int = Field(
        40, ge=8, le=1000,
        description="Smallest face, in frame pixels, that tiling must make detectable.",
    )
    model_face: float = Field(
        20.0, ge=4.0, le=200.0,
        description="Face width, in model-input pixels, the model detects reliably; "
        "with min_face it sets the finest tile side.",
    )
    overlap: float = Field(
        0.25, ge=0.0, le=0.75,
        description="Overlap of neighbouring tiles as a fraction of the tile side; "
        "faces up to this size are wholly inside some tile.",
    )
    containment_threshold: float = Field(
        0.6, gt=0.0, le=1.0,
        description="After merging, drop a detection when this fraction of the smaller "
        "of two boxes is covered by a better-scored one (one face seen at two scales).",
    )
    edge_margin: float = Field(
        0.02, ge=0.0, le=0.2,
        description="Drop tile detections within this fraction of the side from an "
        "inner tile edge (cut faces).",
    )


@dataclass(frozen=True, slots=True)
class Tile:
    """A rectangle of the frame, ``[x0, x1) × [y0, y1)`` in integer pixels.

    Attributes:
        level: 0 for the finest tiles, +1 for each doubling of the side.
    """

    x0: int
    y0: int
    x1: int
    y1: int
    level: int = 0

    @property
    def region(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)


def _starts(length: int, side: int, overlap_px: float) -> list[int]:
    """Evenly spread tile origins covering ``[0, length)`` with at least the overlap."""
    if side >= length:
        return [0]
    step = max(side - overlap_px, 1.0)
    count = math.ceil((length - side) / step) + 1
    return [round(v) for v in np.linspace(0, length - side, count)]


def finest_tile_side(input_size: int, config: TilingConfig) -> int:
    """Side of the finest tiles: ``min_face`` frame px become ``model_face`` input px."""
    return max(16, math.floor(input_size * config.min_face / config.model_face))


def plan_tiles(width: int, height: int, input_size: int, config: TilingConfig) -> list[Tile]:
    """Square tiles, finest level first, for a ``width × height`` frame.

    No tiles when the frame is already small enough for the whole-frame pass to
    see ``min_face`` at ``model_face`` input pixels. Tiles are clipped to the frame
    (so a tile may be narrower than its side along a short axis).

    Raises:
        ValueError: A size is not positive.
    """
    if width <= 0 or height <= 0 or input_size <= 0:
        raise ValueError(f"cannot tile a {width}x{height} frame for input {input_size}")
    tiles: list[Tile] = []
    longest = max(width, height)
    # Smallest face the whole-frame pass sees at model_face input pixels.
    whole_frame_face = config.model_face * longest / input_size
    side = finest_tile_side(input_size, config)
    level = 0
    while side < longest:
        overlap_px = side * config.overlap
        for y in _starts(height, side, overlap_px):
            for x in _starts(width, side, overlap_px):
                tiles.append(Tile(x, y, min(x + side, width), min(y + side, height), level))
        if overlap_px >= whole_frame_face:
            break  # every face this level may cut, the whole-frame pass sees
        side *= 2
        level += 1
    return tiles


def drop_cut_faces(
    candidates: Candidates, tile: Tile, width: int, height: int, margin: float
) -> Candidates:
    """Remove candidates (frame pixels) that reach an inner edge of ``tile``.

    An edge on the frame border never cuts a face, so only inner edges count.
    """
    if len(candidates) == 0:
        return candidates
    m = margin * max(tile.x1 - tile.x0, tile.y1 - tile.y0)
    b = candidates.boxes
    keep = np.ones(len(candidates), dtype=bool)
    if tile.x0 > 0:
        keep &= b[:, 0] >= tile.x0 + m
    if tile.y0 > 0:
        keep &= b[:, 1] >= tile.y0 + m
    if tile.x1 < width:
        keep &= b[:, 2] <= tile.x1 - m
    if tile.y1 < height:
        keep &= b[:, 3] <= tile.y1 - m
    return candidates.select(keep)
