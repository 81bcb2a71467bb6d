"""Operator accounts: roles, argon2 password hashes, lockout and CSRF tokens.

Roles are ordered: a ``viewer`` sees every page, a ``reviewer`` also records verdicts
(and has its own Ed25519 signing key), an ``admin`` also sees the access log.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from device.console.store import Store, User
from device.errors import ConfigError, SyncError
from device.events.schema import is_valid_id
from device.sync.keys import KeyFiles, generate_key

logger = logging.getLogger(__name__)

Role = Literal["viewer", "reviewer", "admin"]
ROLES: Final[tuple[Role, ...]] = ("viewer", "reviewer", "admin")
_RANK: Final[dict[str, int]] = {role: i for i, role in enumerate(ROLES)}
MIN_PASSWORD: Final = 10

_hasher: Final = PasswordHasher()


def allows(role: str, needed: Role) -> bool:
    """Whether an account of ``role`` may do what needs ``needed``."""
    return _RANK.get(role, -1) >= _RANK[needed]


def hash_password(password: str) -> str:
    """An argon2id hash of ``password``.

    Raises:
        ConfigError: The password is shorter than :data:`MIN_PASSWORD` characters.
    """
    if len(password) < MIN_PASSWORD:
        raise ConfigError(f"a password has at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


@dataclass(frozen=True, slots=True)
class Lockout:
    """Wrong passwords allowed in a row, and how long the account then stays locked."""

    attempts: int = 10
    lock_s: float = 900.0


@dataclass(frozen=True, slots=True)
class LoginResult:
    """What a login attempt gave: the user, or why not."""

    user: User | None
    problem: str | None = None


def login(store: Store, username: str, password: str, lockout: Lockout,
          now: float | None = None) -> LoginResult:
    """Check a password; the ``lockout.attempts``-th wrong one in a row locks the account."""
    now = time.time() if now is None else now
    user = store.user(username)
    if user is None:
        _hasher.hash(password)  # same work as a real check: names are not probed by timing
        return LoginResult(None, "wrong user name or password")
    if user.locked_until is not None and user.locked_until > now:
        minutes = max(1, round((user.locked_until - now) / 60))
        return LoginResult(None, f"account locked after {lockout.attempts} wrong passwords; "
                                 f"try again in {minutes} min")
    try:
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        failed = store.count_failed_login(username, lockout.attempts, lockout.lock_s)
        logger.warning("console: wrong password for %s (%d in a row)", username, failed)
        return LoginResult(None, "wrong user name or password")
    store.update_user(username, failed_logins=0, locked_until=None)
    if _hasher.check_needs_rehash(user.password_hash):
        store.update_user(username, password_hash=_hasher.hash(password))
    return LoginResult(user)


def add_user(store: Store, username: str, role: str, password: str, keys_dir: Path
             ) -> KeyFiles | None:
    """Create an account; a reviewer also gets a new Ed25519 key in ``keys_dir``.

    Raises:
        ConfigError: Bad name, role or password, the name is taken, or the key exists.
    """
    if not is_valid_id(username):
        raise ConfigError(f"user name {username!r}: letters, digits, '-' and '_' only")
    if role not in ROLES:
        raise ConfigError(f"role {role!r} is not one of {', '.join(ROLES)}")
    hashed = hash_password(password)
    if store.user(username) is not None:
        raise ConfigError(f"user {username!r} exists already")
    keys = None
    if allows(role, "reviewer"):
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            keys = generate_key(keys_dir, f"reviewer-{username}")
        except SyncError as exc:
            raise ConfigError(f"cannot make the reviewer key of {username}: {exc}") from exc
    store.add_user(username, role, hashed, keys.keyid if keys else None,
                   str(keys.private) if keys else None)
    return keys


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_ok(expected: str | None, given: str | None) -> bool:
    """Whether the form's token is the session's (in constant time)."""
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))
