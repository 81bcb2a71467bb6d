"""Tile planning for large frames and removal of faces cut by inner tile edges."""

from __future__ import annotations

import numpy as np

from device.vision.boxes import Candidates
from device.vision.tiling import Tile, TilingConfig, drop_cut_faces, plan_tiles


def test_small_frames_need_no_tiles() -> None:
    assert plan_tiles(384, 300, 192, TilingConfig(enabled=True)) == []


def test_1080p_gets_a_pyramid_of_overlapping_tiles_covering_the_frame() -> None:
    cfg = TilingConfig(enabled=True)  # 40 px faces -> 20 input px: finest side 384
    tiles = plan_tiles(1920, 1080, 192, cfg)
    levels = sorted({t.level for t in tiles})
    # Level 1 cuts faces over 192 px; the whole frame sees only those over 200 px
    # at 20 input px, so a third level (1536 px, clipped to the height) is added.
    assert levels == [0, 1, 2]
    assert [t.region for t in tiles if t.level == 2] == [(0, 0, 1536, 1080), (384, 0, 1920, 1080)]
    for level, side in [(0, 384), (1, 768)]:
        mine = [t for t in tiles if t.level == level]
        assert all(t.x1 - t.x0 == side and t.y1 - t.y0 == side for t in mine)
        covered = np.zeros((1080, 1920), bool)
        for t in mine:
            covered[t.y0 : t.y1, t.x0 : t.x1] = True
        assert covered.all()
        xs = sorted({t.x0 for t in mine})
        ys = sorted({t.y0 for t in mine})
        assert xs[0] == 0 and xs[-1] + side == 1920 and ys[-1] + side == 1080
        # Neighbours overlap by at least a quarter of the side.
        assert max(np.diff(xs)) <= side * 0.75 + 1
        assert max(np.diff(ys)) <= side * 0.75 + 1
    # A 40 px face in a level-0 tile is 20 px at the 192 px input.
    assert cfg.model_face == 40 * 192 / 384


def test_tiles_are_clipped_to_a_short_axis() -> None:
    tiles = plan_tiles(500, 375, 192, TilingConfig(enabled=True))
    assert [t.region for t in tiles] == [(0, 0, 384, 375), (116, 0, 500, 375)]


def test_faces_touching_an_inner_tile_edge_are_dropped() -> None:
    tile = Tile(100, 0, 484, 384)  # left edge inner, top edge on the frame border
    boxes = np.array(
        [[95, 50, 140, 95],     # crosses the inner left edge: cut
         [120, 0, 160, 30],     # touches the top, but that is the frame border: kept
         [200, 200, 240, 240],  # inside: kept
         [450, 350, 482, 383]], # within the margin of the inner right/bottom edges: cut
        np.float32,
    )
    cands = Candidates(boxes, np.ones(4, np.float32), np.zeros((4, 6, 2), np.float32))
    kept = drop_cut_faces(cands, tile, width=1000, height=800, margin=0.02)
    np.testing.assert_array_equal(kept.boxes, boxes[[1, 2]])
