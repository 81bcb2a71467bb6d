"""Helpers shared by every CLI verb: output, errors, logging, progress, shared options."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
from tqdm import tqdm

from device.errors import DeviceError
from device.paths import default_state_dir

P = ParamSpec("P")
R = TypeVar("R")

#: How every ``--help`` spells the default state directory.
STATE_DIR_HELP = ("<state dir> is $STATE_DIRECTORY, else $XDG_STATE_HOME/facegate, else "
                  "~/.local/state/facegate")

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of text."
)

#: The audit log, under one name for every command that records in it.
audit_log_option = click.option(
    "--audit-log", "audit_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
    help="Audit log to record in. [default: the config's, else <state dir>/audit.db if it "
         f"exists; {STATE_DIR_HELP}]")


def emit_json(obj: Any) -> None:
    """Print one JSON document on one line (JSON Lines when called repeatedly)."""
    click.echo(json.dumps(obj, separators=(",", ":"), default=str))


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn a :class:`DeviceError` into ``error: …`` on stderr and exit status 2."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except DeviceError as exc:
            click.echo(error_line(exc), err=True)
            sys.exit(2)

    return wrapper


def error_line(exc: Exception | str) -> str:
    """``error: <message>``, without doubling a prefix the message already has."""
    text = str(exc)
    return text if text.startswith("error") else f"error: {text}"


def setup_logging(verbose: int) -> None:
    """One logging set-up for the whole process; journald reads stderr."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )


@contextmanager
def reported_here(logger_name: str) -> Iterator[None]:
    """Silence a library logger whose outcome the command prints itself (unless ``-v``).

    The service logs a sync failure for the journal; the CLI prints the same outcome,
    so without this the operator reads it twice.
    """
    logger = logging.getLogger(logger_name)
    if logging.getLogger().getEffectiveLevel() < logging.WARNING:
        yield
        return
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


def announce_state_dir(*paths: Path | None) -> None:
    """Say on stderr which state directory a command writes to, when it writes there."""
    state = default_state_dir()
    for path in paths:
        if path is not None and path.absolute().is_relative_to(state):
            click.echo(f"facegate: state directory {state}", err=True)
            return


def progress_enabled(as_json: bool = False) -> bool:
    """The one rule for progress bars: stderr is a terminal, and JSON is not being piped."""
    if not sys.stderr.isatty():
        return False
    return not (as_json and not sys.stdout.isatty())


class Progress:
    """A progress bar on stderr; :meth:`echo` prints a line without tearing the bar."""

    def __init__(self, bar: tqdm[Any]) -> None:
        self._bar = bar

    def __call__(self, n: int = 1) -> None:
        self._bar.update(n)

    @contextmanager
    def printing(self) -> Iterator[None]:
        """Print inside this block: the bar is cleared before and redrawn after."""
        with self._bar.external_write_mode():
            yield


@contextmanager
def progress(total: int, desc: str, unit: str = "image", *,
             as_json: bool = False) -> Iterator[Progress]:
    """A tqdm bar on stderr for a command over many inputs, under :func:`progress_enabled`.

    Yields:
        A :class:`Progress`: call it after each input; print through its ``echo``.
    """
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr,
               disable=not progress_enabled(as_json), dynamic_ncols=True, mininterval=0.5)
    try:
        yield Progress(bar)
    finally:
        bar.close()
