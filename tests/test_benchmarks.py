"""The benchmark harness end to end, in its tiny mode: the output's correctness, never its timings."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PHASES = ("process", "data", "ray_start", "workers_start", "pre_train", "training", "aggregation", "evaluation", "shutdown")


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory) -> tuple[dict, str]:
    work = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--tiny",
         f"--work-dir={work / 'work'}", f"--results-dir={work / 'results'}", "--timeout=240"],
        capture_output=True, text=True, timeout=300, cwd=work, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    saved = list((work / "results").glob("*-tiny.json"))
    assert len(saved) == 1
    return json.loads(saved[0].read_text()), done.stdout


@pytest.mark.slow
def test_tiny_benchmark_saves_both_sides_and_the_machine(tiny_results):
    results, printed = tiny_results
    assert results["workload"] == "tiny" and results["settings"]["repeats"] == 1
    assert results["settings"]["stand_in_data"] is True
    machine = results["machine"]
    assert machine["logical_cores"] >= 1 and machine["ram_gib"] > 0 and machine["versions"]["torch"]
    assert isinstance(machine["gpus"], list)
    assert results["floor"]["parallel"] in ("processes", "threads")
    for side in ("fedray", "plain"):
        summary = results[side]
        assert summary["median_wall_seconds"] > 0 and summary["median_peak_rss_mb"] > 0
        assert 0 < summary["median_peak_anon_rss_mb"] <= summary["median_peak_rss_mb"]
        assert len(summary["runs"]) == 1 and summary["runs"][0]["leftover_processes"] == []
    # A fedray job is more than one process: the driver and the Ray it starts.
    assert results["fedray"]["runs"][0]["peak_processes"] > 2
    ratio = results["fedray"]["median_wall_seconds"] / results["plain"]["median_wall_seconds"]
    assert math.isclose(results["ratio"], ratio, rel_tol=1e-2)
    assert "ratio" in printed and "breakdown" in printed


@pytest.mark.slow
def test_tiny_benchmark_accuracies_agree_and_leave_chance(tiny_results):
    results, _ = tiny_results
    fedray, plain = results["fedray"]["median_test_accuracy"], results["plain"]["median_test_accuracy"]
    # 10 classes: both sides learned something in their one round.
    assert 0.2 < fedray <= 1 and 0.2 < plain <= 1
    # The same shards, seeds and updates on both sides (today they agree exactly); loose, not a timing.
    assert abs(results["accuracy_gap_points"]) <= 10
    assert math.isclose(results["accuracy_gap_points"], 100 * (fedray - plain), abs_tol=0.01)


@pytest.mark.slow
def test_tiny_benchmark_breakdown_accounts_for_the_wall_time(tiny_results):
    results, _ = tiny_results
    for side in ("fedray", "plain"):
        run = results[side]["runs"][0]
        assert set(run["breakdown"]) == set(PHASES)
        phases = [seconds for seconds in run["breakdown"].values() if seconds is not None]
        assert all(seconds >= 0 for seconds in phases), run["breakdown"]
        assert math.isclose(sum(phases), run["wall_seconds"], abs_tol=0.5)
    assert results["fedray"]["runs"][0]["breakdown"]["ray_start"] > 0
    assert results["plain"]["runs"][0]["breakdown"]["ray_start"] is None
