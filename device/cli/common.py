"""Helpers shared by every CLI verb: output, errors, logging."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import click

from device.errors import DeviceError

P = ParamSpec("P")
R = TypeVar("R")

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of text."
)


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
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


def setup_logging(verbose: int) -> None:
    """One logging set-up for the whole process; journald reads stderr."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
