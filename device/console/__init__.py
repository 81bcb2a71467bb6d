"""The fleet's side: the operators' web console, its store and the review loop.

Runs on an operator's machine, never on a unit: the unit's runtime never imports it.
"""
