"""The ``facegate`` command line. Thin: parses, calls the library, prints.

Each verb module defines its commands and groups without knowing about ``main``;
this module registers every one of them explicitly, so the command tree is read
here in one place.

The unit's verbs need only the unit's packages. The laboratory's (``eval``,
``calibrate``, ``bench``) are registered only when :mod:`device.lab` is installed and the
fleet's (``console``) only when :mod:`device.console` and its web stack are, so an
install that leaves those packages out (``[tool.hatch.build.targets.wheel] exclude``)
still has a whole ``facegate`` for a unit.
"""

from __future__ import annotations

import importlib.util
import logging

import click

from device import __version__
from device.cli import (
    audit_cmd,
    demo_cmd,
    detect_cmd,
    doctor_cmd,
    embed_cmd,
    enroll_cmd,
    gallery_cmd,
    identify_cmd,
    keys_cmd,
    models_cmd,
    run_cmd,
    sync_cmd,
)
from device.cli.common import setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="facegate")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """facegate: on-device face recognition that publishes only match events."""
    setup_logging(verbose)


@click.group("bench")
def bench() -> None:
    """Benchmarks: printed tables, never pass/fail."""


logger = logging.getLogger(__name__)


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except ImportError:  # a parent package is missing
        return False


def _register_unit() -> None:
    gallery_cmd.gallery_group.add_command(enroll_cmd.enroll)
    gallery_cmd.gallery_group.add_command(enroll_cmd.enroll_dir)
    for command in (
        audit_cmd.audit_group, demo_cmd.demo_command, detect_cmd.detect,
        doctor_cmd.doctor_command, embed_cmd.embed, gallery_cmd.gallery_group,
        identify_cmd.identify, keys_cmd.keys_group, models_cmd.models_group,
        run_cmd.run_command, run_cmd.status_command, sync_cmd.sync_group,
    ):
        main.add_command(command)


def _register_lab() -> None:
    from device.cli import (
        bench_embed,
        bench_fleet,
        bench_pipeline,
        bench_search,
        calibrate_cmd,
        eval_cmd,
        eval_conditions_cmd,
        eval_identify_cmd,
    )

    for command in (bench_embed.bench_embed, bench_embed.bench_embed_compare,
                    bench_embed.bench_embed_int8,
                    bench_fleet.bench_fleet, bench_pipeline.bench_pipeline,
                    bench_search.bench_search,
                    detect_cmd.bench_detect):
        bench.add_command(command)
    eval_cmd.eval_group.add_command(eval_identify_cmd.eval_identify)
    eval_cmd.eval_group.add_command(eval_conditions_cmd.eval_conditions)
    eval_cmd.eval_group.add_command(eval_conditions_cmd.eval_templates)
    eval_cmd.eval_group.add_command(eval_conditions_cmd.eval_clip)
    for command in (bench, calibrate_cmd.calibrate, eval_cmd.eval_group):
        main.add_command(command)


def _register_console() -> None:
    try:
        from device.cli import console_cmd
    except ImportError as exc:  # the package is there, its web stack is not
        logger.debug("facegate console unavailable: %s", exc)
        return
    main.add_command(console_cmd.console_group)


_register_unit()
if _installed("device.lab"):
    _register_lab()
# The console's web stack is an extra (`pip install 'facegate[console]'`), not a unit's.
if all(_installed(p) for p in ("device.console", "starlette", "sqlalchemy")):
    _register_console()
