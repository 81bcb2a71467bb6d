"""Getting a payload onto the unit: capped, verified per chunk, resumable.

Whatever the source (MQTT chunks, an HTTPS URL, a file on a USB stick), the bytes
land in a staging directory and are checked against the signed manifest *as they
arrive*: never more than ``payload.length`` bytes are accepted (a source that keeps
sending is cut off at ``length + 1``), every ``chunk_size`` bytes are compared with
that chunk's signed sha256, and the whole file with ``payload.sha256``. A download
that is interrupted keeps every verified chunk and continues after the last one.

* :class:`PartialPayload`: the sequential ``payload.part`` file (HTTP, file copy,
  assembly of MQTT chunks).
* :class:`ChunkStore`: one file per MQTT chunk, since chunks arrive in any order.
* :func:`fetch_http`: ``urllib`` with ``Range`` requests. Production requires
  ``https://``; plain ``http://`` only with ``allow_insecure_http`` (tests).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.error
import urllib.request
from email.message import Message
from http.client import HTTPMessage
from pathlib import Path
from typing import IO, Final

from device.errors import SyncError
from device.sync.fsutil import Checkpoint, fsync_dir, no_checkpoint
from device.sync.manifest import PayloadInfo
from device.sync.reasons import Reason, SyncRefusedError

logger = logging.getLogger(__name__)

READ_BLOCK: Final = 64 * 1024
PART_NAME: Final = "payload.part"
PAYLOAD_NAME: Final = "payload"
_CONTENT_RANGE: Final = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class PartialPayload:
    """``payload.part`` in a staging directory, written strictly in order.

    Args:
        directory: The staging directory (exists).
        info: The signed payload description.
        checkpoint: Called before each write and fsync (crash tests).
    """

    def __init__(self, directory: Path, info: PayloadInfo,
                 checkpoint: Checkpoint = no_checkpoint) -> None:
        self.directory = directory
        self.info = info
        self.part = directory / PART_NAME
        self.final = directory / PAYLOAD_NAME
        self._cp = checkpoint
        self._fh: IO[bytes] | None = None
        self._size = 0
        self._chunk = hashlib.sha256()
        self._chunk_fill = 0

    @property
    def size(self) -> int:
        """Bytes accepted so far (every whole chunk among them verified)."""
        return self._size

    @property
    def complete(self) -> bool:
        return self.final.is_file()

    def resume(self) -> int:
        """Keep the verified whole chunks of an earlier attempt and drop the rest.

        Returns:
            The offset to continue from.

        Raises:
            OSError: The file cannot be read or truncated.
        """
        self.close()
        keep = 0
        if self.part.is_file():
            with self.part.open("rb") as fh:
                for index, want in enumerate(self.info.chunks):
                    start, end = self.info.chunk_span(index)
                    data = fh.read(end - start)
                    if len(data) != end - start or hashlib.sha256(data).hexdigest() != want:
                        break
                    keep = end
            if keep != self.part.stat().st_size:
                self._cp("fetch.truncate")
                os.truncate(self.part, keep)
        self._size = keep
        self._chunk = hashlib.sha256()
        self._chunk_fill = 0
        if keep:
            logger.info("resuming payload download at byte %d of %d", keep, self.info.length)
        return keep

    def restart(self) -> None:
        """Discard everything (the source cannot resume).

        Raises:
            OSError: The file cannot be removed.
        """
        self.close()
        self.part.unlink(missing_ok=True)
        self._size = 0
        self._chunk = hashlib.sha256()
        self._chunk_fill = 0

    def _open(self) -> IO[bytes]:
        if self._fh is None:
            fd = os.open(self.part, os.O_WRONLY | os.O_CREAT, 0o600)
            self._fh = os.fdopen(fd, "wb")
            self._fh.seek(self._size)
        return self._fh

    def write(self, data: bytes) -> None:
        """Accept the next bytes, verifying each chunk as it completes.

        Raises:
            SyncRefusedError: ``too_large`` past ``length`` (endless data) or
                ``hash_mismatch`` when a chunk is not the signed one; the bad bytes
                are discarded.
            OSError: The file cannot be written.
        """
        if self._size + len(data) > self.info.length:
            self._discard_chunk()
            raise SyncRefusedError(Reason.TOO_LARGE,
                                   f"the source sent more than the {self.info.length} bytes the "
                                   "manifest states")
        view = memoryview(data)
        while view:
            index = self._size // self.info.chunk_size
            end = self.info.chunk_span(index)[1]
            take = min(len(view), end - self._size)
            piece = view[:take]
            self._cp(f"fetch.write[{index}]")
            fh = self._open()
            fh.write(piece)
            self._chunk.update(piece)
            self._size += take
            self._chunk_fill += take
            view = view[take:]
            if self._size == end:
                if self._chunk.hexdigest() != self.info.chunks[index]:
                    self._discard_chunk()
                    raise SyncRefusedError(Reason.HASH_MISMATCH,
                                           f"chunk {index} is not the one the manifest signed")
                fh.flush()
                self._cp(f"fetch.fsync[{index}]")
                os.fsync(fh.fileno())
                self._chunk = hashlib.sha256()
                self._chunk_fill = 0

    def _discard_chunk(self) -> None:
        """Drop the bytes of the chunk in progress (they are not verified)."""
        self.close()
        self._size -= self._chunk_fill
        if self.part.exists():
            os.truncate(self.part, self._size)
        self._chunk = hashlib.sha256()
        self._chunk_fill = 0

    def finish(self) -> Path:
        """Check the whole payload and move it to its final name.

        Returns:
            The verified payload file.

        Raises:
            SyncRefusedError: ``hash_mismatch`` when the whole file's sha256 differs
                (the part file is discarded).
            SyncError: Fewer than ``length`` bytes arrived.
            OSError: The file cannot be read or renamed.
        """
        self.close()
        if self._size != self.info.length:
            raise SyncError(f"payload incomplete: {self._size} of {self.info.length} bytes")
        digest = hashlib.sha256()
        with self.part.open("rb") as fh:
            while block := fh.read(READ_BLOCK):
                digest.update(block)
        if digest.hexdigest() != self.info.sha256:
            self.restart()
            raise SyncRefusedError(Reason.HASH_MISMATCH,
                                   "the payload's sha256 differs from the one the manifest signed")
        self._cp("fetch.rename")
        os.replace(self.part, self.final)
        self._cp("fetch.fsync_dir")
        fsync_dir(self.directory)
        return self.final

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def copy_file(source: Path, part: PartialPayload) -> Path:
    """Copy a payload file (offline delivery) through the caps and checks.

    The file's size is compared with the manifest before a byte is read. Unlike a
    download, a file on disk is all there is: one shorter than stated is not the
    payload the manifest signed (a truncated copy, or another bundle's), so it is
    refused like one whose bytes differ.

    Raises:
        SyncRefusedError: ``too_large`` when the file is longer than stated,
            ``hash_mismatch`` when it is shorter or its content differs.
        SyncError: The file is unreadable.
    """
    try:
        size = source.stat().st_size
    except OSError as exc:
        raise SyncError(f"cannot read payload {source}: {exc}") from exc
    if size > part.info.length:
        raise SyncRefusedError(Reason.TOO_LARGE, f"payload file is {size} bytes; the manifest "
                               f"states {part.info.length}")
    if size < part.info.length:
        raise SyncRefusedError(Reason.HASH_MISMATCH, f"payload file is {size} bytes; the "
                               f"manifest states {part.info.length}: not the payload it "
                               "signed (a truncated copy, or another bundle's)")
    offset = part.resume()
    try:
        with source.open("rb") as fh:
            fh.seek(offset)
            while block := fh.read(min(READ_BLOCK, part.info.length - part.size + 1)):
                part.write(block)
    except OSError as exc:
        raise SyncError(f"cannot read payload {source}: {exc}") from exc
    return part.finish()


# ------------------------------------------------------------------------ MQTT


class ChunkStore:
    """MQTT chunks of one payload, one file each under ``<staging>/chunks/``.

    A chunk is stored only if it has exactly its span's length and its signed
    sha256; anything else is discarded. Chunks on disk from an interrupted
    transfer are re-verified by :meth:`scan` and never fetched again.

    Args:
        directory: The staging directory.
        info: The signed payload description.
        checkpoint: Called before each write, fsync and rename.
    """

    def __init__(self, directory: Path, info: PayloadInfo,
                 checkpoint: Checkpoint = no_checkpoint) -> None:
        self.info = info
        self.directory = directory / "chunks"
        self._cp = checkpoint
        self._have: set[int] = set()

    def scan(self) -> frozenset[int]:
        """Re-verify chunk files on disk; delete bad ones.

        Returns:
            The indices present and valid.

        Raises:
            OSError: The directory cannot be read.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        have: set[int] = set()
        for path in self.directory.iterdir():
            index = int(path.name) if path.name.isdigit() else -1
            ok = 0 <= index < len(self.info.chunks)
            if ok:
                start, end = self.info.chunk_span(index)
                data = path.read_bytes() if path.stat().st_size == end - start else b""
                ok = hashlib.sha256(data).hexdigest() == self.info.chunks[index]
            if ok:
                have.add(index)
            else:
                path.unlink()
        self._have = have
        return frozenset(have)

    @property
    def missing(self) -> tuple[int, ...]:
        return tuple(i for i in range(len(self.info.chunks)) if i not in self._have)

    @property
    def complete(self) -> bool:
        return len(self._have) == len(self.info.chunks)

    def put(self, index: int, data: bytes) -> bool:
        """Store chunk ``index`` if it is the signed one.

        Returns:
            True when stored now; False when already present.

        Raises:
            SyncRefusedError: ``too_large`` when it is longer than its span,
                ``hash_mismatch`` when its content is not the signed one.
            IndexError: No such chunk.
            OSError: The file cannot be written.
        """
        start, end = self.info.chunk_span(index)
        if index in self._have:
            return False
        if len(data) > end - start:
            raise SyncRefusedError(Reason.TOO_LARGE, f"chunk {index} is {len(data)} bytes; its "
                                   f"span is {end - start}")
        if len(data) != end - start or hashlib.sha256(data).hexdigest() != self.info.chunks[index]:
            raise SyncRefusedError(Reason.HASH_MISMATCH,
                                   f"chunk {index} is not the one the manifest signed")
        tmp = self.directory / f".{index}.tmp"
        self._cp(f"chunk.write[{index}]")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            self._cp(f"chunk.fsync[{index}]")
            os.fsync(fd)
        finally:
            os.close(fd)
        self._cp(f"chunk.rename[{index}]")
        os.replace(tmp, self.directory / str(index))
        self._have.add(index)
        return True

    def assemble(self, part: PartialPayload) -> Path:
        """Concatenate the chunks through ``part`` (re-verifying) into the payload.

        Raises:
            SyncRefusedError: As :meth:`PartialPayload.write` and :meth:`PartialPayload.finish`.
            SyncError: Chunks are missing.
            OSError: Files cannot be read or written.
        """
        if not self.complete:
            raise SyncError(f"payload incomplete: {len(self.missing)} chunks missing")
        offset = part.resume()
        first = offset // self.info.chunk_size
        for index in range(first, len(self.info.chunks)):
            part.write((self.directory / str(index)).read_bytes())
        return part.finish()


# ------------------------------------------------------------------------ HTTP


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to https:// (or anywhere when insecure HTTP is allowed)."""

    def __init__(self, allow_insecure: bool) -> None:
        self.allow_insecure = allow_insecure

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int,
                         msg: str, headers: HTTPMessage, newurl: str
                         ) -> urllib.request.Request | None:
        if not newurl.startswith("https://") and not self.allow_insecure:
            raise SyncRefusedError(Reason.INSECURE_URL, "the payload URL redirects away from https://")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def check_url(url: str, *, allow_insecure: bool) -> None:
    """Refuse a payload URL that is not https:// (unless insecure HTTP is allowed).

    Raises:
        SyncRefusedError: ``insecure_url``.
    """
    if url.startswith("https://"):
        return
    if url.startswith("http://") and allow_insecure:
        return
    raise SyncRefusedError(Reason.INSECURE_URL, "the payload URL must be https:// "
                           "(allow_insecure_http is for tests only)")


