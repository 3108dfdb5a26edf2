"""Sites sharing one GPU, three ways, on W1's and W2's shapes: one process in turn, processes, batched.

    python benchmarks/gpu.py                        # on a GPU machine: about a minute
    python benchmarks/gpu.py --device cpu --small   # the same script in seconds on CPU (a check, not a number)
    python benchmarks/gpu.py --out "$OUT/gpu.json"   # the JSON also written to a file

Needs torch and numpy only (no Ray, Hydra or OmegaConf): it measures what fedray's site
actors do on a GPU without Ray around them, so it runs on a bare GPU machine. The data is
resident on the device (random uint8 images: the time of training does not depend on the
pixels), batches are gathered there by index, as in fedray.site.training.

Workloads (the issue's shapes; FedAvg by steps, each round from the same global weights):
- W1: 8 sites of 5,625 images (W1's 50,000 less 10% validation, over 8), batch 32, lr 0.01,
  momentum 0.9, 1 local epoch (176 steps), 3 rounds.
- W2: 1,000 sites of 50 images, 50 sampled per round as fedray samples them, batch 10,
  lr 0.1, momentum 0, 1 local epoch (5 steps), 20 rounds timed (W2 has 100; its rounds are alike).

Ways:
- `in_turn`: the plain floor, one process training the round's sites one after another.
- `processes`: `--processes` (8) worker processes on the one GPU, as fedray puts 8 site actors on
  a GPU; W1 gives each its site, W2 each a share of the round's sites, trained in turn, returned as a
  partial weighted sum (issue 14's batches).
- `batched`: one process training the round's sites at once (fedray.site.batched_training).
- `processes_batched` (W2): the processes, each training its share batched.

Printed: one JSON object. `pool`: the worker processes' start (seconds, not in any round; the
one pool serves every processes way) and the device memory it holds (their CUDA contexts and
copies of the data). Per way: `seconds_per_round` (median of the rounds after the first),
`first_round_seconds` (cuDNN's and vmap's warm-up), `ratio_to_floor` (seconds against
`in_turn`'s), GPU memory: `peak_allocated_mb` (torch's allocator peak, the data left out, summed
over processes) and `device_used_mb` (the whole GPU's used memory after the rounds, less before
them: for the in-process ways the data and the allocator's cache, this process's context made
before and left out; for the processes ways the pool's and what the rounds added), and
`mb_per_site`, device_used_mb over
the sites that hold GPU memory at once (the round's sites: all are resident in the batched and
process ways). `max_weight_difference`: after round 0, the largest difference between a way's
global weights and `in_turn`'s (float32 rounding; TF32 convolutions where cuDNN allows them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from batched_sites import WAYS, resident_data, site_generators  # noqa: E402

from fedray.models import Net  # noqa: E402
from fedray.site.training import get_params  # noqa: E402

Params = dict[str, np.ndarray]
MB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    num_sites: int
    per_round: int
    site_size: int
    batch_size: int
    lr: float
    momentum: float
    rounds: int

    @property
    def settings(self) -> dict[str, Any]:
        return dict(epochs=1, batch_size=self.batch_size, lr=self.lr, momentum=self.momentum)


W1 = Shape("W1", num_sites=8, per_round=8, site_size=5625, batch_size=32, lr=0.01, momentum=0.9, rounds=3)
W2 = Shape("W2", num_sites=1000, per_round=50, site_size=50, batch_size=10, lr=0.1, momentum=0.0, rounds=20)
SMALL = {"W1": dataclasses.replace(W1, site_size=64, rounds=2),
         "W2": dataclasses.replace(W2, num_sites=100, per_round=10, rounds=3)}

# A worker process's state, set by _worker_start.
_worker: dict[str, Any] = {}


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = _parse(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu.py: --device cuda but torch sees no GPU; use --device cpu --small for a check")
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.zeros(1, device=device)  # this process's CUDA context, made before any way's memory is measured
    shapes = [SMALL["W1"], SMALL["W2"]] if args.small else [W1, W2]
    report: dict[str, Any] = {
        "device": _device_name(device), "torch": torch.__version__, "small": args.small,
        "processes": args.processes, "threads_per_process": args.threads,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32 if device.type == "cuda" else None,
    }
    # One pool of worker processes for every processes way, its data sized for the largest shape: a
    # pool's start (each process imports torch and makes its CUDA context) is paid and reported once.
    used_before_pool = _device_used(device)
    started = time.perf_counter()
    pool = _start_pool(args.processes, device, max(shape.num_sites * shape.site_size for shape in shapes),
                       args.threads)
    pool_used = _device_used(device)
    report["pool"] = {"start_seconds": round(time.perf_counter() - started, 3),
                      "device_used_mb": None if pool_used is None else round(pool_used - used_before_pool, 1)}
    try:
        for shape in shapes:
            ways = ["in_turn", "processes", "batched"]
            ways += ["processes_batched"] if shape.per_round > args.processes else []
            report[shape.name] = {"shape": dataclasses.asdict(shape)}
            floor_params = None
            for way in ways:
                _progress(f"{shape.name} {way} ...")
                in_pool = way.startswith("processes")
                result, first_params = run_way(shape, way, device, pool if in_pool else None, args.processes,
                                               held_mb=report["pool"]["device_used_mb"] if in_pool else 0.0)
                if floor_params is None:
                    floor_params = first_params
                result["max_weight_difference"] = max(float(np.abs(first_params[n] - floor_params[n]).max())
                                                      for n in floor_params)
                floor = report[shape.name].get("in_turn", result)["seconds_per_round"]
                result["ratio_to_floor"] = round(result["seconds_per_round"] / floor, 3)
                report[shape.name][way] = result
                _progress(f"  {json.dumps(result)}")
    finally:
        pool.close()
        pool.join()
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


def run_way(shape: Shape, way: str, device: torch.device, pool, processes: int,
            held_mb: Optional[float] = 0.0) -> tuple[dict, Params]:
    """Time `shape.rounds` FedAvg rounds done `way` (in `pool` for the processes ways, whose processes
    hold `held_mb` of device memory before any round); also the global weights after round 0."""
    if pool is None:
        used_before = _device_used(device)
        _worker_start(str(device), shape.num_sites * shape.site_size, threads=0, in_parent=True)
    else:
        pool.map(_release_cache, range(processes), chunksize=1)
        used_before = _device_used(device)
    torch.manual_seed(0)
    global_params = get_params(Net())
    seconds, after_first = [], None
    try:
        for current_round in range(shape.rounds):
            sites = sample_sites(shape, current_round)
            started = time.perf_counter()
            if pool is None:
                partials = [_train_share((shape, way, sites, global_params, current_round))]
            else:
                shares = [part for part in np.array_split(sites, processes) if len(part)]
                inner = "batched" if way == "processes_batched" else "in_turn"
                partials = pool.map(_train_share, [(shape, inner, s.tolist(), global_params, current_round)
                                                   for s in shares], chunksize=1)
            global_params = combine(partials)
            seconds.append(time.perf_counter() - started)
            if after_first is None:
                after_first = global_params
        peak_allocated = sum(p["peak_allocated_mb"] for p in partials)
        used_during = _device_used(device)
    finally:
        if pool is None:
            _worker.clear()
            _release_cache(0)
    device_used = None if used_during is None else round(used_during - used_before + (held_mb or 0.0), 1)
    return {
        "seconds_per_round": round(statistics.median(seconds[1:] or seconds), 5),
        "first_round_seconds": round(seconds[0], 5),
        "rounds": len(seconds),
        "peak_allocated_mb": round(peak_allocated, 1) if device.type == "cuda" else None,
        "device_used_mb": device_used,
        "mb_per_site": None if device_used is None else round(device_used / shape.per_round, 2),
    }, after_first


def sample_sites(shape: Shape, current_round: int, seed: int = 0) -> list[int]:
    """The round's sites, as fedray's scatter_and_gather.sample_sites draws them."""
    if shape.per_round >= shape.num_sites:
        return list(range(shape.num_sites))
    return sorted(np.random.default_rng([seed, current_round]).choice(shape.num_sites, size=shape.per_round,
                                                                      replace=False).tolist())


def combine(partials: Sequence[dict]) -> Params:
    """FedAvg by steps from partial weighted sums."""
    total = sum(p["weight"] for p in partials)
    return {name: (sum(p["sums"][name] for p in partials) / total).astype(np.float32) for name in partials[0]["sums"]}


def _train_share(task: tuple[Shape, str, list[int], Params, int]) -> dict:
    """Train some of the round's sites in this process; their weighted sum (by steps) and total weight."""
    shape, way, sites, global_params, current_round = task
    state = _worker
    device = state["images"].device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    shards = [np.arange(site * shape.site_size, (site + 1) * shape.site_size) for site in sites]
    results = WAYS[way](state["model"], state["images"], state["labels"], shards,
                        site_generators(0, current_round, sites), global_params, **shape.settings)
    sums = {name: sum(params[name].astype(np.float64) * steps for params, steps in results) for name in global_params}
    peak = (torch.cuda.max_memory_allocated(device) - state["data_bytes"]) / MB if device.type == "cuda" else 0.0
    return {"sums": sums, "weight": float(sum(steps for _, steps in results)), "peak_allocated_mb": peak}


