"""What differential privacy costs (issue 23): W2's wall time with privacy=central against without it, the
ledger's accounting per round, and W2's accuracy and epsilon for a few noise multipliers.

    python benchmarks/privacy.py overhead                 # W2 without DP / central fixed clip / adaptive, alternating
    python benchmarks/privacy.py accounting               # the ledger over 1000 rounds of W2's event: ms per round
    python benchmarks/privacy.py components               # in one process: W2's DP work per round against its training
    python benchmarks/privacy.py table --noise 0.5 1 2    # W2 under central DP: test accuracy and epsilon
    python benchmarks/privacy.py overhead --tiny          # seconds: tiny-W2, to check the script itself

Each W2 run is a whole `python -m fedray.run` process (benchmarks/workload.py's command, plus the privacy
keys), measured as benchmarks/run.py measures it; the sides alternate so that a load change on the machine
hits all. Results print and are saved to `benchmarks/results/<timestamp>-privacy-<what>.json`.
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

from machine import describe_machine  # noqa: E402
from measure import run_measured  # noqa: E402
from workload import WORKLOADS, fedray_command, find_data  # noqa: E402

# W2's update norms (5 steps of SGD at lr 0.1 from the global CNN) are about 1-2 in its first rounds and
# shrink below 1 as it converges (adaptive clipping's median): a clip of 1 clips about half of them.
CLIP = 1.0
SIDES = {
    "none": [],
    "central": ["privacy=central", f"privacy.clip={CLIP}", "privacy.noise_multiplier=1.0"],
    # count_noise: W2's default (50/20 = 2.5) already leaves the updates' noise multiplier at 1.08 for 1.0.
    "adaptive": ["privacy=central", "privacy.clip=adaptive", "privacy.noise_multiplier=1.0"],
}


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = _parse(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.what == "accounting":
        results = accounting(args.rounds)
    elif args.what == "components":
        results = components(args.repeats)
    else:
        full, tiny = WORKLOADS["W2"]
        workload = tiny if args.tiny else full
        data = find_data(workload, args.data_root, Path(args.work_dir).resolve())
        run = _runner(workload, data, Path(args.work_dir).resolve() / "runs" / stamp, args.timeout)
        results = overhead(run, args.repeats) if args.what == "overhead" else table(run, args.noise)
        results["settings"] = {"workload": workload.name, "data_root": data.root, "stand_in_data": data.stand_in}
    results.update(created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), machine=describe_machine(),
                   command=" ".join(["python", "benchmarks/privacy.py", *(argv or sys.argv[1:])]))
    out = Path(args.results_dir) / f"{stamp}-privacy-{args.what}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"saved {out}")
    return results


def overhead(run, repeats: int) -> dict[str, Any]:
    """Each side `repeats` times, in turn; the medians and each DP side's overhead over the side without."""
    walls: dict[str, list[float]] = {side: [] for side in SIDES}
    accuracy: dict[str, list[float]] = {side: [] for side in SIDES}
    for repeat in range(repeats):
        for side, keys in SIDES.items():
            measured = run(f"{side}-{repeat}", keys)
            walls[side].append(measured["wall_seconds"])
            accuracy[side].append(measured["test_accuracy"])
            print(f"{side:>9} {repeat + 1}/{repeats}: {measured['wall_seconds']:.1f} s, test_acc "
                  f"{measured['test_accuracy']:.4f}, training {measured['training_seconds']:.1f} s", flush=True)
    medians = {side: statistics.median(values) for side, values in walls.items()}
    result = {"what": "W2 wall seconds with and without privacy=central", "sides": SIDES, "walls": walls,
              "test_accuracy": accuracy, "median_wall_seconds": medians,
              "overhead_percent": {side: round(100 * (medians[side] / medians["none"] - 1), 2)
                                   for side in SIDES if side != "none"}}
    print(json.dumps({"median_wall_seconds": medians, "overhead_percent": result["overhead_percent"]}))
    return result


