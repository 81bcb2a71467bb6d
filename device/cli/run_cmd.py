"""``facegate run`` (the recognition service) and ``facegate status`` (its health)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import click

from device.cli.common import STATE_DIR_HELP, emit_json, handle_errors, json_option
from device.paths import default_state_dir
from device.service.config import HEALTH_FILENAME, FacegateConfig, load_config


@click.command("run")
@click.option("--config", "config_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="The unit's TOML configuration (see provisioning/config.example.toml).")
@click.option("--check", is_flag=True,
              help="Validate the configuration and exit (prints the resolved paths).")
@handle_errors
def run_command(config_path: Path, check: bool) -> None:
    """Run the recognition service until SIGTERM/SIGINT or until every camera ends.

    Cameras → bounded queue → detect → quality → track → embed → search → decision
    → audit + outbox → MQTT. Tells systemd READY=1 once running and pings its
    watchdog from the frame loop. Exits 0 after a signal or when every camera ended,
    1 when the service stopped on an error (every camera failed, a worker crashed) or
    the cameras ended while the gallery was refused (damaged or empty: nothing matched).
    """
    config, digest = load_config(config_path)
    if check:
        click.echo(f"{config_path}: valid (sha256 {digest})")
        click.echo(f"  unit {config.unit_id}, cameras {', '.join(config.camera_ids)}")
        click.echo(f"  gallery {config.gallery_path}")
        click.echo(f"  outbox  {config.mqtt.outbox_path}")
        click.echo(f"  audit   {config.audit_path}")
        click.echo(f"  health  {config.health_path}")
        return
    from device.service.pipeline import RecognitionService

    service = RecognitionService(config, config_sha256=digest)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        service.request_stop(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with service:
        reason = service.run()
        health = service.health()
        dropped = drop_report(config, health["pipeline"])
    click.echo(f"stopped: {reason}", err=True)
    for line in dropped:
        click.echo(line, err=True)
    refused = health["gallery"]["state"] == "refused"
    if refused:
        click.echo(f"no face was matched: the gallery was refused: {health['gallery']['error']}",
                   err=True)
    if reason.startswith(("error", "every camera stopped")) or (
            refused and not reason.startswith("signal")):
        sys.exit(1)


#: Camera types that replay recorded frames: no frame needs to be lost.
REPLAY_TYPES = frozenset({"video", "image"})


def drop_report(config: FacegateConfig, pipeline: dict[str, Any]) -> list[str]:
    """What ``run`` says at the end about frames the full queue discarded (nothing if none).

    A replayed file loses frames only because of ``drop_oldest``: the hint names
    ``queue_policy = "block"``, which waits for the worker instead.
    """
    dropped, offered = int(pipeline.get("frames_dropped", 0)), int(pipeline.get("frames_in", 0))
    if dropped == 0:
        return []
    lines = [f"frames dropped {dropped} of {offered} (queue full, "
             f"queue_policy = \"{config.pipeline.queue_policy}\")"]
    replays = [c.camera_id for c in config.cameras if c.type in REPLAY_TYPES]
    if replays and config.pipeline.queue_policy == "drop_oldest":
        lines.append(f"hint: {', '.join(replays)} replay{'s' if len(replays) == 1 else ''} "
                     "a file; set queue_policy = \"block\" in [pipeline] to process "
                     "every frame")
    return lines


@click.command("status")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The unit's configuration (to find its health file). [default: "
                   f"<state dir>/{HEALTH_FILENAME}; {STATE_DIR_HELP}]")
@click.option("--file", "health_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Read this health file instead.")
@json_option
@handle_errors
def status_command(config_path: Path | None, health_file: Path | None, as_json: bool) -> None:
    """Show the service's health: cameras, frame rates, drops, stage latency, outbox.

    Reads the snapshot the service writes atomically every health interval (the
    same payload it publishes, retained, on facegate/<unit>/health), so it works
    with the broker down. The snapshot's age tells whether the service is running.
    """
    from device.service.health import format_status, read_health_file

    if health_file is None:
        if config_path is not None:
            health_file = load_config(config_path)[0].health_path
        else:
            health_file = default_state_dir() / HEALTH_FILENAME
    health = read_health_file(health_file)
    if as_json:
        emit_json(health)
    else:
        click.echo(format_status(health))