def fetch_http(url: str, part: PartialPayload, *, allow_insecure: bool = False,
               timeout_s: float = 30.0) -> Path:
    """Download the payload, continuing an interrupted download with a Range request.

    The server's ``Content-Length`` is compared with what is left before reading;
    reading stops one byte past ``length`` whatever the server says.

    Args:
        url: The payload URL from the signed manifest.
        part: The staging file.
        allow_insecure: Accept ``http://`` (tests on 127.0.0.1 only).
        timeout_s: Socket timeout per operation.

    Returns:
        The verified payload file.

    Raises:
        SyncRefusedError: ``insecure_url``, ``too_large`` or ``hash_mismatch``.
        SyncError: The server fails, the connection breaks (verified chunks are
            kept for the next attempt), or the response makes no sense.
    """
    check_url(url, allow_insecure=allow_insecure)
    length = part.info.length
    offset = part.resume()
    if offset < length:
        opener = urllib.request.build_opener(_NoDowngrade(allow_insecure))
        headers = {"Accept-Encoding": "identity", "User-Agent": "facegate-sync/1"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            with opener.open(request, timeout=timeout_s) as resp:
                _read_response(resp, part, offset)
        except SyncRefusedError:
            raise
        except urllib.error.HTTPError as exc:
            raise SyncError(f"payload download failed: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            part.close()
            raise SyncError(f"payload download interrupted at byte {part.size} of {length}: "
                            f"{exc}") from exc
    return part.finish()


def _read_response(resp: IO[bytes], part: PartialPayload, offset: int) -> None:
    status = int(getattr(resp, "status", 200))
    headers: Message = getattr(resp, "headers", Message())
    if status == 206:
        match = _CONTENT_RANGE.fullmatch(headers.get("Content-Range", "").strip())
        if match is None or int(match.group(1)) != offset:
            raise SyncError("the server answered a Range request with the wrong range")
    elif status == 200:
        if offset:
            logger.info("server ignored the Range request; downloading from the start")
            part.restart()
            offset = 0
    else:
        raise SyncError(f"payload download failed: HTTP {status}")
    declared = headers.get("Content-Length")
    if declared is not None and declared.strip().isdigit() and (
            offset + int(declared) > part.info.length):
        raise SyncRefusedError(Reason.TOO_LARGE, f"the server announces {offset + int(declared)} "
                               f"bytes; the manifest states {part.info.length}")
    while True:
        block = resp.read(min(READ_BLOCK, part.info.length - part.size + 1))
        if not block:
            break
        part.write(block)
    part.close()
