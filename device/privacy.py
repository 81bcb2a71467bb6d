"""The privacy policy: what a payload may hold before it leaves the process.

Every payload published to the network (events, health, gallery state, audit head,
Home Assistant discovery) and every audit record passes :func:`check_payload`
first. The policy refuses anything that looks like biometric data, whatever the
topic or record kind:

* keys naming biometric material (:data:`FORBIDDEN_KEY_WORDS`; keys are split on
  ``_``, ``-``, ``.``, spaces and camelCase, and also compared run together), except
  the few count and template keys in :data:`ALLOWED_KEYS` with a value of their type;
* lists holding :data:`MAX_NUMBERS_PER_LIST` or more numbers, counted through
  nested lists (an embedding is 128-512 numbers or int8 codes);
* strings longer than :data:`MAX_STRING_CHARS`, ``data:`` URIs, hex runs longer than
  :data:`MAX_HEX_CHARS`, runs that look like encoded binary by their character
  statistics (base64, base64url, base85, base32), and runs of
  :data:`MAX_ENCODED_CHARS` or more base64/hex characters whatever their statistics;
* bytes, array objects (anything with ``__array__`` or ``tolist``), non-finite
  numbers, non-string keys and anything else that is not plain JSON;
* nesting deeper than :data:`MAX_DEPTH` and payloads over :data:`MAX_PAYLOAD_BYTES`
  encoded.

SHA-256 hex digests (64), key ids (64 hex), UUIDs, Ed25519 signatures as hex (128),
topic paths and snake_case ids pass; base64 of binary data does not, from 48
characters on (signatures travel in manifests, which this policy does not guard).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping
from typing import Final

from device.errors import PrivacyError

MAX_NUMBERS_PER_LIST: Final = 16
"""A list holding this many numbers (counted through nested lists) is refused."""
MAX_STRING_CHARS: Final = 512
MAX_HEX_CHARS: Final = 128
MAX_ENCODED_CHARS: Final = 160
"""A run this long of base64/hex characters looks like encoded pixels or an encoded
embedding (128 int8 values are 172 base64 characters), even when its statistics
look tame."""
MIN_RANDOM_CHARS: Final = 48
RANDOM_CLASS_CHANGE_RATE: Final = 0.45
MAX_PAYLOAD_BYTES: Final = 8192
MAX_DEPTH: Final = 8

FORBIDDEN_KEY_WORDS: Final = frozenset(
    {
        "biometric", "biometrics", "chip", "chips", "crop", "crops", "descriptor",
        "descriptors", "embedding", "embeddings", "face", "faceimage", "faces", "frame",
        "frames", "image", "images", "img", "jpeg", "jpg", "landmarks", "pixels", "png",
        "snapshot", "template", "thumb", "thumbnail", "vector", "vectors", "webp",
    }
)  # fmt: skip
"""Deliberately broad: rename ``face_count`` to ``detections`` rather than weaken it."""

ALLOWED_KEYS: Final[Mapping[str, type]] = {
    "faces_considered": int,
    "faces_embedded": int,
    "frames": int,
    "frames_dropped": int,
    "frames_in": int,
    "frames_processed": int,
    "frames_seen": int,
    "json_attributes_template": str,
    "value_template": str,
}
"""Keys of published schemas (counts) and of Home Assistant discovery (templates)
that contain a forbidden word; each passes only with a value of the type given."""

_KEY_SPLIT_RE: Final = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")
_RUN_RE: Final = re.compile(r"\S{64,}")
_HEX_RE: Final = re.compile(r"[0-9A-Fa-f-]+")
_BASE32_RE: Final = re.compile(r"(?=.*[2-7])[A-Z2-7]+")
_SEPARATORS_RE: Final = re.compile(r"[/_.:=+-]")
_ENCODED_RE: Final = re.compile(rf"[A-Za-z0-9+/=_-]{{{MAX_ENCODED_CHARS},}}")
_DATA_URI_RE: Final = re.compile(r"data:[a-z]+/[a-z0-9.+-]+[;,]", re.IGNORECASE)


def check_payload(payload: object, *, where: str = "payload") -> None:
    """Refuse a payload that holds, or looks like it holds, biometric data.

    Args:
        payload: JSON values: a dict, list, string, number, bool or None.
        where: What the payload is (``audit payload``, ``facegate/health/1 payload``),
            named in the error.

    Raises:
        PrivacyError: The payload breaks a rule of the module docstring; the message
            names the rule and the field path (``/cameras/front/fps``).
    """
    if isinstance(payload, bytes | bytearray | memoryview):
        raise PrivacyError(f"privacy guard: {where} is raw bytes; raw bytes are never "
                           "published or audited, pass JSON values")
    _walk(payload, where, "", 0)
    try:
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        size = len(text.encode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise PrivacyError(f"privacy guard: {where} is not plain JSON: {exc}") from exc
    if size > MAX_PAYLOAD_BYTES:
        raise PrivacyError(f"privacy guard: {where} of {size} bytes exceeds "
                           f"{MAX_PAYLOAD_BYTES} (payloads carry facts, not data)")


def clip(text: str, limit: int = MAX_STRING_CHARS) -> str:
    """``text`` shortened to at most ``limit`` characters (ending in ``…`` when cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _refuse(where: str, path: str, problem: str) -> PrivacyError:
    return PrivacyError(f"privacy guard: {where} at {path or '(top level)'}: {problem}")


def key_words(key: str) -> set[str]:
    """The words of ``key`` as the policy compares them (lower case, and run together)."""
    words = {word.lower() for word in _KEY_SPLIT_RE.split(key) if word}
    words.add(re.sub(r"[^a-z0-9]", "", key.lower()))
    return words


def count_numbers(items: list[object] | tuple[object, ...]) -> int:
    """Numbers in ``items``, counted through nested lists (bools are not numbers)."""
    count = 0
    for item in items:
        if isinstance(item, bool):
            continue
        if isinstance(item, int | float):
            count += 1
        elif isinstance(item, list | tuple):
            count += count_numbers(item)
    return count


def _walk(value: object, where: str, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _refuse(where, path, f"nested deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _refuse(where, path, f"non-finite number {value}")
        return
    if isinstance(value, str):
        _check_string(value, where, path)
        return
    if isinstance(value, bytes | bytearray | memoryview):
        raise _refuse(where, path, "bytes are not plain JSON; binary data (an image, a face "
                                   "chip, an embedding) is never published or audited")
    if hasattr(value, "__array__") or hasattr(value, "tolist"):
        raise _refuse(where, path, f"an array ({type(value).__name__}) is not plain JSON "
                                   "and may be an embedding")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _refuse(where, path, f"non-string key {key!r}")
            _check_string(key, where, path)
            _check_key(key, item, where, path)
            _walk(item, where, f"{path}/{key}", depth + 1)
        return
    if isinstance(value, list | tuple):
        numbers = count_numbers(value)
        if numbers >= MAX_NUMBERS_PER_LIST:
            raise _refuse(where, path, f"a list of {numbers} numbers looks like an embedding "
                                       f"(at most {MAX_NUMBERS_PER_LIST - 1})")
        for index, item in enumerate(value):
            _walk(item, where, f"{path}/{index}", depth + 1)
        return
    raise _refuse(where, path, f"a value of type {type(value).__name__} is not plain JSON")


def _check_key(key: str, value: object, where: str, path: str) -> None:
    allowed = ALLOWED_KEYS.get(key)
    if allowed is not None and isinstance(value, allowed) and not isinstance(value, bool):
        return
    hits = key_words(key) & FORBIDDEN_KEY_WORDS
    if hits:
        raise _refuse(where, path, f"key {key!r} names biometric data ({', '.join(sorted(hits))})"
                                   "; payloads carry facts (ids, versions, scores), never "
                                   "images or embeddings")


def _char_class(char: str) -> int:
    if char.isdigit():
        return 0
    if char.isupper():
        return 1
    return 2 if char.islower() else 3


def looks_random(run: str) -> bool:
    """Whether a long run without spaces looks like encoded binary data.

    Topic paths, URLs, snake_case and camelCase ids use the alphabet of base64 (or
    base85) but change between upper case, lower case, digits and punctuation rarely
    (once or twice a word); base64 of binary data changes class at about two
    characters in three, base85 more often.
    """
    letters = _SEPARATORS_RE.sub("", run)
    if len(letters) < MIN_RANDOM_CHARS:
        return False
    if _BASE32_RE.fullmatch(letters):
        return True
    changes = sum(_char_class(a) != _char_class(b) for a, b in itertools.pairwise(letters))
    return changes / (len(letters) - 1) >= RANDOM_CLASS_CHANGE_RATE


def _check_string(value: str, where: str, path: str) -> None:
    if len(value) > MAX_STRING_CHARS:
        raise _refuse(where, path, f"a string {len(value)} characters long "
                                   f"(at most {MAX_STRING_CHARS})")
    if _DATA_URI_RE.search(value):
        raise _refuse(where, path, "a data URI")
    for run in _RUN_RE.findall(value):
        if _HEX_RE.fullmatch(run):
            if len(run) > MAX_HEX_CHARS:
                raise _refuse(where, path, f"a {len(run)}-character hex blob "
                                           f"(at most {MAX_HEX_CHARS})")
            continue
        if looks_random(run):
            raise _refuse(where, path, f"a {len(run)}-character base64-like blob")
    encoded = _ENCODED_RE.search(value)
    if encoded is not None:
        raise _refuse(where, path, f"a {len(encoded.group())}-character base64-like blob "
                                   f"(runs of base64/hex characters stop below "
                                   f"{MAX_ENCODED_CHARS})")
