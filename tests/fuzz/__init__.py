"""Fuzz harness: one target per parser of untrusted input, run by :mod:`tests.fuzz.runner`."""
