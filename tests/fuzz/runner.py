"""Run fuzz targets for a bounded number of inputs with a fixed seed.

Each target runs in its own child process (libFuzzer owns the process it runs in)::

    python -m tests.fuzz.runner image --runs 5000 --seed 1
    python -m tests.fuzz.runner all --runs 20000 --engine hypothesis

Engines: ``atheris`` (libFuzzer, coverage-guided; wheels for x86_64) and
``hypothesis`` (random and seed-mutating generation, no coverage; the fallback
where atheris has no wheel, e.g. arm64). ``auto`` picks atheris when importable.

A crash is an exception out of the target's ``one_input`` (its parser's documented
errors are caught there), an input taking longer than ``--timeout`` seconds, or the
process growing past ``--rss-mb``. Crash inputs are written to ``--artifacts``
(a temporary directory by default) and named in the summary, the last line of
the output, which is JSON: ``{"target", "engine", "runs", "seconds", "crashes"}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from tests.fuzz.harness import TARGETS, Harness, target_module

REPO = Path(__file__).resolve().parents[2]
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_FINAL = re.compile(r"DONE\s+(cov: \d+ ft: \d+ corp: \d+/\d+[KM]?b)")


@dataclass(frozen=True)
class Result:
    """What one run of a target did.

    Attributes:
        target: Its name.
        engine: ``atheris`` or ``hypothesis``.
        runs: Inputs executed (seeds included).
        seconds: Wall time of the child process.
        crashes: Paths of crash inputs written.
        returncode: The child's exit status.
        coverage: libFuzzer's final ``cov: … ft: … corp: …`` (the same for the same
            seed and code: a check of determinism); empty for hypothesis.
        output: The child's last lines of output (for a failure message).
    """

    target: str
    engine: str
    runs: int
    seconds: float
    crashes: tuple[str, ...]
    returncode: int
    coverage: str
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.crashes


def engine_available(name: str) -> str:
    """Resolve ``auto`` to the engine that can run here."""
    if name != "auto":
        return name
    try:
        import atheris  # noqa: F401
    except ImportError:
        return "hypothesis"
    return "atheris"


def scratch_dir() -> str | None:
    """A tmpfs for the targets' files when there is one: the sync targets fsync per input,
    which on a disk costs more than the parsing the fuzzer is after."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def run_target(name: str, *, runs: int, seed: int = 1, engine: str = "auto",
               timeout_s: int = 10, rss_mb: int = 2048, artifacts: Path | None = None,
               max_time_s: int = 0, wall_timeout_s: float = 900.0) -> Result:
    """Fuzz one target in a child process and report what happened."""
    engine = engine_available(engine)
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-", dir=scratch_dir()) as tmp:
        out_dir = artifacts if artifacts is not None else Path(tmp) / "artifacts"
        out_dir.mkdir(parents=True, exist_ok=True)
        before = set(out_dir.iterdir())
        cmd = [sys.executable, "-m", "tests.fuzz.runner", "--child", name, "--runs", str(runs),
               "--seed", str(seed), "--engine", engine, "--timeout", str(timeout_s),
               "--rss-mb", str(rss_mb), "--artifacts", str(out_dir), "--work", tmp,
               "--max-time", str(max_time_s)]
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "0"}
        started = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                                  errors="replace", timeout=wall_timeout_s, check=False)
            output, code = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as exc:
            partial = [o.decode(errors="replace") if isinstance(o, bytes) else (o or "")
                       for o in (exc.stdout, exc.stderr)]
            output = "".join(partial) + f"\nrunner: killed after {wall_timeout_s} s"
            code = -9
        seconds = time.monotonic() - started
        crashes = tuple(sorted(str(p) for p in set(out_dir.iterdir()) - before))
        if artifacts is None and crashes:  # keep them: the temporary directory goes
            keep = Path(tempfile.mkdtemp(prefix=f"fuzz-crashes-{name}-"))
            crashes = tuple(str(Path(p).replace(keep / Path(p).name)) for p in crashes)
        done = _DONE.findall(output)
        summary = _summary(output)
        count = int(summary["runs"]) if summary else (int(done[-1][0]) if done else 0)
    tail = "\n".join(output.splitlines()[-40:])
    final = _FINAL.findall(output)
    return Result(name, engine, count, round(seconds, 1), crashes, code,
                  final[-1] if final else "", tail)


def _summary(output: str) -> dict[str, Any] | None:
    for line in reversed(output.splitlines()):
        if line.startswith('{"child_runs"'):
            return {"runs": json.loads(line)["child_runs"]}
    return None


# ------------------------------------------------------------------ the child


def _quiet() -> None:
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")


def _prepare(name: str, work: Path) -> tuple[Any, Harness]:
    module = target_module(name)
    harness: Harness = module.prepare(work)
    return module, harness


