"""``device.imageio.read_image`` on arbitrary file bytes: an image or an ImageError."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from tests.fuzz.harness import Harness

NAME = "image"
INSTRUMENT = ("device.imageio", "PIL")
MAX_LEN = 8192


def _encode(img: PILImage.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def seeds() -> tuple[bytes, ...]:
    """Tiny images in every format and mode read_image converts."""
    rng = np.random.default_rng(9)
    rgb = PILImage.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8), "RGB")
    exif = PILImage.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    return (
        _encode(rgb, "PNG"),
        _encode(rgb.convert("RGBA"), "PNG"),
        _encode(rgb.convert("L"), "PNG"),
        _encode(rgb.convert("P"), "PNG"),
        _encode(rgb.convert("I;16"), "PNG"),
        _encode(rgb, "JPEG", quality=80),
        _encode(rgb, "JPEG", quality=80, exif=exif.tobytes()),
        _encode(rgb.convert("L"), "JPEG", progressive=True),
        _encode(rgb, "BMP"),
        _encode(rgb, "WEBP"),
        _encode(rgb, "TIFF"),
        _encode(rgb, "GIF"),
    )


def prepare(workdir: Path) -> Harness:
    from device.errors import ImageError
    from device.imageio import read_image

    path = workdir / "input.img"

    def one_input(data: bytes) -> None:
        path.write_bytes(data)
        try:
            out = read_image(path)
        except ImageError:
            return
        if out.dtype != np.uint8 or out.ndim != 3 or out.shape[2] != 3:
            raise AssertionError(f"read_image returned {out.dtype} {out.shape}")

    return Harness(seeds(), one_input)
