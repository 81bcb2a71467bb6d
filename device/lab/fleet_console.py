"""The console's ingester as a process of its own, for the fleet bench.

``python -m device.lab.fleet_console STORE_URL BROKER_URL`` opens the store, starts
the console's real :class:`~device.console.ingest.Subscriber`, prints ``ready`` once
subscribed, and on end of input (or a ``stop`` line) stops and prints its counters as
one JSON line. A process of its own keeps its memory and CPU apart from the units'.
"""

from __future__ import annotations

import json
import logging
import sys

from device.console.ingest import Subscriber
from device.console.store import open_store
from device.events.client import BrokerLogin


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m device.lab.fleet_console STORE_URL BROKER_URL", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    store = open_store(argv[0])
    subscriber = Subscriber(store, BrokerLogin(argv[1]), "facegate-console-bench")
    subscriber.start()
    if not subscriber.subscribed.wait(60):
        print("the console did not subscribe within 60 s", file=sys.stderr)
        return 1
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    stats = subscriber.stats
    subscriber.stop()
    store.close()
    print(json.dumps({"stored": stats.stored, "duplicates": stats.duplicates,
                      "states": stats.states, "refused": stats.refused,
                      "received": stats.received}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
