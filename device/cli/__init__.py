"""The ``facegate`` command line. Thin: parses, calls the library, prints.

Each verb group lives in its own module and is registered here.
"""

from __future__ import annotations

import click

from device import __version__
from device.cli.common import setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="facegate")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """facegate: on-device face recognition that publishes only match events."""
    setup_logging(verbose)


@main.group()
def bench() -> None:
    """Benchmarks: printed tables, never pass/fail."""


# Verb registration: one import per module; each module attaches its commands to
# `main` or `bench`.
from device.cli import models_cmd  # noqa: E402,F401

from device.cli import audit_cmd  # noqa: E402,F401  # isort: skip
from device.cli import detect_cmd  # noqa: E402,F401  # isort: skip
from device.cli import bench_embed  # noqa: E402,F401  # isort: skip
from device.cli import gallery_cmd  # noqa: E402,F401  # isort: skip
from device.cli import bench_search  # noqa: E402,F401  # isort: skip
from device.cli import keys_cmd  # noqa: E402,F401  # isort: skip
from device.cli import sync_cmd  # noqa: E402,F401  # isort: skip
from device.cli import doctor_cmd  # noqa: E402,F401  # isort: skip
from device.cli import run_cmd  # noqa: E402,F401  # isort: skip
from device.cli import bench_pipeline  # noqa: E402,F401  # isort: skip
from device.cli import enroll_cmd  # noqa: E402,F401  # isort: skip
from device.cli import identify_cmd  # noqa: E402,F401  # isort: skip
from device.cli import calibrate_cmd  # noqa: E402,F401  # isort: skip
from device.cli import eval_identify_cmd  # noqa: E402,F401  # isort: skip
from device.cli import embed_cmd  # noqa: E402,F401  # isort: skip
from device.cli import eval_cmd  # noqa: E402,F401  # isort: skip
from device.cli import demo_cmd  # noqa: E402,F401  # isort: skip
