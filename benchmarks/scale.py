"""Many clients on one machine: `num_clients=1000 clients_per_round=50`, 3 rounds, on W1's data.

    python benchmarks/scale.py                 # the issue's run (about a minute on 2 cores)
    python benchmarks/scale.py --clients 200   # smaller

Runs `python -m fedray.run` as a whole process and prints its wall time, peak
memory (summed over the process tree, Ray's processes included), the actors
that served the sites, and the final test accuracy; saved as JSON under
`benchmarks/results/` with the machine described.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from machine import describe_machine, summary_line  # noqa: E402
from measure import run_measured  # noqa: E402
from run import _check, _environment  # noqa: E402
from workload import W1, find_data, fedray_command  # noqa: E402


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = _parse(argv)
    work_dir = Path(args.work_dir).resolve()
    data = find_data(W1, args.data_root, work_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = work_dir / "runs" / f"{stamp}-scale-{args.clients}"
    workload = dataclasses.replace(W1, name="scale", num_sites=args.clients, rounds=args.rounds)
    command = [*fedray_command(workload, data, run_dir), f"clients_per_round={args.per_round}"]
    measured = run_measured(command, env=_environment(), cwd=str(REPO), timeout=args.timeout)
    _check(measured, "fedray")
    summary = json.loads((run_dir / "summary.json").read_text())
    results = {
        "workload": f"{args.clients} clients, {args.per_round} per round, {args.rounds} rounds, W1's data and model",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(command[1:]),
        "machine": describe_machine(),
        "wall_seconds": measured.wall_seconds,
        "peak_rss_mb": measured.peak_rss_mb,
        "peak_anon_rss_mb": measured.peak_anon_rss_mb,
        "peak_processes": measured.peak_processes,
        "sites_per_round": [len(r["sites"]) for r in summary["rounds"]],
        "test_accuracy": summary["rounds"][-1]["global"]["test_accuracy"],
        "timings": summary["timings"],
        "run_dir": str(run_dir),
    }
    path = Path(args.results_dir).resolve() / f"{stamp}-scale-{args.clients}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{results['workload']}\nmachine: {summary_line(results['machine'])}\n"
          f"wall {results['wall_seconds']:.1f} s, peak RSS summed {results['peak_rss_mb']:.0f} MB "
          f"(anonymous {results['peak_anon_rss_mb']:.0f} MB) over {results['peak_processes']} processes, "
          f"sites per round {results['sites_per_round']}, test accuracy {results['test_accuracy']:.4f}\nsaved {path}")
    return results


def _parse(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--per-round", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-root", default=None,
                        help="a folder holding cifar-10-batches-py/ (default: fedray's cache; else a stand-in)")
    parser.add_argument("--work-dir", default=str(REPO / "benchmarks" / "work"), help="stand-in data and run dirs")
    parser.add_argument("--results-dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--timeout", type=float, default=1800.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
