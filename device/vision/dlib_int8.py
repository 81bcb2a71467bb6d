"""dlib's face encoder quantised to int8 on the CPU: the ``dlib_int8`` embedder backend.

It shares :class:`~device.vision.dlib_tflite.DlibTFLiteEmbedder`'s code (same chips,
template and flip averaging), so both live in :mod:`device.vision.dlib_tflite`; this
module names the backend the way the registry and configs refer to it.
"""

from __future__ import annotations

from device.vision.dlib_tflite import DLIB_INT8_MODEL_ID, DlibInt8Embedder, DlibInt8EmbedderConfig

__all__ = ["DLIB_INT8_MODEL_ID", "DlibInt8Embedder", "DlibInt8EmbedderConfig"]
