"""What SecAgg+ costs (issue 25): W2's wall per round without and with secure_aggregation=secagg_plus, the bytes
each site sends and receives, where the protocol's seconds go, and how that grows with the cohort (10 / 50 / 200
sites a round, W2's 1000 sites and tutorial CNN of 62,006 parameters).

    python benchmarks/secagg.py --rounds 6            # W2's shape, a few rounds per point
    python benchmarks/secagg.py --tiny                # seconds: tiny-W2, to check the script itself

Each run is a whole `python -m fedray.run` process (benchmarks/workload.py's command plus the side's keys). A
round's wall is its `train_seconds` in summary.json (sampling, the key stages, training, masking, unmasking,
aggregation; the global evaluation runs once, after the last round), the median over the rounds after the first
(which warms the workers). Results print and are saved to `benchmarks/results/<timestamp>-secagg.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
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

SIDES = {"plain": [], "secagg_plus": ["secure_aggregation=secagg_plus"]}


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4) if values else 0.0


def _point(summary: dict[str, Any]) -> dict[str, Any]:
    """One run's numbers: its median round, and SecAgg+'s costs per round (medians over the rounds after the first)."""
    rounds = summary["rounds"][1:] or summary["rounds"]
    point: dict[str, Any] = {"round_seconds": _median([r["train_seconds"] for r in rounds]),
                             "test_accuracy": summary["rounds"][-1]["global"].get("test_accuracy")}
    secure = [r["secure_aggregation"] for r in rounds if "secure_aggregation" in r]
    if secure:
        point.update({
            "bytes_sent_per_site": _median([s["bytes_sent_per_site"]["mean"] for s in secure]),
            "bytes_received_per_site": _median([s["bytes_received_per_site"]["mean"] for s in secure]),
            "num_shares": secure[-1]["num_shares"], "threshold": secure[-1]["threshold"],
            "key_agreement_seconds": _median([s["seconds"]["key_agreement"] for s in secure]),
            "masking_seconds_per_site": _median([s["seconds"]["masking_per_site"] for s in secure]),
            "unmasking_seconds": _median([s["seconds"]["unmasking"] for s in secure]),
        })
    return point


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds per run (the first is not counted)")
    parser.add_argument("--cohorts", default="10,50,200", help="sites a round, comma-separated")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side, alternating (a loaded machine)")
    add_w2_options(parser, timeout=1800)
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    full, tiny = WORKLOADS["W2"]
    base = tiny if args.tiny else full
    cohorts = [base.clients_per_round] if args.tiny else [int(c) for c in args.cohorts.split(",")]
    work_dir = Path(args.work_dir).resolve()
    data = find_data(base, args.data_root, work_dir)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    points: dict[str, list[dict[str, Any]]] = {}
    for cohort, repeat, (side, keys) in ((c, r, s) for c in cohorts for r in range(args.repeats) for s in SIDES.items()):
        workload = dataclasses.replace(base, rounds=args.rounds, clients_per_round=cohort)
        run_dir = work_dir / "runs" / stamp / f"{side}-{cohort}-{repeat}"
        measured = run_measured([*fedray_command(workload, data, run_dir), *keys], env=env, cwd=str(REPO),
                                timeout=args.timeout)
        if measured.returncode != 0:
            raise SystemExit(f"{side} at {cohort} sites a round: exit {measured.returncode}: {measured.stderr[-2000:]}")
        point = {**_point(json.loads((run_dir / "summary.json").read_text())), "wall_seconds": measured.wall_seconds}
        points.setdefault(f"{side}-{cohort}", []).append(point)
        print(f"{side:>12} {cohort:>4} sites a round, run {repeat + 1}: {point}", flush=True)
    medians = {name: _median([run["round_seconds"] for run in runs]) for name, runs in points.items()}
    ratios = {cohort: round(medians[f"secagg_plus-{cohort}"] / medians[f"plain-{cohort}"], 3) for cohort in cohorts}
    results = {"what": "W2's wall per round with and without SecAgg+, and its costs, by cohort", "sides": SIDES,
               "points": points, "median_round_seconds": medians, "secagg_over_plain": ratios,
               "settings": {"workload": base.name, "rounds": args.rounds, "cohorts": cohorts, "data_root": data.root,
                            "stand_in_data": data.stand_in}}
    print(json.dumps({"secagg_over_plain": ratios}))
    save_results(results, args.results_dir, f"{stamp}-secagg", "secagg.py", argv)
    return results


if __name__ == "__main__":
    main()
