"""SSD anchors as MediaPipe's SsdAnchorsCalculator generates them for BlazeFace."""

from __future__ import annotations

import numpy as np
import pytest

from device.vision.anchors import (
    FULL_RANGE_OPTIONS,
    SHORT_RANGE_OPTIONS,
    SsdAnchorOptions,
    generate_anchors,
)


def test_full_range_has_2304_anchors_on_a_48x48_grid() -> None:
    anchors = generate_anchors(FULL_RANGE_OPTIONS)
    assert anchors.shape == (2304, 4)
    assert anchors.dtype == np.float32
    # One anchor per cell, row-major, centres at (i + 0.5) / 48.
    np.testing.assert_allclose(anchors[0], [0.5 / 48, 0.5 / 48, 1.0, 1.0])
    np.testing.assert_allclose(anchors[1], [1.5 / 48, 0.5 / 48, 1.0, 1.0])
    np.testing.assert_allclose(anchors[48], [0.5 / 48, 1.5 / 48, 1.0, 1.0])
    np.testing.assert_allclose(anchors[-1], [47.5 / 48, 47.5 / 48, 1.0, 1.0])


def test_short_range_has_896_anchors_two_per_cell_then_six_per_cell() -> None:
    anchors = generate_anchors(SHORT_RANGE_OPTIONS)
    assert anchors.shape == (896, 4)
    # Stride 8: 16x16 cells, 2 anchors each (aspect 1.0 + interpolated), same centre.
    first = anchors[:512].reshape(16, 16, 2, 4)
    np.testing.assert_allclose(first[0, 0, 0], [0.5 / 16, 0.5 / 16, 1, 1])
    np.testing.assert_array_equal(first[:, :, 0], first[:, :, 1])
    np.testing.assert_allclose(first[3, 5, 0, :2], [5.5 / 16, 3.5 / 16])
    # Three stride-16 layers merge: 8x8 cells, 6 anchors each.
    rest = anchors[512:].reshape(8, 8, 6, 4)
    np.testing.assert_allclose(rest[7, 2, 5], [2.5 / 8, 7.5 / 8, 1, 1])
    assert np.all(rest[:, :, :1] == rest)
    assert np.all(anchors[:, 2:] == 1.0)


def test_without_fixed_size_anchor_sizes_follow_the_scales() -> None:
    opts = SsdAnchorOptions(
        input_width=64, input_height=64, strides=(32, 64), min_scale=0.2, max_scale=0.8,
        aspect_ratios=(1.0, 4.0), interpolated_scale_aspect_ratio=1.0, fixed_anchor_size=False,
    )
    anchors = generate_anchors(opts)
    # Layer 0: 2x2 cells x 3 anchors; layer 1: 1x1 cell x 3 anchors.
    assert anchors.shape == (15, 4)
    np.testing.assert_allclose(anchors[0, 2:], [0.2, 0.2], rtol=1e-6)
    np.testing.assert_allclose(anchors[1, 2:], [0.4, 0.1], rtol=1e-6)  # ratio 4: w=2s, h=s/2
    np.testing.assert_allclose(anchors[2, 2:], [np.sqrt(0.2 * 0.8)] * 2, rtol=1e-6)
    np.testing.assert_allclose(anchors[14, 2:], [np.sqrt(0.8 * 1.0)] * 2, rtol=1e-6)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="strides"):
        generate_anchors(SsdAnchorOptions(input_width=8, input_height=8, strides=()))
