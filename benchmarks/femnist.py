"""W3, FEMNIST-shaped: 3,400 generated writers with LEAF's per-writer sample counts, 50 sampled a round,
LEAF's CNN; fedray against the plain-PyTorch floor doing the same work (benchmarks/plain_fedavg.py with
the same data keys, the same natural shards, the same sampled writers and shuffles).

    python benchmarks/femnist.py                 # 5 rounds each side, one run each (minutes: 770k images)
    python benchmarks/femnist.py --rounds 3 --writers 340   # a tenth of it

Needs partition=natural (fedray/data/partition.py). Seconds per round are the rounds' own (fedray: the
rounds' train_seconds, aggregation folded in; the floor: training + aggregation), so the data's generation,
Ray's start and the final evaluation, paid once, stay out of them; wall time and peak memory (the whole
process tree, benchmarks/measure.py) are the whole runs'. Saved to benchmarks/results/<stamp>-W3.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from machine import summary_line  # noqa: E402
from measure import run_measured  # noqa: E402
from run import _environment, weight_difference  # noqa: E402
from workload import save_results  # noqa: E402

from fedray.data.synthetic import LEAF_FEMNIST_MEAN  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    data = {"name": "synthetic", "input_shape": [1, 28, 28], "num_classes": 62, "num_writers": args.writers,
            "num_train": int(args.writers * LEAF_FEMNIST_MEAN), "num_test": 10_000, "val_fraction": 0.0, "seed": 0}
    work = Path(args.work_dir).resolve() / time.strftime("%Y%m%d-%H%M%S-W3")
    env, load_before = _environment(), os.getloadavg()
    fedray_cmd = [sys.executable, "-m", "fedray.run", "model=femnist_cnn", "partition=natural",
                  *(f"data.{key}={json.dumps(value).replace(' ', '')}" for key, value in data.items()),
                  f"num_clients={args.writers}", f"clients_per_round={args.per_round}", f"rounds={args.rounds}",
                  "local_epochs=1", f"batch_size={args.batch_size}", f"lr={args.lr}", "momentum=0",
                  f"eval_every={args.rounds}", "workflows.cross_site_validate.enabled=false", f"hydra.run.dir={work}"]
    floor_cmd = [sys.executable, str(REPO / "benchmarks" / "plain_fedavg.py"), f"--data-config={json.dumps(data)}",
                 "--partition=natural", "--model=fedray.models.FemnistCNN", f"--num-sites={args.writers}",
                 f"--clients-per-round={args.per_round}", f"--rounds={args.rounds}", "--local-epochs=1",
                 f"--batch-size={args.batch_size}", f"--lr={args.lr}", "--momentum=0", "--val-fraction=0",
                 "--parallel=processes", f"--workers={args.workers}", f"--save-weights={work / 'plain.npz'}"]

    fedray = run_measured(fedray_cmd, env=env, cwd=str(REPO), timeout=args.timeout)
    if fedray.returncode:
        raise SystemExit(f"W3: fedray failed:\n{fedray.stderr[-3000:]}")
    summary = json.loads((work / "summary.json").read_text())
    floor = run_measured(floor_cmd, env=env, cwd=str(REPO), timeout=args.timeout)
    if floor.returncode:
        raise SystemExit(f"W3: the floor failed:\n{floor.stderr[-3000:]}")
    report = json.loads(floor.stdout.strip().splitlines()[-1])

    fedray_round = sum(r["train_seconds"] for r in summary["rounds"]) / args.rounds
    floor_round = (report["timings"]["training"] + report["timings"]["aggregation"]) / args.rounds
    results = {
        "workload": "W3",
        "settings": {**vars(args), "data": data},
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "fedray": {"seconds_per_round": round(fedray_round, 3), "wall_seconds": fedray.wall_seconds,
                   "peak_rss_mb": fedray.peak_rss_mb, "peak_anon_rss_mb": fedray.peak_anon_rss_mb,
                   "rounds_seconds": [r["train_seconds"] for r in summary["rounds"]],
                   "test_accuracy": summary["rounds"][-1]["global"]["test_accuracy"], "timings": summary["timings"]},
        "floor": {"seconds_per_round": round(floor_round, 3), "wall_seconds": floor.wall_seconds,
                  "peak_rss_mb": floor.peak_rss_mb, "peak_anon_rss_mb": floor.peak_anon_rss_mb,
                  "test_accuracy": report["test_accuracy"], "timings": report["timings"]},
        "ratio_per_round": round(fedray_round / floor_round, 3),
        "max_weight_difference_to_fedray": weight_difference(work, work / "plain.npz"),
    }
    path = save_results(results, args.results_dir, f"{time.strftime('%Y%m%d-%H%M%S')}-W3", "femnist.py", argv)
    print(f"W3: {args.writers} writers ({data['num_train']} images), {args.per_round} a round, {args.rounds} rounds, "
          f"LEAF's CNN; {summary_line(results['machine'])}; load {load_before[0]:.2f} before")
    for side in ("fedray", "floor"):
        r = results[side]
        print(f"  {side:7s} {r['seconds_per_round']:7.2f} s/round  wall {r['wall_seconds']:7.1f} s  "
              f"peak RSS {r['peak_rss_mb']:7.0f} MB (anonymous {r['peak_anon_rss_mb']:.0f})  test_acc {r['test_accuracy']:.4f}")
    print(f"  fedray / floor per round: {results['ratio_per_round']:.2f}  "
          f"(weights differ by at most {results['max_weight_difference_to_fedray']:.1e}); saved {path}")
    return results


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=3400)
    parser.add_argument("--per-round", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=10)  # LEAF's FEMNIST minibatch
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--workers", type=int, default=2, help="the floor's worker processes (W2's two-worker floor)")
    parser.add_argument("--work-dir", default=str(REPO / "benchmarks" / "work"))
    parser.add_argument("--results-dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--timeout", type=float, default=3600.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
