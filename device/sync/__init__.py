"""Over-the-air gallery updates: signed bundles, applied crash-safely.

Modelled on The Update Framework (signed metadata, strictly increasing versions,
expiry, thresholds of keys, length limits) and on A/B updaters such as RAUC and
Mender (build beside the live copy, switch atomically, confirm, roll back).

* :mod:`~device.sync.manifest`: the signed manifest, canonical JSON, Ed25519
  signature verification with a threshold of distinct trusted keys.
* :mod:`~device.sync.keys`: key generation, key files, the trusted key set.
* :mod:`~device.sync.payload`: full-snapshot and delta payloads.
* :mod:`~device.sync.transport`: capped, per-chunk verified, resumable
  fetching (files, HTTPS, MQTT chunks).
* :mod:`~device.sync.layout`: the files on disk, the atomic switch, recovery.
* :mod:`~device.sync.apply`: :class:`GallerySync`, the state machine.
* :mod:`~device.gallery.live`: the index the pipeline searches, swapped on switch.
* :mod:`~device.sync.bundle`: the operator's side (build, sign).
* :mod:`~device.sync.mqtt` and :mod:`~device.sync.agent`: MQTT
  topics, publishing, and the unit's :class:`SyncAgent`.
"""
