"""The recognition service: configuration, per-frame stages, threads, health.

* :mod:`device.service.thresholds` — the one threshold model: the model's calibration
  table and the match threshold from a target false-match rate or an explicit one
  (``identify`` uses it too);
* :mod:`device.service.queue` — the bounded frame queue between capture and inference;
* :mod:`device.service.stats` — latency histograms and rate meters;
* :mod:`device.service.embedding` — the ``Aligner``/``Embedder`` Protocols the
  pipeline runs against, and the dlib adapter;
* :mod:`device.service.stages` — one frame through detect → quality → track → embed →
  search → decide, without threads (the service and the benchmark share it);
* :mod:`device.service.sink` — a decision becomes an audit record and an outbox row;
* :mod:`device.service.health` — the health snapshot, the local health file, temperature;
* :mod:`device.service.housekeeping` — the periodic jobs beside the frame flow: health
  file, the one gallery reload path, retention, the audit head;
* :mod:`device.service.pipeline` — threads, queues, lifecycle, watchdog, signals.
"""
