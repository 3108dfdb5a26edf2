"""The benchmark harness: a workload through `python -m fedray.run` against plain-PyTorch floors.

    python benchmarks/run.py                  # W1, 3 repeats of each side, alternating (several minutes)
    python benchmarks/run.py --workload W2    # W2 against both floors (a pool of workers; one process, one thread)
    python benchmarks/run.py --tiny           # seconds: 2 sites, 1 round, 600 samples (--workload W2: 40 sites)

Every side runs as a whole process, in turn, so that a load change on the
machine hits all; the medians, the ratio fedray / each floor, peak memory, the
test accuracies, how far each floor's final weights are from fedray's (the same
work gives the same weights), and a breakdown of the time are printed and saved
to `benchmarks/results/<timestamp>-<workload>.json` with the machine described.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

# Run as a script: the checkout's fedray, not an installed one, and this folder's modules.
REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from breakdown import FEDRAY_NOT_SEPARATE, PHASES, fedray_breakdown, plain_breakdown, site_task_seconds  # noqa: E402
from machine import describe_machine, summary_line  # noqa: E402
from measure import Measurement, run_measured  # noqa: E402
from workload import WORKLOADS, Data, Workload, fedray_command, find_data, plain_command  # noqa: E402

# Each floor: what it is, and the floor script's options for it.
FLOORS = {
    "processes": ("a pool of single-threaded worker processes, one per core, each task a share of the round's "
                  "sites returned as a partial weighted sum", ["--parallel=processes"]),
    "threads": ("one process, the sites in turn, torch using every core", ["--parallel=threads"]),
    "single": ("one process, one thread, the sites in turn", ["--parallel=threads", "--workers=1"]),
}
DEFAULT_FLOORS = {"W1": ["processes"], "W2": ["processes", "single"]}


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = _parse(argv)
    full, tiny = WORKLOADS[args.workload]
    workload = tiny if args.tiny else full
    floors = args.floor or DEFAULT_FLOORS[args.workload]
    repeats = args.repeats or (1 if args.tiny else 3)
    work_dir = Path(args.work_dir).resolve()
    data = find_data(workload, args.data_root, work_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    env = _environment()
    load_before = os.getloadavg()

    fedray_runs: list[dict[str, Any]] = []
    plain_runs: dict[str, list[dict[str, Any]]] = {floor: [] for floor in floors}
    for repeat in range(repeats):
        run_dir = work_dir / "runs" / f"{stamp}-{workload.name}-{repeat}"
        fedray_runs.append(_run_fedray(workload, data, run_dir, env, args.timeout))
        _progress("fedray", repeat, repeats, fedray_runs[-1])
        for floor in floors:
            weights = run_dir / f"plain-{floor}.npz"
            plain_runs[floor].append(_run_plain(workload, data, floor, weights, env, args.timeout))
            plain_runs[floor][-1]["max_weight_difference_to_fedray"] = weight_difference(run_dir, weights)
            _progress(floor, repeat, repeats, plain_runs[floor][-1])

    fedray = _summarize(fedray_runs)
    compared = {floor: _compare(fedray, _summarize(runs), floor) for floor, runs in plain_runs.items()}
    primary = compared[floors[0]]
    results = {
        "workload": workload.name,
        "settings": {**asdict(workload), "data_root": data.root, "stand_in_data": data.stand_in, "repeats": repeats},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name, "benchmarks/run.py", *(argv or sys.argv[1:])]),
        "machine": describe_machine(),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        # The first floor, as earlier results files have it; `floors` holds every floor.
        "floor": {"parallel": floors[0], "description": primary["description"]},
        "ratio": primary["ratio"],
        "accuracy_gap_points": primary["accuracy_gap_points"],
        "fedray": {**fedray, "not_timed_apart": FEDRAY_NOT_SEPARATE},
        "plain": primary["plain"],
        "floors": compared,
    }
    path = Path(args.results_dir).resolve() / f"{stamp}-{workload.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(_report(results, path))
    return results


def _compare(fedray: dict[str, Any], plain: dict[str, Any], floor: str) -> dict[str, Any]:
    return {
        "description": FLOORS[floor][0],
        "ratio": round(fedray["median_wall_seconds"] / plain["median_wall_seconds"], 3),
        "accuracy_gap_points": round(100 * (fedray["median_test_accuracy"] - plain["median_test_accuracy"]), 2),
        "max_weight_difference_to_fedray": max(r["max_weight_difference_to_fedray"] for r in plain["runs"]),
        "plain": plain,
    }


def weight_difference(fedray_run_dir: Path, floor_weights: Path) -> float:
    """The largest absolute difference between fedray's final global weights and a floor's."""
    import numpy as np
    import torch

    fedray = torch.load(fedray_run_dir / "models" / "FL_global_model.pt", weights_only=True)["model"]
    with np.load(floor_weights) as plain:
        if set(plain.files) != set(fedray):
            raise SystemExit(f"benchmark: the floor's weights {sorted(plain.files)} are not fedray's {sorted(fedray)}")
        return max(float(np.abs(fedray[name].numpy().astype(np.float64) - plain[name]).max()) for name in fedray)


def _run_fedray(workload: Workload, data: Data, run_dir: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    measured = run_measured(fedray_command(workload, data, run_dir), env=env, cwd=str(REPO), timeout=timeout)
    _check(measured, "fedray")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        **_memory_and_time(measured),
        "test_accuracy": summary["rounds"][-1]["global"]["test_accuracy"],
        "breakdown": fedray_breakdown(summary, measured.wall_seconds),
        "site_task_seconds": site_task_seconds(summary),
        "run_dir": str(run_dir),
    }


def _run_plain(workload: Workload, data: Data, floor: str, weights: Path, env: dict[str, str],
               timeout: float) -> dict[str, Any]:
    command = plain_command(workload, data, [*FLOORS[floor][1], f"--save-weights={weights}"])
    measured = run_measured(command, env=env, cwd=str(REPO), timeout=timeout)
    _check(measured, f"plain ({floor})")
    report = json.loads(measured.stdout.strip().splitlines()[-1])
    return {
        **_memory_and_time(measured),
        "test_accuracy": report["test_accuracy"],
        "breakdown": plain_breakdown(report, measured.wall_seconds),
    }


def _memory_and_time(measured: Measurement) -> dict[str, Any]:
    return {
        "wall_seconds": measured.wall_seconds,
        "peak_rss_mb": measured.peak_rss_mb,
        "peak_anon_rss_mb": measured.peak_anon_rss_mb,
        "peak_processes": measured.peak_processes,
        "leftover_processes": measured.leftover_processes,
    }


def _summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repeats (each phase's median on its own), and the runs themselves."""

    def median(values: list[Optional[float]]) -> Optional[float]:
        present = [v for v in values if v is not None]
        return round(statistics.median(present), 4) if present else None

    return {
        "median_wall_seconds": median([r["wall_seconds"] for r in runs]),
        "median_peak_rss_mb": median([r["peak_rss_mb"] for r in runs]),
        "median_peak_anon_rss_mb": median([r["peak_anon_rss_mb"] for r in runs]),
        "median_test_accuracy": median([r["test_accuracy"] for r in runs]),
        "median_breakdown": {phase: median([r["breakdown"][phase] for r in runs]) for phase in PHASES},
        "runs": runs,
    }


