"""A sweep of 6 small jobs, one after another (Hydra's basic launcher) and at once (hydra/launcher=fedray_ray), issue 26.

    python benchmarks/sweep.py                       # algorithm=fedavg,fedprox,scaffold x partition.alpha=1.0,0.1
    python benchmarks/sweep.py --num-cpus 16         # the same Ray CPU budget (ray.num_cpus) on both sides
    python benchmarks/sweep.py --rounds 1 --sides parallel   # seconds: checks the script itself

Each job: 8 sites, 3 rounds, Dirichlet partition, the synthetic set (4,000 training images, 1,000 test), no
cross-site evaluation. Each side is one `python -m fedray.run -m ...` process, measured whole (wall, peak
memory of its process tree: benchmarks/measure.py); the sides alternate per repeat so a change in the machine's
load hits both. Per job, summary.json's `wall_seconds` and its `timings` (start-up, workflows, shutdown).

The 16-core estimate is a model over the sequential side's per-job numbers, not a measurement:
- sequential on 16 cores: the sweep's own overhead (its wall less its jobs' `wall_seconds`) and each job's
  start-up and shutdown as measured (one process, little parallelism), its rounds (`workflows`) 8/A times
  faster with 8 site actors instead of the A it had here (ideal scaling);
- parallel on 16 cores: six jobs at once, each with 16/6 CPUs (ray.share), i.e. 2 single-threaded site actors,
  so each runs about as fast as alone on 2 cores: the slowest job's wall as measured on the sequential side, plus
  the sweep's overhead, taken as the sequential side's (the same sweep process; the parallel side's own, its
  wall less its slowest job's, is printed too, but on 2 cores it holds six jobs' start-ups queued for the cores).
Results print and are saved to `benchmarks/results/<timestamp>-sweep.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from machine import describe_machine, summary_line  # noqa: E402
from measure import run_measured  # noqa: E402

JOBS = ["algorithm=fedavg,fedprox,scaffold", "partition=dirichlet", "partition.alpha=1.0,0.1"]
TARGET_CORES, TARGET_ACTORS_PER_JOB = 16, 2  # 16 cores, six jobs at once: 16/6 CPUs each, 2 site actors


def command(side: str, sweep_dir: Path, rounds: int, num_cpus: int | None, concurrency: int) -> list[str]:
    job = ["num_clients=8", f"rounds={rounds}", "data=synthetic", "data.num_train=4000", "data.num_test=1000",
           "workflows.cross_site_validate.enabled=false", f"hydra.sweep.dir={sweep_dir}"]
    if num_cpus:
        job.append(f"ray.num_cpus={num_cpus}")
    launcher = ["hydra/launcher=fedray_ray", f"hydra.launcher.concurrency={concurrency}"] if side == "parallel" else []
    return [sys.executable, "-m", "fedray.run", "-m", *JOBS, *job, *launcher]


def jobs_of(sweep_dir: Path) -> list[dict]:
    jobs = []
    for summary_path in sorted(sweep_dir.glob("*/summary.json"), key=lambda p: int(p.parent.name)):
        summary = json.loads(summary_path.read_text())
        jobs.append({"job": summary_path.parent.name, "status": summary["status"],
                     "wall_s": summary.get("wall_seconds"), "timings": summary.get("timings", {}),
                     "final_test_accuracy": (summary["rounds"][-1]["global"].get("test_accuracy")
                                             if summary["rounds"] else None)})
    return jobs


def estimate(sequential: dict, parallel: dict, actors_here: int) -> dict:
    """The 16-core model of the module's docstring, from one repeat of each side."""
    seq_jobs, par_jobs = sequential["jobs"], parallel["jobs"]
    speedup = TARGET_CORES // 2 / actors_here  # 8 site actors (8 sites) instead of actors_here
    seq_overhead = sequential["wall_s"] - sum(job["wall_s"] for job in seq_jobs)
    seq16 = seq_overhead + sum(job["wall_s"] - job["timings"].get("workflows", 0) * (1 - 1 / speedup) for job in seq_jobs)
    par16 = max(job["wall_s"] for job in seq_jobs) + seq_overhead
    overhead_here = parallel["wall_s"] - max(job["wall_s"] for job in par_jobs)
    return {"sequential_16_cores_s": round(seq16, 1), "parallel_16_cores_s": round(par16, 1),
            "ratio": round(seq16 / par16, 2), "sweep_overhead_sequential_s": round(seq_overhead, 1),
            "sweep_overhead_parallel_here_s": round(overhead_here, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--num-cpus", type=int, default=None, help="ray.num_cpus for both sides (default: the machine's)")
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--sides", nargs="+", default=["sequential", "parallel"])
    parser.add_argument("--estimate", type=Path, help="a results file: print its 16-core estimate again, run nothing")
    args = parser.parse_args()
    if args.estimate:
        saved = json.loads(args.estimate.read_text())
        sides = {row["side"]: row for row in saved["results"] if row["returncode"] == 0}
        actors_here = min(8, saved["num_cpus"] or saved["machine"]["logical_cores"])
        print(json.dumps(estimate(sides["sequential"], sides["parallel"], actors_here)))
        return

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("RAY_ADDRESS", None)  # each side starts its own private Ray
    machine = describe_machine()
    print(f"machine: {summary_line(machine)}; load average {os.getloadavg()}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for side in args.sides:
                sweep_dir = Path(scratch) / f"{side}-{repeat}"
                load_before = os.getloadavg()[0]
                measured = run_measured(command(side, sweep_dir, args.rounds, args.num_cpus, args.concurrency),
                                        env=env, cwd=scratch, timeout=3600)
                row = {"side": side, "repeat": repeat, "returncode": measured.returncode,
                       "wall_s": measured.wall_seconds, "peak_rss_mb": measured.peak_rss_mb,
                       "load_before": round(load_before, 1), "load_after": round(os.getloadavg()[0], 1),
                       "jobs": jobs_of(sweep_dir)}
                if measured.returncode != 0:
                    row["stderr"] = measured.stderr[-2000:]
                results.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "jobs"}), flush=True)
                for job in row["jobs"]:
                    print("   ", json.dumps(job), flush=True)
    report: dict = {"machine": machine, "rounds": args.rounds, "num_cpus": args.num_cpus,
                    "concurrency": args.concurrency, "results": results}
    by_side = {side: [r for r in results if r["side"] == side and r["returncode"] == 0] for side in args.sides}
    if all(by_side.get(side) for side in ("sequential", "parallel")):
        walls = {side: statistics.median(r["wall_s"] for r in rows) for side, rows in by_side.items()}
        report["median_wall_s"] = walls
        report["ratio_here"] = round(walls["sequential"] / walls["parallel"], 2)
        actors_here = min(8, args.num_cpus or os.cpu_count() or 1)
        report["estimate_16_cores"] = estimate(by_side["sequential"][0], by_side["parallel"][0], actors_here)
        print(json.dumps({key: report[key] for key in ("median_wall_s", "ratio_here", "estimate_16_cores")}), flush=True)
    out = REPO / "benchmarks" / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-sweep.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
