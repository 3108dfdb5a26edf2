"""Asynchronous FedBuff against synchronous rounds on W2's shape (issue 24): seconds per 1,000 site trainings.

    python benchmarks/fedbuff.py                          # W2: 100 rounds of 50 vs 500 aggregations of 10, 1,000 sites
    python benchmarks/fedbuff.py --rounds 10 --sites 1000 10000   # 500 trainings a side, and flat in num_clients?
    python benchmarks/fedbuff.py --rounds 1 --sites 100   # seconds: checks the script itself

Both sides train as many sites (rounds x 50): sync samples 50 a round; fedbuff keeps concurrency=50 in flight
and aggregates every buffer_size=10 arrivals (5 x rounds aggregations). Plain SGD on W2's 50-image sites
(synthetic stand-in: the data's content does not change the time), no validation split, the global model
scored only after the last round, one private Ray for every run, the sides alternating (sync, fedbuff, sync,
fedbuff) so that a change in the machine's load hits both. `train_seconds` sums the rounds' training (the
workflow, without start-up); each run's 1-minute load average (`uptime`'s) is kept beside it, and each
(num_clients, repeat) pair's fedbuff/sync ratios of wall and train seconds; results print and are saved to
`benchmarks/results/<timestamp>-fedbuff.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from machine import describe_machine  # noqa: E402

PER_ROUND, CONCURRENCY, BUFFER = 50, 50, 10


def side(name: str, rounds: int, sites: int) -> list[str]:
    """The overrides of one side: W2's shape (batch 10, lr 0.1, no momentum, 1 epoch of a 50-image site)."""
    common = ["data=synthetic", "data.val_fraction=0", f"data.num_train={50 * sites}", "data.num_test=1000",
              f"num_clients={sites}", f"clients_per_round={min(PER_ROUND, sites)}", "local_epochs=1", "batch_size=10",
              "lr=0.1", "momentum=0", "eval_every=1000000", "workflows.cross_site_validate.enabled=false"]
    if name == "sync":
        return [*common, f"rounds={rounds}"]
    concurrency = min(CONCURRENCY, sites)
    return [*common, f"rounds={rounds * PER_ROUND // BUFFER}", "workflows.scatter_and_gather.mode=fedbuff",
            f"workflows.scatter_and_gather.concurrency={concurrency}",
            f"workflows.scatter_and_gather.buffer_size={min(BUFFER, concurrency)}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100, help="synchronous rounds (fedbuff: 5x as many aggregations)")
    parser.add_argument("--sites", type=int, nargs="+", default=[1000])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import ray

    from fedray import load_config, run_job

    ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    results = []
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for sites in args.sites:
                for repeat in range(args.repeats):
                    for name in ("sync", "fedbuff"):
                        started = time.perf_counter()
                        summary = run_job(load_config(side(name, args.rounds, sites)),
                                          Path(scratch) / f"{name}-{sites}-{repeat}")
                        wall = time.perf_counter() - started
                        trainings = sum(len(r["sites"]) for r in summary["rounds"])
                        train = sum(r["train_seconds"] for r in summary["rounds"])
                        row = {"side": name, "num_clients": sites, "repeat": repeat, "wall_s": round(wall, 2),
                               "load_1min": round(os.getloadavg()[0], 1),
                               "train_s": round(train, 2), "trainings": trainings,
                               "s_per_1000_trainings": round(1000 * train / trainings, 2),
                               "test_accuracy": summary["rounds"][-1]["global"].get("test_accuracy")}
                        results.append(row)
                        print(json.dumps(row), flush=True)
    finally:
        ray.shutdown()
    ratios = [{"num_clients": sync["num_clients"], "repeat": sync["repeat"],
               "wall_ratio": round(fedbuff["wall_s"] / sync["wall_s"], 3),
               "train_ratio": round(fedbuff["train_s"] / sync["train_s"], 3)}
              for sync, fedbuff in zip(results[::2], results[1::2])]
    for ratio in ratios:
        print(json.dumps(ratio))
    out = REPO / "benchmarks" / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-fedbuff.json"
    out.write_text(json.dumps({"machine": describe_machine(), "rounds": args.rounds, "results": results,
                               "fedbuff_over_sync": ratios}, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