def _start_pool(processes: int, device: torch.device, num_images: int, threads: int):
    # spawn: CUDA cannot be used in a forked child.
    pool = multiprocessing.get_context("spawn").Pool(processes, initializer=_worker_start,
                                                      initargs=(str(device), num_images, threads))
    pool.map(_ready, range(processes), chunksize=1)  # every worker up, its data on the device
    return pool


def _worker_start(device: str, num_images: int, threads: int, in_parent: bool = False) -> None:
    if not in_parent:
        torch.set_num_threads(threads)
    images, labels = resident_data(num_images, torch.device(device))
    model = Net().to(device)
    torch.optim.SGD(model.parameters(), lr=0.01)  # torch.optim's one-off import, outside the rounds
    _worker.update(images=images, labels=labels, model=model,
                   data_bytes=images.numel() * images.element_size() + labels.numel() * labels.element_size())


def _release_cache(_: int) -> bool:
    """The allocator's cached blocks back to the device, so that the next way's memory is its own."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return True


def _ready(_: int) -> bool:
    time.sleep(0.2)  # hold the task so that each worker takes one
    return True


def _device_used(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    return (total - free) / MB


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _parse(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny shapes: a check that the script runs")
    parser.add_argument("--processes", type=int, default=None,
                        help="worker processes sharing the device (default 8; 2 with --small)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    args.processes = args.processes or (2 if args.small else 8)
    return args


if __name__ == "__main__":
    main()
