"""Image replay: one image file, or a folder of them, as a frame source.

Images are decoded with :func:`device.imageio.read_image`, so EXIF orientation is
honoured and every failure names the file. In a folder, an unreadable image is
logged, counted in the health report (``skipped``) and skipped; a lone image file
that cannot be read is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import Field

from device.camera.base import BaseSource, SourceConfigBase
from device.camera.pacing import Pacer
from device.errors import CameraError, ImageError
from device.imageio import IMAGE_SUFFIXES, iter_image_files, read_image
from device.types import Frame

logger = logging.getLogger(__name__)


class ImageSourceConfig(SourceConfigBase):
    """Replay an image file or a folder of images."""

    type: Literal["image"] = Field(default="image", description="Backend: image file/folder.")
    path: Path = Field(description="An image file, or a folder of images read in sorted order.")
    recursive: bool = Field(
        default=False, description="Also read images in sub-folders of `path`."
    )
    loop: bool = Field(default=False, description="Start again from the first image at the end.")
    fps: float | None = Field(
        default=None,
        gt=0,
        le=1000,
        description="Deliver at most this many frames per second; unset: as fast as read.",
    )


def list_images(root: Path, *, recursive: bool) -> list[Path]:
    """Image files in ``root`` (sorted; ``root`` itself if it is a file).

    Raises:
        CameraError: ``root`` is missing or cannot be listed.
    """
    if root.is_file():
        return [root]
    if not root.exists():
        raise CameraError(f"{root}: no such file or folder")
    if not root.is_dir():
        raise CameraError(f"{root}: neither a regular file nor a folder")
    try:
        if recursive:
            return iter_image_files(root)
        return sorted(
            p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
    except (OSError, ImageError) as exc:
        raise CameraError(f"{root}: cannot list folder: {exc}") from exc


class ImageSource(BaseSource):
    """Frames from an image file or a folder of images.

    Args:
        config: The source's section.

    Raises:
        CameraError: The path is missing, or the folder holds no image files.
        ImageError: ``path`` is a single image file that cannot be read.
    """

    def __init__(self, config: ImageSourceConfig) -> None:
        super().__init__(config.camera_id, str(config.path))
        self._config = config
        self._files = list_images(config.path, recursive=config.recursive)
        # A lone image is decoded once, here, so a bad file fails at open.
        self._single = read_image(config.path) if config.path.is_file() else None
        if not self._files:
            hint = "" if config.recursive else "; set recursive: true to look in sub-folders"
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise CameraError(f"{config.path}: no image files ({suffixes}){hint}")
        logger.info("camera %s: %d image(s) from %s", config.camera_id, len(self._files),
                    config.path)

    @property
    def files(self) -> tuple[Path, ...]:
        """The image files this source replays, in order."""
        return tuple(self._files)

    def _frames(self) -> Iterator[Frame]:
        """Yield each readable image (forever when looping).

        Raises:
            CameraError: No image in the folder could be read.
        """
        fps = self._config.fps
        pacer = Pacer(self._wait)
        emitted = 0
        while not self.closed:
            good = 0
            last_error = ""
            for path in self._files:
                if self.closed:
                    return
                try:
                    image = (self._single.copy() if self._single is not None
                             else read_image(path))
                except ImageError as exc:
                    last_error = str(exc)
                    logger.warning("camera %s: skipping unreadable image: %s",
                                   self.camera_id, exc)
                    self._counter.error(last_error, skipped=True)
                    continue
                good += 1
                if fps is not None and pacer.wait_until(emitted / fps):
                    return
                emitted += 1
                yield self._frame(image, source=str(path))
            if good == 0:
                raise CameraError(
                    f"{self._config.path}: none of the {len(self._files)} image(s) could be "
                    f"read (last error: {last_error})"
                )
            if not self._config.loop:
                return