def table(run, noise_multipliers: list[float]) -> dict[str, Any]:
    """W2 without DP, then under central DP (clip CLIP) per noise multiplier: accuracy, wall, epsilon."""
    from fedray.privacy.ledger import Ledger, round_event

    rows = []
    for z in [None, *noise_multipliers]:
        keys = [] if z is None else ["privacy=central", f"privacy.clip={CLIP}", f"privacy.noise_multiplier={z}"]
        measured = run("none" if z is None else f"z{z}", keys)
        row = {"noise_multiplier": z, "test_accuracy": measured["test_accuracy"],
               "wall_seconds": measured["wall_seconds"], "epsilon": measured.get("epsilon"), "delta": measured.get("delta")}
        if z is not None:  # the same noise with a Poisson sampler of the same expected cohort (tighter, add/remove)
            config = measured["config"]
            event = round_event(config["num_clients"], config["clients_per_round"], "poisson", z)
            row["epsilon_if_poisson"] = Ledger("rdp", measured["delta"]).epsilon_after(event, config["rounds"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"what": f"W2 under central DP, clip {CLIP}, fixed-size sampling, rdp", "rows": rows}


def accounting(rounds: int) -> dict[str, Any]:
    """The ledger's seconds per round over `rounds` rounds of W2's event, after `warm` (the event's RDP or PLD,
    computed once, by the controller in a thread while the site actors start); and that one-time cost.
    PLD needs a Poisson sampler (see ledger.py)."""
    from fedray.privacy.ledger import Ledger, round_event, warm

    cases = {"rdp, fixed (W2)": ("rdp", "fixed"), "rdp, poisson": ("rdp", "poisson"), "pld, poisson": ("pld", "poisson")}
    result: dict[str, Any] = {"what": f"the ledger's accounting per round over {rounds} rounds of 50 of 1000 sites, "
                                      "noise_multiplier 1, delta 1e-3", "cases": {}}
    for name, (accountant, sampling) in cases.items():
        ledger, event = Ledger(accountant, 1e-3), round_event(1000, 50, sampling, 1.0)
        started = time.perf_counter()
        warm(accountant, event)
        prepared = time.perf_counter() - started
        seconds = []
        for _ in range(rounds):
            started = time.perf_counter()
            ledger.spend(event)
            seconds.append(time.perf_counter() - started)
        case = {"mean_ms": 1e3 * statistics.mean(seconds), "median_ms": 1e3 * statistics.median(seconds),
                "max_ms": 1e3 * max(seconds), "last_ms": 1e3 * seconds[-1], "prepare_ms": 1e3 * prepared,
                "epsilon": ledger.epsilon}
        result["cases"][name] = case
        print(f"{name:>16}: {case['mean_ms']:.3f} ms a round on average (max {case['max_ms']:.3f}, last "
              f"{case['last_ms']:.3f}); the event's {accountant.upper()} once beforehand: {case['prepare_ms']:.0f} ms; "
              f"epsilon {case['epsilon']:.3f} after {rounds} rounds", flush=True)
    return result


def components(repeats: int) -> dict[str, Any]:
    """W2's round in one process, with and without what central DP adds (fixed and adaptive clip): 50 sites'
    local training (the tutorial CNN, 5 steps of batch 10, plain SGD) each folded into a compensated sum,
    against the same plus each site's clip before its fold and the server's noisy mean, adaptive step and
    ledger. Both in the same process, interleaved: on a shared machine the ratio holds where wall times
    of whole runs swing with the load."""
    import numpy as np
    import torch

    from fedray.aggregation import CompensatedSum
    from fedray.models import Net
    from fedray.privacy.ledger import Ledger, round_event, warm
    from fedray.privacy.mechanisms import (clip_update, next_clip, noise_generator, noisy_mean, private_names)
    from fedray.site.training import get_params, load_params, train_epochs

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Net()
    start = get_params(model)
    names = private_names(start)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 255, (2500, 3, 32, 32), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 10, 2500))
    event = round_event(1000, 50, "fixed", 1.0)
    warm("rdp", event)
    ledger = Ledger("rdp", 1e-3)

    def round_(current_round: int, dp: bool) -> float:
        started = time.perf_counter()
        total, unclipped = CompensatedSum(), []
        for site in range(50):
            load_params(model, start)
            train_epochs(model, images, labels, np.arange(site * 50, site * 50 + 50), epochs=1, batch_size=10, lr=0.1,
                         momentum=0.0, generator=torch.Generator().manual_seed(site))
            params = get_params(model, copy=False)
            if dp:
                params, norm = clip_update(params, start, 1.0, names)
                unclipped.append(norm <= 1.0)
            total.add(params, 1.0 if dp else 5.0)
        if dp:
            noisy_mean(total, start, names, 50, 1.08, noise_generator(0, current_round, 1))
            next_clip(1.0, unclipped, 50, 0.5, 0.2, 2.5, noise_generator(0, current_round, 2))
            ledger.spend(event)
        else:
            total.result(total.total_weight)
        return time.perf_counter() - started

    plain, private = [], []
    for current_round in range(repeats * 10):
        plain.append(round_(current_round, False))
        private.append(round_(current_round, True))
    medians = {"without": statistics.median(plain), "central": statistics.median(private)}
    added = {"clip_ms_per_site": None}
    trained = get_params(model)
    started = time.perf_counter()
    for _ in range(200):
        clip_update(trained, start, 0.01, names)
    added["clip_ms_per_site"] = 1e3 * (time.perf_counter() - started) / 200
    summed = CompensatedSum()
    for _ in range(50):
        summed.add(trained, 1.0)
    started = time.perf_counter()
    for current_round in range(50):
        noisy_mean(summed, start, names, 50, 1.0, noise_generator(0, current_round, 1))
    added["noisy_mean_ms_per_round"] = 1e3 * (time.perf_counter() - started) / 50
    result = {"what": "one W2 round in one process (50 sites trained in turn, one thread), median seconds of "
                      f"{len(plain)} interleaved rounds each way", "median_round_seconds": medians,
              "overhead_percent": round(100 * (medians["central"] / medians["without"] - 1), 2), **added}
    print(json.dumps(result, indent=1))
    return result


def _runner(workload, data, runs: Path, timeout: float):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}

    def run(name: str, keys: list[str]) -> dict[str, Any]:
        run_dir = runs / name
        measured = run_measured([*fedray_command(workload, data, run_dir), *keys], env=env, cwd=str(REPO),
                                timeout=timeout)
        if measured.returncode != 0:
            raise SystemExit(f"{name}: exit {measured.returncode}: {measured.stderr[-2000:]}")
        summary = json.loads((run_dir / "summary.json").read_text())
        privacy = summary.get("privacy") or {}
        return {"wall_seconds": measured.wall_seconds, "test_accuracy": summary["rounds"][-1]["global"]["test_accuracy"],
                "training_seconds": summary["timings"].get("workflows", float("nan")), "epsilon": privacy.get("epsilon"),
                "delta": privacy.get("delta"), "config": summary["config"]}

    return run


def _parse(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("overhead", "accounting", "components", "table"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1000, help="accounting: rounds composed")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="table: noise multipliers")
    parser.add_argument("--tiny", action="store_true", help="tiny-W2: seconds, for checking the script")
    parser.add_argument("--data-root", default=None, help="holds cifar-10-batches-py/ (else fedray's cache or a stand-in)")
    parser.add_argument("--work-dir", default=str(REPO / "benchmarks" / "work"))
    parser.add_argument("--results-dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--timeout", type=float, default=1800)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
