"""The ``facegate`` command line. Thin: parses, calls the library, prints.

Each verb module defines its commands and groups without knowing about ``main``;
this module registers every one of them explicitly, so the command tree is read
here in one place.
"""

from __future__ import annotations

import click

from device import __version__
from device.cli import (
    audit_cmd,
    bench_embed,
    bench_fleet,
    bench_pipeline,
    bench_search,
    calibrate_cmd,
    console_cmd,
    demo_cmd,
    detect_cmd,
    doctor_cmd,
    embed_cmd,
    enroll_cmd,
    eval_cmd,
    eval_identify_cmd,
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


def _register() -> None:
    for command in (bench_embed.bench_embed, bench_embed.bench_embed_compare,
                    bench_embed.bench_embed_int8,
                    bench_fleet.bench_fleet, bench_pipeline.bench_pipeline,
                    bench_search.bench_search,
                    detect_cmd.bench_detect):
        bench.add_command(command)
    gallery_cmd.gallery_group.add_command(enroll_cmd.enroll)
    gallery_cmd.gallery_group.add_command(enroll_cmd.enroll_dir)
    eval_cmd.eval_group.add_command(eval_identify_cmd.eval_identify)
    for command in (
        audit_cmd.audit_group, bench, calibrate_cmd.calibrate, console_cmd.console_group,
        demo_cmd.demo_command,
        detect_cmd.detect, doctor_cmd.doctor_command, embed_cmd.embed, eval_cmd.eval_group,
        gallery_cmd.gallery_group, identify_cmd.identify, keys_cmd.keys_group,
        models_cmd.models_group, run_cmd.run_command, run_cmd.status_command,
        sync_cmd.sync_group,
    ):
        main.add_command(command)


_register()
