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


def _run_tiny(work: Path, *options: str) -> tuple[dict, str]:
    """benchmarks/run.py --tiny with `options`: its saved results and what it printed."""
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--tiny", *options,
         f"--work-dir={work / 'work'}", f"--results-dir={work / 'results'}", "--timeout=240"],
        capture_output=True, text=True, timeout=300, cwd=work, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    saved = list((work / "results").glob("*.json"))
    assert len(saved) == 1
    return json.loads(saved[0].read_text()), done.stdout


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory) -> tuple[dict, str]:
    return _run_tiny(tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="module")
def tiny_w2_results(tmp_path_factory) -> tuple[dict, str]:
    return _run_tiny(tmp_path_factory.mktemp("bench-w2"), "--workload=W2")


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


@pytest.mark.slow
def test_tiny_w2_runs_against_both_floors_with_fedrays_weights(tiny_w2_results):
    results, printed = tiny_w2_results
    settings = results["settings"]
    assert results["workload"] == "tiny-W2" and settings["clients_per_round"] == 4 and settings["val_fraction"] == 0
    assert list(results["floors"]) == ["processes", "single"]
    assert results["floor"]["parallel"] == "processes" and results["ratio"] == results["floors"]["processes"]["ratio"]
    fedray_run = results["fedray"]["runs"][0]
    summary = json.loads((Path(fedray_run["run_dir"]) / "summary.json").read_text())
    assert [len(r["sites"]) for r in summary["rounds"]] == [4] * settings["rounds"]  # sampled, as W2 samples
    for name, floor in results["floors"].items():
        ratio = fedray_run["wall_seconds"] / floor["plain"]["median_wall_seconds"]
        assert math.isclose(floor["ratio"], ratio, rel_tol=1e-2), name
        # The same sampled sites, shuffles, single-threaded training and compensated FedAvg sums: the same weights
        # (today bit for bit), so the same accuracy, which has left chance.
        assert floor["max_weight_difference_to_fedray"] <= 1e-6, name
        assert floor["accuracy_gap_points"] == 0 and floor["plain"]["median_test_accuracy"] > 0.2, name
    assert "ratio fedray/floor" in printed and "weights vs fedray" in printed


def test_floor_samples_the_sites_fedray_samples():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from plain_fedavg import sample_sites as floor_sample

    from fedray.server.workflows.scatter_and_gather import sample_sites

    sites = [f"site-{k}" for k in range(1, 1001)]
    for current_round in (0, 1, 99):
        picked = floor_sample(1000, 50, 7, current_round)
        assert [f"site-{k}" for k in picked] == sample_sites(sites, 50, 7, current_round)
    assert floor_sample(8, None, 0, 0) == list(range(1, 9))


def test_one_channel_images_reach_the_floors_model_as_they_reach_fedrays_sites():
    """The floor convolves what fedray's sites convolve: NCHW with the plain strides the object store gives back.
    One channel's transposed view is already "contiguous" to numpy with channel stride 1, which torch convolves
    as channels_last, to other bits (W3's floor ended 1e-5 away from fedray's weights)."""
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from plain_fedavg import _chw as floor_chw

    from fedray.driver.job import _chw as driver_chw
    from fedray.models import FemnistCNN

    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28, 1), dtype=np.uint8)
    model = FemnistCNN()
    batch = torch.tensor([4, 0, 2])
    plain = torch.from_numpy(images.transpose(0, 3, 1, 2).copy(order="C"))  # as the object store rebuilds it
    for chw in (floor_chw, driver_chw):
        converted = torch.from_numpy(chw(images))
        assert converted.stride() == plain.stride() == (784, 784, 28, 1)
        assert torch.equal(model(converted[batch].float()), model(plain[batch].float()))


@pytest.mark.slow
def test_scale_table_runs_a_tiny_point(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "scale.py"), "--tiny", "--points", "12x4",
         f"--work-dir={tmp_path / 'work'}", f"--results-dir={tmp_path / 'results'}", "--timeout=240"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (saved,) = (tmp_path / "results").glob("*-scale.json")
    (point,) = json.loads(saved.read_text())["points"]
    assert (point["num_clients"], point["clients_per_round"], point["images_per_site"]) == (12, 4, 50)
    assert point["sites_per_round"] == [4, 4] and len(point["round_train_seconds"]) == 2
    assert 0 < point["seconds_per_round"] < point["wall_seconds"] and point["peak_rss_mb"] > 0
    assert "s/round" in done.stdout


@pytest.mark.slow
def test_gpu_script_runs_on_cpu_without_ray_hydra_or_omegaconf(tmp_path):
    """The device machine has torch and numpy only: the script must import nothing else (blocked here)."""
    out = tmp_path / "gpu.json"
    blocked = "import sys; [sys.modules.__setitem__(m, None) for m in ('ray', 'hydra', 'omegaconf')]; "
    run_script = (f"sys.argv = ['gpu.py', '--device', 'cpu', '--small', '--out', {str(out)!r}]; "
                  f"import runpy; runpy.run_path({str(REPO / 'benchmarks' / 'gpu.py')!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", blocked + run_script], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["small"] is True
    for shape in ("W1", "W2"):
        ways = report[shape]
        assert {"in_turn", "processes", "batched"} <= set(ways)
        assert ways["in_turn"]["ratio_to_floor"] == 1.0
        for way in set(ways) - {"shape"}:
            assert ways[way]["seconds_per_round"] > 0 and ways[way]["rounds"] == ways["shape"]["rounds"]
            # Every way trains the same sites from the same weights: float32 rounding apart at most.
            assert ways[way]["max_weight_difference"] < 1e-5, (shape, way)
    assert report["pool"]["start_seconds"] > 0


@pytest.mark.slow
def test_fixed_cost_measures_ray_start_actors_and_shutdown(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "fixed_cost.py"), "--variants", "monitor_killed_first",
         "--repeats", "1", f"--results-dir={tmp_path}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (saved,) = tmp_path.glob("*-fixed-cost.json")
    variant = json.loads(saved.read_text())["variants"]["monitor_killed_first"]
    assert variant["processes"]["gcs_server"] == 1 and variant["processes"]["raylet"] == 1
    # Two site-like actors and the controller- and mailbox-like ones, each its own worker process.
    assert variant["processes_when_ready"]["worker"] >= 4
    assert variant["cpu_seconds"]["worker"] > 0 and variant["actors_ready"] > 0
    # Killed before ray.shutdown, so Ray's shutdown found the monitor gone and spent no wait on it.
    assert variant["shutdown_by_process"]["monitor"] < 0.5 and variant["shutdown_by_process"]["gcs_server"] >= 0
    assert "shutdown seconds by process" in done.stdout
