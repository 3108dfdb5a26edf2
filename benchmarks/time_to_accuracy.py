"""The worked comparison of README "Time and heterogeneity" (issue 24): on W2 with system=lognormal, FedAvg in
synchronous rounds, with over_selection=1.3, and asynchronous FedBuff; test accuracy against simulated hours.

    python benchmarks/time_to_accuracy.py                    # W2: the three runs (as many site trainings each), then the plot
    python benchmarks/time_to_accuracy.py --tiny             # seconds: tiny-W2, to check the script itself
    python benchmarks/time_to_accuracy.py --from DIR         # only the plot and table, from DIR/<side>/rounds.jsonl

Every side trains 5,000 sites (W2's 100 rounds of 50; FedBuff: concurrency 50, 500 aggregations of buffer 10,
polynomial staleness weights) and scores the global model on the test set 20 times along the way (every 5
rounds, every 25 aggregations). Each run is a whole `python -m fedray.run` process (benchmarks/workload.py's
command plus the side's keys), one after another. The plot and the table come from the runs' rounds.jsonl alone:
test accuracy against `sim_time`; hours to reach `--target` (default: 90% of the lowest final accuracy, so every
side reaches it), final accuracy, wall seconds. Saved to `benchmarks/results/<timestamp>-time-to-accuracy.json`
and `.png` (`--plot` names another PNG, e.g. the README's docs/time_to_accuracy.png).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from machine import describe_machine  # noqa: E402
from measure import run_measured  # noqa: E402
from workload import WORKLOADS, fedray_command, find_data  # noqa: E402

LABELS = {"sync": "FedAvg, synchronous", "over_selection": "FedAvg, over_selection=1.3",
          "fedbuff": "FedBuff, polynomial staleness"}
EVALUATIONS = 20  # test-set scores per run: the curve's points
BUFFER = 10  # FedBuff's arrivals per aggregation; concurrency is W2's 50 sites a round


def sides(rounds: int, per_round: int) -> dict[str, list[str]]:
    """Each side's keys (past the workload's): the same number of site trainings, rounds x per_round."""
    buffer = min(BUFFER, per_round)
    aggregations = rounds * per_round // buffer
    return {
        "sync": ["system=lognormal", f"eval_every={max(1, rounds // EVALUATIONS)}"],
        "over_selection": ["system=lognormal", "workflows.scatter_and_gather.over_selection=1.3",
                               f"eval_every={max(1, rounds // EVALUATIONS)}"],
        "fedbuff": ["system=lognormal", f"rounds={aggregations}", f"eval_every={max(1, aggregations // EVALUATIONS)}",
                    "workflows.scatter_and_gather.mode=fedbuff", f"workflows.scatter_and_gather.concurrency={per_round}",
                    f"workflows.scatter_and_gather.buffer_size={buffer}", "workflows.scatter_and_gather.staleness=polynomial"],
    }


def curve(run_dir: Path) -> list[tuple[float, float]]:
    """(simulated hours, test accuracy) at each round the run scored, from its rounds.jsonl."""
    points = []
    for line in (run_dir / "rounds.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "test_accuracy" in record.get("global", {}):
            points.append((record["sim_time"] / 3600, record["global"]["test_accuracy"]))
    return points


def hours_to(points: list[tuple[float, float]], target: float) -> Optional[float]:
    """The simulated hours of the first score at or above `target` (None: never reached)."""
    return next((hours for hours, accuracy in points if accuracy >= target), None)


def table(curves: dict[str, list[tuple[float, float]]], walls: dict[str, Optional[float]],
          target: Optional[float]) -> tuple[float, list[dict[str, Any]]]:
    if target is None:  # 90% of the lowest final accuracy: a level every side reaches
        target = math.floor(90 * min(points[-1][1] for points in curves.values())) / 100
    rows = [{"side": side, "hours_to_target": hours_to(points, target), "final_accuracy": points[-1][1],
             "final_sim_hours": points[-1][0], "wall_seconds": walls.get(side)} for side, points in curves.items()]
    return target, rows


def markdown(target: float, rows: list[dict[str, Any]]) -> str:
    def number(value: Optional[float], digits: int) -> str:
        return "not reached" if value is None else f"{value:.{digits}f}"

    lines = [f"| side | simulated hours to {target:.2f} test accuracy | final test accuracy | simulated hours in all | wall (s) |",
             "|---|---|---|---|---|"]
    lines += [f"| {LABELS[row['side']]} | {number(row['hours_to_target'], 4)} | {row['final_accuracy']:.4f} | "
              f"{row['final_sim_hours']:.4f} | {number(row['wall_seconds'], 1)} |" for row in rows]
    return "\n".join(lines)


def plot(curves: dict[str, list[tuple[float, float]]], target: float, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2))
    for side, points in curves.items():
        axes.plot([h for h, _ in points], [a for _, a in points], marker="o", markersize=3, label=LABELS[side])
    axes.axhline(target, color="grey", linewidth=0.8, linestyle=":")
    axes.set_xlabel("simulated hours")
    axes.set_ylabel("test accuracy")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny-W2: seconds, for checking the script")
    parser.add_argument("--from", dest="source", default=None, help="read DIR/<side>/rounds.jsonl; run nothing")
    parser.add_argument("--target", type=float, default=None, help="the accuracy whose simulated hours the table gives")
    parser.add_argument("--data-root", default=None, help="holds cifar-10-batches-py/ (else fedray's cache or a stand-in)")
    parser.add_argument("--work-dir", default="/tmp/fedray-bench")
    parser.add_argument("--results-dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--plot", default=None, help="also write the plot here")
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    full, tiny = WORKLOADS["W2"]
    workload = tiny if args.tiny else full
    keys = sides(workload.rounds, workload.clients_per_round)
    walls: dict[str, Optional[float]] = {}
    if args.source:
        runs = Path(args.source)
        walls = json.loads((runs / "walls.json").read_text()) if (runs / "walls.json").exists() else {}
    else:
        work_dir = Path(args.work_dir).resolve()
        data = find_data(workload, args.data_root, work_dir)
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
        runs = work_dir / "runs" / f"{stamp}-time-to-accuracy"
        for side, side_keys in keys.items():
            # The side's keys replace the workload's (eval_every, rounds): Hydra refuses a key given twice.
            overridden = {key.split("=", 1)[0] for key in side_keys}
            command = [part for part in fedray_command(workload, data, runs / side) if part.split("=", 1)[0] not in overridden]
            measured = run_measured([*command, *side_keys], env=env, cwd=str(REPO), timeout=args.timeout)
            if measured.returncode != 0:
                raise SystemExit(f"{side}: exit {measured.returncode}: {measured.stderr[-2000:]}")
            walls[side] = round(measured.wall_seconds, 1)
            print(f"{side:>20}: {walls[side]} s, load {os.getloadavg()[0]:.1f}", flush=True)
        (runs / "walls.json").write_text(json.dumps(walls))
    curves = {side: curve(runs / side) for side in keys}
    target, rows = table(curves, walls, args.target)
    print(markdown(target, rows))
    out = Path(args.results_dir) / f"{stamp}-time-to-accuracy"
    out.parent.mkdir(parents=True, exist_ok=True)
    title = f"{workload.name}, system=lognormal: {workload.rounds * workload.clients_per_round:,} site trainings a side"
    for path in [out.with_suffix(".png"), *([Path(args.plot)] if args.plot else [])]:
        plot(curves, target, title, path)
    results = {"what": "test accuracy against simulated hours, W2 with system=lognormal", "sides": keys,
               "target": target, "table": rows, "curves": curves, "runs": str(runs), "machine": describe_machine(),
               "load_1min": os.getloadavg()[0], "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "command": " ".join(["python", "benchmarks/time_to_accuracy.py", *(argv if argv is not None else sys.argv[1:])])}
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(out.with_suffix(".json"))
    return results


if __name__ == "__main__":
    main()