def _write_corpus(seeds: tuple[bytes, ...], corpus: Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(seeds):
        (corpus / f"seed-{i:03d}").write_bytes(data)


def _child_atheris(args: argparse.Namespace) -> int:
    import atheris

    work = Path(args.work)
    module_name = f"tests.fuzz.targets.{args.target}"
    include = [module_name, *__import__(module_name, fromlist=["INSTRUMENT"]).INSTRUMENT]
    sys.modules.pop(module_name, None)  # import it again, instrumented
    with atheris.instrument_imports(include=include):
        module, harness = _prepare(args.target, work)
    corpus = work / "corpus"
    _write_corpus(harness.seeds, corpus)
    runs = 0

    def one(data: bytes) -> None:
        nonlocal runs
        runs += 1
        try:
            harness.one_input(data)
        except BaseException:
            traceback.print_exc()
            raise

    argv = [sys.argv[0], f"-seed={args.seed}", f"-runs={args.runs}",
            f"-timeout={args.timeout}", f"-rss_limit_mb={args.rss_mb}",
            f"-malloc_limit_mb={args.rss_mb}", f"-max_len={module.MAX_LEN}",
            f"-artifact_prefix={args.artifacts}/", "-print_final_stats=1"]
    if args.max_time:
        argv.append(f"-max_total_time={args.max_time}")
    argv.append(str(corpus))
    import atexit

    atexit.register(lambda: print(json.dumps({"child_runs": runs}), flush=True))
    atheris.Setup(argv, one)
    atheris.Fuzz()
    return 0


def _mutations(seeds: tuple[bytes, ...], max_len: int) -> Any:
    from hypothesis import strategies as st

    @st.composite
    def mutated(draw: Callable[[Any], Any]) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(1, 8))):
            op = draw(st.integers(0, 4))
            at = draw(st.integers(0, len(data)))
            if op == 0 and data:  # flip a byte
                at = min(at, len(data) - 1)
                data[at] = draw(st.integers(0, 255))
            elif op == 1:  # insert bytes
                data[at:at] = draw(st.binary(min_size=1, max_size=16))
            elif op == 2:  # delete a span
                del data[at:at + draw(st.integers(1, 64))]
            elif op == 3:  # truncate
                del data[at:]
            else:  # duplicate a span
                data[at:at] = data[at:at + draw(st.integers(1, 64))]
        return bytes(data[:max_len])

    return st.one_of(mutated(), mutated(), mutated(), st.binary(max_size=min(max_len, 512)))


class _Timeout(BaseException):
    """An input ran past the per-input time limit."""


@dataclass(frozen=True)
class _Limits:
    timeout_s: int
    rss_mb: int


def _guarded(one_input: Callable[[bytes], None], limits: _Limits) -> Callable[[bytes], None]:
    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise _Timeout(f"input took longer than {limits.timeout_s} s")

    signal.signal(signal.SIGALRM, on_alarm)

    def run(data: bytes) -> None:
        signal.alarm(limits.timeout_s)
        try:
            one_input(data)
        finally:
            signal.alarm(0)
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        if rss_mb > limits.rss_mb:
            raise MemoryError(f"resident memory reached {rss_mb} MB (limit {limits.rss_mb})")

    return run


def _child_hypothesis(args: argparse.Namespace) -> int:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed

    module, harness = _prepare(args.target, Path(args.work))
    run = _guarded(harness.one_input, _Limits(args.timeout, args.rss_mb))
    runs = 0
    failing: list[bytes] = []
    deadline = time.monotonic() + args.max_time if args.max_time else None

    def one(data: bytes) -> None:
        nonlocal runs
        runs += 1
        if deadline is not None and time.monotonic() > deadline:
            return
        try:
            run(data)
        except BaseException:
            failing.append(data)
            raise

    for data in harness.seeds:
        one(data)

    @hypothesis_seed(args.seed)
    @settings(max_examples=max(1, args.runs - len(harness.seeds)), database=None,
              deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
    @given(_mutations(harness.seeds, module.MAX_LEN))
    def fuzz(data: bytes) -> None:
        one(data)

    try:
        fuzz()
    except BaseException as exc:
        crash = Path(args.artifacts) / f"crash-{args.target}-{len(failing)}"
        crash.write_bytes(failing[-1] if failing else b"")
        print(f"crash: {type(exc).__name__}: {exc} (input in {crash})", flush=True)
        print(json.dumps({"child_runs": runs}), flush=True)
        return 1
    print(json.dumps({"child_runs": runs}), flush=True)
    return 0


# ------------------------------------------------------------------------ CLI


def _iter_targets(name: str) -> Iterator[str]:
    yield from (TARGETS if name == "all" else (name,))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.runner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help=f"one of {', '.join(TARGETS)}, or all")
    parser.add_argument("--runs", type=int, default=5000, help="inputs per target")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    parser.add_argument("--timeout", type=int, default=10, help="seconds per input")
    parser.add_argument("--rss-mb", type=int, default=2048)
    parser.add_argument("--max-time", type=int, default=0,
                        help="stop each target after this many seconds (not deterministic)")
    parser.add_argument("--artifacts", default=None)
    parser.add_argument("--work", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _quiet()
        return (_child_atheris if args.engine == "atheris" else _child_hypothesis)(args)
    failed = 0
    for name in _iter_targets(args.target):
        result = run_target(name, runs=args.runs, seed=args.seed, engine=args.engine,
                            timeout_s=args.timeout, rss_mb=args.rss_mb,
                            artifacts=Path(args.artifacts) if args.artifacts else None,
                            max_time_s=args.max_time)
        if not result.ok:
            failed += 1
            print(result.output, file=sys.stderr)
        summary = {k: v for k, v in asdict(result).items() if k != "output"}
        print(json.dumps(summary), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
