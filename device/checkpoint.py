"""Named checkpoints: a crash test's hook into a sequence of durable steps.

Code whose crash safety is argued step by step (the sync's apply, the decision
sink) calls ``checkpoint(name)`` before every step that changes the disk. In
production the callback does nothing. A crash test supplies its own — passed in
directly, or, for a whole process such as ``facegate run`` that a test starts as a
child, named by the environment variable :data:`HOOK_ENV` as ``module:attribute``
(imported once; a callable taking the checkpoint name). The code under test never
knows which names a test acts on, nor what it does there.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping

from device.errors import ConfigError

logger = logging.getLogger(__name__)

Checkpoint = Callable[[str], None]

#: ``module:attribute`` of a checkpoint hook to load (tests only; unset in production).
HOOK_ENV = "FACEGATE_CHECKPOINT_HOOK"


def no_checkpoint(name: str) -> None:
    """The default checkpoint: does nothing."""


def checkpoint_from_env(env: Mapping[str, str] | None = None) -> Checkpoint:
    """The hook ``$FACEGATE_CHECKPOINT_HOOK`` names, else :func:`no_checkpoint`.

    Raises:
        ConfigError: The variable is set but does not name an importable callable.
    """
    spec = (os.environ if env is None else env).get(HOOK_ENV, "").strip()
    if not spec:
        return no_checkpoint
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"{HOOK_ENV}={spec!r}: expected module:attribute")
    try:
        hook = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{HOOK_ENV}={spec!r} cannot be loaded: {exc}") from exc
    if not callable(hook):
        raise ConfigError(f"{HOOK_ENV}={spec!r} is not callable")
    logger.warning("checkpoint hook %s is active (a crash-test hook: unset %s on a unit)",
                   spec, HOOK_ENV)
    checkpoint: Checkpoint = hook
    return checkpoint