def _check(measured: Measurement, side: str) -> None:
    if measured.returncode != 0:
        tail = "\n".join((measured.stderr or measured.stdout).strip().splitlines()[-15:])
        raise SystemExit(f"benchmark: the {side} run failed (exit {measured.returncode}):\n{tail}")


def _environment() -> dict[str, str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    # The benchmark measures fedray's own private local Ray, never a cluster the caller points at.
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _progress(side: str, repeat: int, repeats: int, run: dict[str, Any]) -> None:
    print(f"[{repeat + 1}/{repeats}] {side:9s} {run['wall_seconds']:7.1f} s  peak {run['peak_rss_mb']:7.0f} MB  "
          f"test_acc {run['test_accuracy']:.4f}", flush=True)


def _report(results: dict[str, Any], path: Path) -> str:
    fedray, settings, floors = results["fedray"], results["settings"], results["floors"]
    sides = [fedray, *(floor["plain"] for floor in floors.values())]
    data = "stand-in CIFAR-10 (fedray.data.synthetic)" if settings["stand_in_data"] else "CIFAR-10"
    load = results["load_average"]

    def row(label: str, cells: list[str]) -> str:
        return f"{label:24s}" + "".join(f"{cell:>11s}" for cell in cells)

    rows = [
        f"{results['workload']} on {data}, {settings['repeats']} runs each, medians",
        f"machine: {summary_line(results['machine'])}; load average {load['before'][0]:.2f} before, "
        f"{load['after'][0]:.2f} after",
        *(f"floor {name}: {floor['description']}" for name, floor in floors.items()),
        "",
        row("", ["fedray", *floors]),
        row("wall seconds", [f"{side['median_wall_seconds']:.2f}" for side in sides]),
        row("  ratio fedray/floor", ["", *(f"{floor['ratio']:.2f}" for floor in floors.values())]),
        row("peak RSS, summed (MB)", [f"{side['median_peak_rss_mb']:.0f}" for side in sides]),
        row("  of it anonymous (MB)", [f"{side['median_peak_anon_rss_mb']:.0f}" for side in sides]),
        row("test accuracy", [f"{side['median_test_accuracy']:.4f}" for side in sides]),
        row("  gap (points)", ["", *(f"{floor['accuracy_gap_points']:+.2f}" for floor in floors.values())]),
        row("  weights vs fedray", ["", *(f"{floor['max_weight_difference_to_fedray']:.1e}"
                                          for floor in floors.values())]),
        "breakdown (seconds):",
    ]
    for phase in PHASES:
        rows.append(row(f"  {phase}", [_cell(side["median_breakdown"][phase]) for side in sides]))
    rows.append(f"saved {path}")
    return "\n".join(rows)


def _cell(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def _parse(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="W1")
    parser.add_argument("--tiny", action="store_true", help="the workload's tiny version, the test suite's")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each side (default 3; 1 with --tiny)")
    parser.add_argument("--data-root", default=None,
                        help="a folder holding cifar-10-batches-py/ (default: fedray's cache; else a stand-in)")
    parser.add_argument("--floor", choices=sorted(FLOORS), nargs="+", default=None,
                        help="the plain floors, the first one the headline ratio's (default: processes; "
                             "W2: processes single)")
    parser.add_argument("--work-dir", default=str(REPO / "benchmarks" / "work"), help="stand-in data and run dirs")
    parser.add_argument("--results-dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds for one run of either side")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
