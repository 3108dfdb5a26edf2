"""What the simulated clock costs in real time (issue 24): W2's wall with system=uniform, with system=lognormal,
and with lognormal and over_selection=1.3 (whose losers never train), alternating; each side's test accuracy
and simulated hours.

    python benchmarks/system.py --repeats 2     # W2, each side twice
    python benchmarks/system.py --tiny          # seconds: tiny-W2, to check the script itself

Each run is a whole `python -m fedray.run` process (benchmarks/workload.py's command plus the side's keys),
measured as benchmarks/run.py measures it. Results print and are saved to
`benchmarks/results/<timestamp>-system.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from measure import run_measured  # noqa: E402
from workload import WORKLOADS, add_w2_options, fedray_command, find_data, save_results  # noqa: E402

SIDES = {
    "uniform": [],
    "lognormal": ["system=lognormal"],
    "over_selection": ["system=lognormal", "workflows.scatter_and_gather.over_selection=1.3"],
}


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    add_w2_options(parser, timeout=1800)
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    full, tiny = WORKLOADS["W2"]
    workload = tiny if args.tiny else full
    work_dir = Path(args.work_dir).resolve()
    data = find_data(workload, args.data_root, work_dir)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for repeat in range(args.repeats):
        for side, keys in SIDES.items():
            run_dir = work_dir / "runs" / stamp / f"{side}-{repeat}"
            measured = run_measured([*fedray_command(workload, data, run_dir), *keys], env=env, cwd=str(REPO),
                                    timeout=args.timeout)
            if measured.returncode != 0:
                raise SystemExit(f"{side}: exit {measured.returncode}: {measured.stderr[-2000:]}")
            summary = json.loads((run_dir / "summary.json").read_text())
            trained = sum(len(r["sites"]) for r in summary["rounds"])
            spared = sum(len(r["failures"]) for r in summary["rounds"])
            runs[side].append({"wall_seconds": measured.wall_seconds, "sim_hours": summary.get("sim_seconds", 0.0) / 3600,
                               "test_accuracy": summary["rounds"][-1]["global"]["test_accuracy"],
                               "site_trainings": trained, "never_trained": spared})
            print(f"{side:>15} {repeat + 1}/{args.repeats}: {runs[side][-1]}", flush=True)
    medians = {side: statistics.median(run["wall_seconds"] for run in values) for side, values in runs.items()}
    results = {"what": "W2 wall seconds on the simulated clock", "sides": SIDES, "runs": runs,
               "median_wall_seconds": medians,
               "overhead_percent": {side: round(100 * (medians[side] / medians["uniform"] - 1), 2)
                                    for side in SIDES if side != "uniform"},
               "settings": {"workload": workload.name, "data_root": data.root, "stand_in_data": data.stand_in}}
    print(json.dumps({"median_wall_seconds": medians, "overhead_percent": results["overhead_percent"]}))
    save_results(results, args.results_dir, f"{stamp}-system", "system.py", argv)
    return results


if __name__ == "__main__":
    main()
