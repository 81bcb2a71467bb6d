"""Helpers the tests share: builders, real-process wrappers, raw-file probes.

Fixtures live in conftest.py files; plain functions and classes live here, one module
per area of the package (``tests.support.gallery`` for the gallery, ...).
"""
