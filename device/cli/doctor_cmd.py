"""``facegate doctor``: one line per check, OK or a plain-words fix; exit 1 on any FAIL."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from device.cli.common import emit_json, json_option
from device.ops import doctor


@click.command("doctor")
@click.option(
    "--config", "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=doctor.UNIT_CONFIG, show_default=True, envvar="FACEGATE_CONFIG",
    help="The unit's config file.",
)
@click.option(
    "--credentials-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where credential names (mqtt-password, tls-key.pem) resolve. [default: "
    "$CREDENTIALS_DIRECTORY, else /etc/facegate/credentials when it exists]",
)
@click.option("--camera-timeout", type=click.FloatRange(min=0.1), default=10.0,
              show_default=True, help="Seconds a camera may take to deliver a frame.")
@click.option("--broker-timeout", type=click.FloatRange(min=0.1), default=5.0,
              show_default=True, help="Seconds the broker may take to answer.")
@json_option
def doctor_command(config_path: Path, credentials_dir: Path | None, camera_timeout: float,
                   broker_timeout: float, as_json: bool) -> None:
    """Check that this unit can run: config, cameras, Edge TPU, models, gallery, broker,
    clock, disk, state directory.

    Prints one line per check, OK or what is wrong and how to fix it. Exits 0 when
    nothing failed (warnings allowed), 1 otherwise. Run it with sudo on a unit (it
    reads the credentials as systemd does); stop the service first if a camera is busy.
    """
    options = doctor.DoctorOptions(
        config_path=config_path,
        credentials_dir=credentials_dir or doctor.default_credentials_dir(),
        camera_timeout_s=camera_timeout,
        broker_timeout_s=broker_timeout,
    )
    results = doctor.run_checks(options)
    code = doctor.exit_code(results)
    if as_json:
        emit_json({"ok": code == 0, "checks": [r.to_json() for r in results]})
    else:
        for result in results:
            click.echo(result.line())
        failed = sum(r.status is doctor.Status.FAIL for r in results)
        warned = sum(r.status is doctor.Status.WARN for r in results)
        click.echo(f"{len(results)} checks: {failed} failed, {warned} warnings")
    sys.exit(code)
