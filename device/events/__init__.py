"""The event layer: what a unit publishes, how it is stored until acknowledged, and how.

``schema`` (payloads, JSON Schemas, encoding through :mod:`device.privacy`),
``outbox`` (durable SQLite queue), ``mqtt`` (the publisher), ``homeassistant``
(discovery), ``notify`` (sd_notify), ``config`` (the ``[mqtt]`` section). See
README.md in this folder for the topics and the match payload.
"""
