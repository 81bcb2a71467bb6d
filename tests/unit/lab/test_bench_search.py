"""``facegate bench search`` runs end to end on a small gallery (no timings asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from device.cli import main
from device.lab import search_bench


def test_table_and_json_with_faiss() -> None:
    pytest.importorskip("faiss")
    runner = CliRunner()
    result = runner.invoke(main, ["bench", "search", "--size", "3000", "--queries", "10",
                                  "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["method"] for r in rows] == [
        "floor", "facegate-f32", "facegate-int8", "facegate-int8-rerank", "faiss-flat",
        "faiss-sq8"]
    by = {r["method"]: r for r in rows}
    assert by["facegate-f32"]["recall_all"] == 1.0
    assert by["facegate-int8-rerank"]["recall_all"] == 1.0
    assert by["faiss-flat"]["recall_probes"] == 1.0
    assert by["facegate-int8"]["index_mb"] < by["facegate-f32"]["index_mb"] / 3
    # The re-rank's float rows are on disk, not in RAM.
    rerank = by["facegate-int8-rerank"]
    assert rerank["index_mb"] == by["facegate-int8"]["index_mb"]
    assert rerank["disk_mb"] == pytest.approx(3000 * 128 * 4 / 2**20, abs=0.1)
    assert by["facegate-int8"]["disk_mb"] is None
    assert "queries fell back" in rerank["note"]


def test_table_without_faiss() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["bench", "search", "--size", "2000,3000", "--queries", "5",
                                  "--no-faiss", "--strangers", "0.4"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["size", "method", "p50"]
    assert sum("facegate-int8 " in line for line in lines) == 2
    assert sum(line.split()[1:2] == ["facegate-int8-rerank"] for line in lines) == 2
    assert "faiss" not in "".join(lines[1:9])
    assert "floor at 2000" in result.stdout
    assert "facegate-int8-rerank at 3000: re-rank:" in result.stdout


def test_row_dir_is_used_and_cleaned(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["bench", "search", "--size", "500", "--queries", "3",
                                       "--no-faiss", "--row-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["method"]: r for r in json.loads(result.stdout)}
    assert rows["facegate-int8-rerank"]["recall_all"] == 1.0
    assert list(tmp_path.iterdir()) == []  # the temporary directory is gone


def test_missing_faiss_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail
    result = CliRunner().invoke(main, ["bench", "search", "--size", "100"])
    assert result.exit_code == 2
    assert "faiss-cpu" in result.output and "--no-faiss" in result.output


def test_bad_sizes_are_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["bench", "search", "--size", "10,abc"])
    assert result.exit_code == 2
    assert "comma-separated integers" in result.output


def test_queries_are_probes_then_strangers() -> None:
    gallery = search_bench.make_gallery(500, 16, seed=1)
    queries, strangers = search_bench.make_queries(gallery, 20, 0.25, seed=1)
    assert strangers.sum() == 5 and strangers[-5:].all()
    truth = search_bench.exact_top1(gallery, queries)
    sims = (gallery[truth] * queries).sum(axis=1)
    assert (sims[~strangers] > 0.8).all()  # probes are near their source row
