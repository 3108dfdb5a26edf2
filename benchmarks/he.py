"""What secure_aggregation=he costs (issue 25): W2's shape (1000 sites of 50 images, the tutorial CNN's 62,006
parameters, 5 steps of batch 10) with and without FLARE's homomorphic encryption, alternating, for a few rounds
at each cohort size: wall seconds per round, bytes each site sends and receives per round, and where HE's seconds
go (a site's encryption and decryption, the controller's additions).

    python benchmarks/he.py --rounds 5 --cohorts 10,50,200     # W2's shape, 5 rounds at each cohort size
    python benchmarks/he.py --tiny                             # seconds: tiny-W2, to check the script itself

Each run is a whole `python -m fedray.run` process (benchmarks/workload.py's command plus the side's keys),
measured as benchmarks/run.py measures it. Results print and are saved to `benchmarks/results/<timestamp>-he.json`.
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

SIDES = {"plain": [], "he": ["secure_aggregation=he"]}


def _rounds_log(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]


def _costs(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's per-round numbers: medians over the rounds after the first (which pays the actors' start)."""
    later = rounds[1:] or rounds
    sites = [site for entry in later for site in entry["sites"].values()]
    costs = {"train_seconds_per_round": statistics.median(entry["train_seconds"] for entry in later),
             "sites_per_round": statistics.median(len(entry["sites"]) for entry in later)}
    if "secure_aggregation" in later[0]:
        costs.update({
            "site_bytes_sent": statistics.median(site["he_bytes_sent"] for site in sites),
            "site_bytes_received": statistics.median(site["he_bytes_received"] for site in sites),
            "site_encrypt_seconds": statistics.median(site["he_encrypt_seconds"] for site in sites),
            "site_decrypt_seconds": statistics.median(site["he_decrypt_seconds"] for site in sites),
            "server_aggregate_seconds_per_round": statistics.median(
                entry["secure_aggregation"]["aggregate_seconds"] for entry in later),
            "server_bytes_received_per_round": statistics.median(
                entry["secure_aggregation"]["bytes_received"] for entry in later),
        })
    return costs


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cohorts", default="50", help="sites a round, comma-separated (W2: 50)")
    add_w2_options(parser, timeout=3600)
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    full, tiny = WORKLOADS["W2"]
    base = tiny if args.tiny else full
    work_dir = Path(args.work_dir).resolve()
    data = find_data(base, args.data_root, work_dir)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    cohorts = [base.clients_per_round] if args.tiny else [int(c) for c in args.cohorts.split(",")]
    runs: dict[str, dict[str, Any]] = {}
    for cohort in cohorts:
        workload = dataclasses.replace(base, rounds=args.rounds if not args.tiny else base.rounds,
                                       clients_per_round=cohort)
        for side, keys in SIDES.items():
            run_dir = work_dir / "runs" / stamp / f"{side}-{cohort}"
            measured = run_measured([*fedray_command(workload, data, run_dir), *keys], env=env, cwd=str(REPO),
                                    timeout=args.timeout)
            if measured.returncode != 0:
                raise SystemExit(f"{side} at {cohort} sites: exit {measured.returncode}: {measured.stderr[-2000:]}")
            summary = json.loads((run_dir / "summary.json").read_text())
            runs[f"{side}-{cohort}"] = {"side": side, "cohort": cohort, "wall_seconds": measured.wall_seconds,
                                        "test_accuracy": summary["rounds"][-1]["global"]["test_accuracy"],
                                        **_costs(_rounds_log(run_dir))}
            print(f"{side:>6} {cohort:>4} sites/round: {runs[f'{side}-{cohort}']}", flush=True)
    ratios = {cohort: round(runs[f"he-{cohort}"]["train_seconds_per_round"]
                            / runs[f"plain-{cohort}"]["train_seconds_per_round"], 2) for cohort in cohorts}
    results = {"what": "W2's shape with and without secure_aggregation=he", "sides": SIDES, "runs": runs,
               "he_over_plain_seconds_per_round": ratios,
               "settings": {"workload": base.name, "rounds": args.rounds, "data_root": data.root,
                            "stand_in_data": data.stand_in}}
    print(json.dumps({"he_over_plain_seconds_per_round": ratios}))
    save_results(results, args.results_dir, f"{stamp}-he", "he.py", argv)
    return results


if __name__ == "__main__":
    main()
