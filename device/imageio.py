"""Reading still images: decode, honour EXIF orientation, return RGB ``uint8``.

Every failure names the file and says what is wrong with it (missing, empty, not
an image, truncated), so a bad file in a folder of hundreds is easy to find.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageFile, ImageOps, UnidentifiedImageError

from device.errors import ImageError
from device.types import Image

logger = logging.getLogger(__name__)

#: File suffixes treated as images when walking folders.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

#: Refuse images whose pixel count would exhaust a Pi's memory (decompression bombs).
MAX_PIXELS = 64_000_000


def read_image(path: str | Path) -> Image:
    """Decode an image file into an RGB ``uint8`` array of shape ``(H, W, 3)``.

    EXIF orientation is applied, so a phone photo taken upright comes out upright.
    Grayscale, palette, 16-bit and alpha images are converted to 8-bit RGB.

    Raises:
        ImageError: The file is missing, empty, not an image, truncated or too large.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image file")
    if size == 0:
        raise ImageError(f"{path}: file is empty (0 bytes)")
    # face_recognition sets this process-wide at import (it accepts cut-off files); a
    # truncated photo must never be enrolled or matched as if it were whole.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ImageError(
                        f"{path}: {img.width}x{img.height} is larger than the "
                        f"{MAX_PIXELS // 1_000_000} MP limit"
                    )
                img.load()
                oriented = ImageOps.exif_transpose(img)
                rgb = oriented.convert("RGB")
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, PILImage.DecompressionBombError,
            PILImage.DecompressionBombWarning) as exc:
        # PIL raises OSError("image file is truncated ...") for cut-off JPEGs.
        raise ImageError(f"{path}: cannot decode image: {exc}") from exc
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def iter_image_files(root: str | Path) -> list[Path]:
    """Image files under ``root`` (itself if a file), sorted, recursively."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ImageError(f"{root}: no such file or directory")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
