"""Seconds per round as the work grows: W2's sites and settings at several (num_clients, clients_per_round) points.

    python benchmarks/scale.py                          # the issue's table: 1000 x 10/50/200, 10000 x 50; 5 rounds
    python benchmarks/scale.py --points 1000x50 --rounds 3
    python benchmarks/scale.py --tiny                   # seconds, on a 600-image stand-in (the tests)

Each point is one `python -m fedray.run` as a whole process (W2's batch 10, plain SGD,
no validation split, no cross-site evaluation, scored once at the end). Seconds per round
are the median of the rounds' training seconds after the first (which also pays the
actors' warm-up); peak memory is summed over the process tree, Ray's processes included.
Cost should be flat in `num_clients` (a site is a list of indices) and linear in sites per
round. Printed as a table and saved as JSON under `benchmarks/results/` with the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from machine import describe_machine, summary_line  # noqa: E402
from measure import run_measured  # noqa: E402
from run import _check, _environment  # noqa: E402
from workload import TINY_W2, W2, Workload, fedray_command, find_data  # noqa: E402

POINTS = ["1000x10", "1000x50", "1000x200", "10000x50"]
TINY_POINTS = ["12x2", "12x8", "60x4"]


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = _parse(argv)
    base = TINY_W2 if args.tiny else W2
    rounds = args.rounds or (2 if args.tiny else 5)
    work_dir = Path(args.work_dir).resolve()
    data = find_data(base, args.data_root, work_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for point in args.points or (TINY_POINTS if args.tiny else POINTS):
        clients, per_round = (int(part) for part in point.split("x"))
        workload = dataclasses.replace(base, name=f"scale-{point}", num_sites=clients, clients_per_round=per_round,
                                       rounds=rounds)
        rows.append(_run_point(workload, data, work_dir / "runs" / f"{stamp}-scale-{point}", args.timeout))
        print(_row(rows[-1]), flush=True)
    results = {
        "workload": f"W2's settings{' (tiny)' if args.tiny else ''} at each (num_clients, clients_per_round), "
                    f"{rounds} rounds",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": describe_machine(),
        "settings": {**dataclasses.asdict(base), "rounds": rounds, "data_root": data.root, "stand_in_data": data.stand_in},
        "points": rows,
    }
    path = Path(args.results_dir).resolve() / f"{stamp}-scale.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{results['workload']}\nmachine: {summary_line(results['machine'])}\n{HEADER}\n"
          + "\n".join(_row(row) for row in rows) + f"\nsaved {path}")
    return results


def _run_point(workload: Workload, data, run_dir: Path, timeout: float) -> dict[str, Any]:
    command = fedray_command(workload, data, run_dir)
    measured = run_measured(command, env=_environment(), cwd=str(REPO), timeout=timeout)
    _check(measured, f"fedray ({workload.name})")
    summary = json.loads((run_dir / "summary.json").read_text())
    train_seconds = [r["train_seconds"] for r in summary["rounds"]]
    return {
        "num_clients": workload.num_sites,
        "clients_per_round": workload.clients_per_round,
        "images_per_site": workload.num_train // workload.num_sites,  # W2's num_train is CIFAR-10's 50,000
        "seconds_per_round": round(statistics.median(train_seconds[1:] or train_seconds), 4),
        "round_train_seconds": train_seconds,
        "sites_per_round": [len(r["sites"]) for r in summary["rounds"]],
        "wall_seconds": measured.wall_seconds,
        "peak_rss_mb": measured.peak_rss_mb,
        "peak_anon_rss_mb": measured.peak_anon_rss_mb,
        "peak_processes": measured.peak_processes,
        "test_accuracy": summary["rounds"][-1]["global"]["test_accuracy"],
        "timings": summary["timings"],
        "command": " ".join(command[1:]),
        "run_dir": str(run_dir),
    }


HEADER = (f"{'num_clients':>12s}{'per round':>10s}{'images':>8s}{'s/round':>10s}{'ms/site':>9s}"
          f"{'peak RSS MB':>13s}{'anon MB':>9s}{'wall s':>8s}")


def _row(row: dict[str, Any]) -> str:
    per_site_ms = 1000 * row["seconds_per_round"] / row["clients_per_round"]
    return (f"{row['num_clients']:12d}{row['clients_per_round']:10d}{row['images_per_site']:8d}"
            f"{row['seconds_per_round']:10.3f}{per_site_ms:9.1f}{row['peak_rss_mb']:13.0f}"
            f"{row['peak_anon_rss_mb']:9.0f}{row['wall_seconds']:8.1f}")


def _parse(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", nargs="+", default=None, help=f"CLIENTSxPER_ROUND (default: {' '.join(POINTS)})")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per point (default 5; 2 with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="tiny points on a 600-image stand-in: the test suite's")
    parser.add_argument("--data-root", default=None,
                        help="a folder holding cifar-10-batches-py/ (default: fedray's cache; else a stand-in)")
    parser.add_argument("--work-dir", default=str(REPO / "benchmarks" / "work"), help="stand-in data and run dirs")
    parser.add_argument("--results-dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--timeout", type=float, default=1800.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
