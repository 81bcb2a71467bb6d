"""Fuzz every parser of untrusted input with a fixed seed; replay every crash found.

The short form runs each target for a fixed number of inputs (under 90 s in all on
two cores); the long form (``-m slow``) runs each for many more. Every input that
once crashed a parser is kept in ``tests/fuzz/regressions/<target>/`` and replayed
here without a fuzzer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fuzz.harness import TARGETS, Harness, regression_inputs, target_module
from tests.fuzz.runner import Result, run_target

SEED = 1

#: Inputs per target in the default run (seconds each, measured on the CI machine).
SHORT_RUNS = {
    "image": 4000,
    "config": 3000,
    "manifest": 2000,
    "sync_manifest": 1000,
    "sync_chunk": 5000,
    "sync_payload": 300,
    "mqtt_events": 10000,
}

#: Inputs per target in the long run (a minute or two each).
LONG_RUNS = {
    "image": 60000,
    "config": 100000,
    "manifest": 100000,
    "sync_manifest": 15000,
    "sync_chunk": 300000,
    "sync_payload": 6000,
    "mqtt_events": 300000,
}


def _explain(result: Result) -> str:
    return (f"fuzz target {result.target} ({result.engine}) failed after {result.runs} inputs "
            f"(exit {result.returncode}); crash inputs: {list(result.crashes)}. Fix the parser, "
            f"then keep the input in tests/fuzz/regressions/{result.target}/.\n{result.output}")


@pytest.mark.parametrize("name", TARGETS)
def test_fuzz_short(name: str) -> None:
    result = run_target(name, runs=SHORT_RUNS[name], seed=SEED)
    assert result.ok, _explain(result)
    assert result.runs >= SHORT_RUNS[name], f"only {result.runs} inputs ran:\n{result.output}"


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", TARGETS)
def test_fuzz_long(name: str) -> None:
    runs = int(LONG_RUNS[name] * float(os.environ.get("FACEGATE_FUZZ_SCALE", "1")))
    result = run_target(name, runs=runs, seed=SEED, wall_timeout_s=1700)
    assert result.ok, _explain(result)


@pytest.mark.parametrize("name", ["manifest", "mqtt_events"])
def test_hypothesis_fallback_runs(name: str) -> None:
    """The engine used where atheris has no wheel (arm64) finds nothing either."""
    pytest.importorskip("hypothesis")
    result = run_target(name, runs=300, seed=SEED, engine="hypothesis")
    assert result.ok, _explain(result)
    assert result.runs >= 300


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Harness]:
    cache: dict[str, Harness] = {}

    def get(name: str) -> Harness:
        if name not in cache:
            cache[name] = target_module(name).prepare(tmp_path_factory.mktemp(name))
        return cache[name]

    return get


_CASES = [(name, path) for name in TARGETS for path in regression_inputs(name)]


@pytest.mark.parametrize(("name", "path"), _CASES,
                         ids=[f"{n}/{p.name}" for n, p in _CASES])
def test_regression_inputs_do_not_crash(name: str, path: Path,
                                        prepared: Callable[[str], Harness]) -> None:
    prepared(name).one_input(path.read_bytes())


@pytest.mark.parametrize("name", TARGETS)
def test_seeds_are_accepted(name: str, prepared: Callable[[str], Harness]) -> None:
    harness = prepared(name)
    assert harness.seeds
    for data in harness.seeds:
        harness.one_input(data)
