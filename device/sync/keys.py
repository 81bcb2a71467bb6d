"""Ed25519 keys for gallery bundles: generating, loading, and the unit's trusted set.

* A **private key** is a PEM (PKCS#8, unencrypted) file written with mode 0600, or
  a raw 32-byte seed file. It lives with the operator, never on a unit.
* A **public key** is a PEM (SubjectPublicKeyInfo) file or a raw 32-byte file.
* A key's **id** is the sha256 (hex, 64 digits) of its raw 32 public bytes, so the
  same key always has the same id whatever file format carries it.
* The unit's **trusted keys** are a directory with one public key file per key,
  provisioned with the unit (under systemd, passed as a directory credential:
  ``LoadCredential=trusted-keys:/etc/facegate/credentials/trusted-keys``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from device.errors import ConfigError, SyncError

logger = logging.getLogger(__name__)

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
_MAX_KEY_FILE = 16 * 1024
_MAX_TRUSTED = 64


def key_id(public: Ed25519PublicKey) -> str:
    """sha256 (hex) of the raw 32-byte public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _read_key_file(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > _MAX_KEY_FILE:
            raise SyncError(f"{path} is {size} bytes; a key file is a few hundred")
        return path.read_bytes()
    except OSError as exc:
        raise SyncError(f"cannot read key file {path}: {exc}") from exc


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key (PEM PKCS#8 or a raw 32-byte seed).

    Warns when the file is readable by group or others.

    Raises:
        SyncError: The file is unreadable or not an Ed25519 private key.
    """
    data = _read_key_file(path)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise SyncError(f"cannot read key file {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("private key %s is accessible by other users; chmod 600 it", path)
    if len(data) == 32 and not data.startswith(b"-----"):
        return Ed25519PrivateKey.from_private_bytes(data)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SyncError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SyncError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read an Ed25519 public key (PEM SubjectPublicKeyInfo or raw 32 bytes).

    Raises:
        SyncError: The file is unreadable, holds a private key, or is not an Ed25519
            public key.
    """
    data = _read_key_file(path)
    if len(data) == 32 and not data.startswith(b"-----"):
        return Ed25519PublicKey.from_public_bytes(data)
    if b"PRIVATE KEY" in data:
        raise SyncError(f"{path} holds a private key; a unit trusts public keys only "
                        f"(copy the {PUBLIC_SUFFIX} file)")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SyncError(f"{path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SyncError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def load_any_public(path: Path) -> Ed25519PublicKey:
    """The public key of a public or a private key file.

    Raises:
        SyncError: The file is neither.
    """
    data = _read_key_file(path)
    if b"PRIVATE KEY" in data:
        return load_private_key(path).public_key()
    return load_public_key(path)


@dataclass(frozen=True)
class KeyFiles:
    """A generated key pair on disk.

    Attributes:
        keyid: The key's id.
        private: The private key file (mode 0600).
        public: The public key file, for the units' trusted keys directory.
    """

    keyid: str
    private: Path
    public: Path

    def to_json(self) -> dict[str, str]:
        return {"keyid": self.keyid, "private": str(self.private), "public": str(self.public)}


def generate_key(directory: Path, name: str) -> KeyFiles:
    """Create a new key pair as ``<name>.key`` (0600) and ``<name>.pub`` in ``directory``.

    Existing files are never overwritten.

    Raises:
        SyncError: A file exists already, the name is unusable, or writing fails.
    """
    if not name or "/" in name or name.startswith("."):
        raise SyncError(f"key name {name!r} must be a plain file name")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    private = directory / f"{name}{PRIVATE_SUFFIX}"
    public = directory / f"{name}{PUBLIC_SUFFIX}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for path in (private, public):
            if path.exists():
                raise SyncError(f"{path} exists already; choose another name")
        _write_new(private, private_pem, 0o600)
        _write_new(public, public_pem, 0o644)
    except OSError as exc:
        raise SyncError(f"cannot write key pair into {directory}: {exc}") from exc
    keyid = key_id(key.public_key())
    logger.info("generated key %s in %s", keyid, directory)
    return KeyFiles(keyid, private, public)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow what we asked for
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class TrustedKeys:
    """The public keys a unit accepts signatures from, by key id.

    Attributes:
        keys: Key id -> public key.
        source: Where they were loaded from (for messages).
    """

    keys: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)
    source: str = ""

    def get(self, keyid: str) -> Ed25519PublicKey | None:
        return self.keys.get(keyid)

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.keys))

    @classmethod
    def of(cls, *publics: Ed25519PublicKey) -> TrustedKeys:
        """Trust exactly these keys (tests, tools)."""
        return cls({key_id(p): p for p in publics}, "in memory")

    @classmethod
    def load(cls, location: str | Path, env: Mapping[str, str] | None = None, *,
             what: str = "gallery signing") -> TrustedKeys:
        """Load every public key file of a directory.

        ``location`` is a directory path, or a credential name: with
        ``$CREDENTIALS_DIRECTORY`` set, ``<creds>/<name>`` (a directory) or the files
        ``<creds>/<name>_*`` (systemd's naming for a directory credential) are used.
        Hidden files and ``README*`` are skipped; the same key in two files counts once.
        ``what`` names the keys' use in the log line.

        Raises:
            ConfigError: No such directory, no keys in it, or a file that is not an
                Ed25519 public key (provisioning mistakes must be loud).
        """
        files = _key_files(str(location), os.environ if env is None else env)
        keys: dict[str, Ed25519PublicKey] = {}
        for path in files:
            try:
                public = load_public_key(path)
            except SyncError as exc:
                raise ConfigError(f"trusted key file: {exc}") from exc
            kid = key_id(public)
            if kid in keys:
                logger.warning("trusted key %s appears in more than one file (%s)", kid[:16], path)
            keys[kid] = public
        if not keys:
            raise ConfigError(f"no trusted keys in {location}; provision at least one "
                              "public key (facegate keys generate)")
        if len(keys) > _MAX_TRUSTED:
            raise ConfigError(f"{len(keys)} trusted keys in {location}; at most {_MAX_TRUSTED}")
        logger.info("trusting %d %s key(s) from %s", len(keys), what, location)
        return cls(keys, str(location))


def _key_files(location: str, env: Mapping[str, str]) -> list[Path]:
    creds = env.get("CREDENTIALS_DIRECTORY")
    if "/" not in location and creds:
        base = Path(creds)
        if (base / location).is_dir():
            return _dir_files(base / location)
        prefixed = sorted(p for p in base.glob(f"{location}_*") if p.is_file())
        if prefixed:
            return prefixed
    path = Path(location).expanduser()
    if not path.is_dir():
        raise ConfigError(f"trusted keys directory {path} not found"
                          + ("" if creds else " (no $CREDENTIALS_DIRECTORY either)"))
    return _dir_files(path)


def _dir_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir()
                  if p.is_file() and not p.name.startswith(".")
                  and not p.name.upper().startswith("README"))
