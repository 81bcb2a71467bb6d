"""read_image refuses cut-off files even after a library flips Pillow's global switch."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageFile

from device.errors import ImageError
from device.imageio import read_image


def _jpeg(path: Path) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    PILImage.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(buf, "JPEG")
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def test_truncated_jpeg_refused_even_with_load_truncated_images_set(tmp_path: Path) -> None:
    data = _jpeg(tmp_path / "whole.jpg")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # what `import face_recognition` does
    try:
        with pytest.raises(ImageError, match=r"cut\.jpg: cannot decode"):
            read_image(cut)
        assert read_image(tmp_path / "whole.jpg").shape == (120, 160, 3)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = PILImage.new("RGB", (40, 20), (255, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "o.jpg"
    img.save(path, exif=exif)
    assert read_image(path).shape == (40, 20, 3)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty"), (b"hello, not an image", "not an image file")],
)
def test_bad_files_named(tmp_path: Path, content: bytes, reason: str) -> None:
    p = tmp_path / "x.jpg"
    p.write_bytes(content)
    with pytest.raises(ImageError, match=reason):
        read_image(p)
