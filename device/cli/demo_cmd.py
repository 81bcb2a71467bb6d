"""``facegate demo``: enrol, replay, publish to a broker, show the events as they arrive."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import click

from device.cli.common import emit_json, handle_errors, json_option


@click.command("demo")
@click.option("--clip", is_flag=True,
              help="Enrol the two people of media/video/enroll and replay "
                   "short_hamilton_clip.mp4 from the shared datasets, instead of the "
                   "scikit-image sample pictures.")
@click.option("--datasets", "datasets", type=click.Path(file_okay=False, path_type=Path),
              default=None,
              help="The shared datasets folder for --clip. [default: $FACEGATE_DATASETS, "
                   "else ../shared/datasets beside the repository]")
@click.option("--broker", "broker_url", default=None, metavar="URL",
              help="Publish to this broker (mqtt://host[:port] or mqtts://...). [default: "
                   "start a private mosquitto on 127.0.0.1 for the run]")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the gallery, state, frames and broker files here (a folder the "
                   "demo made before is cleared first). [default: a temporary folder, "
                   "removed at the end]")
@json_option
@handle_errors
def demo_command(clip: bool, datasets: Path | None, broker_url: str | None,
                 workdir: Path | None, as_json: bool) -> None:
    """Run the whole path end to end, with no set-up: enrol, replay, publish, show.

    \b
    Default: public-domain pictures that ship in scikit-image. NASA's portrait of
    astronaut Eileen Collins (skimage.data.astronaut) is enrolled; the replay shows
    it, a mirrored and rescaled copy of it on a larger canvas, and photos with no
    face (coffee, a cat, a rocket, coins). Expected: matches for Eileen Collins only.
    With --clip: the Hamilton clip and its two enrolment photos (shared datasets).

    \b
    Broker: unless --broker is given, the demo starts mosquitto (the broker units
    talk to in the field, from the OS package provisioning/setup-dev.sh installs) on
    a free 127.0.0.1 port, so the demo uses the same MQTT 5 path as production.

    The models are built if needed (as `facegate models build`), the threshold is the
    shipped calibration's at the default target false-match rate (1e-4), and every
    frame is processed (not paced in real time). Each match is printed as it arrives
    on facegate/demo/#; --json prints the raw event payloads as JSON lines, then a
    summary object. Exit status 0 when every published event arrived, 1 when not,
    2 on errors (missing datasets, models, mosquitto).
    """
    from device.ops.demo import Demo, format_event, format_summary

    def say(text: str) -> None:
        click.echo(text, err=as_json)

    def on_event(topic: str, payload: dict[str, Any]) -> None:
        if as_json:
            emit_json(payload)
            return
        line = format_event(payload)
        if line is not None:
            click.echo(line)

    demo = Demo(clip=clip, datasets=datasets, broker_url=broker_url, workdir=workdir,
                say=say, on_event=on_event)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        demo.request_stop(f"signal {signal.Signals(signum).name}")

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = demo.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if as_json:
        emit_json({"summary": result.to_json()})
    else:
        for line in format_summary(result):
            click.echo(line)
    if not result.all_arrived:
        sys.exit(1)
