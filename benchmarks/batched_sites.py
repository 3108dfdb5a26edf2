"""K sites' local training, one site after another against all at once (fedray.site.batched_training), in one process.

    python benchmarks/batched_sites.py                      # K=8 tutorial CNNs, batch 32 and 10, 1 and 2 threads
    python benchmarks/batched_sites.py --device cuda --sites 50 --batch-sizes 10

A "round" here is what a worker does with its sites: start each from the same global
weights, train its shard (`--steps` full batches an epoch, 1 epoch), hand back each site's
weights as numpy (as a site's result leaves the worker). The two ways alternate, repeat by
repeat, so that a load change on a shared machine hits both; medians are printed as JSON.
Needs torch and numpy only (no Ray, Hydra or OmegaConf), so it runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedray.models import Net  # noqa: E402
from fedray.site.batched_training import train_sites_batched  # noqa: E402
from fedray.site.training import get_params, load_params, train_epochs  # noqa: E402

Params = dict[str, np.ndarray]
RoundResult = list[tuple[Params, int]]  # each site's (weights, steps)


def resident_data(num_images: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 CIFAR-shaped images and labels on `device`: the timing of training does not
    depend on what the pixels show, and the data is made in a fraction of a second. Each from its
    own stream, so a smaller set is the first items of a larger one."""
    images = np.random.default_rng([seed, 0]).integers(0, 256, size=(num_images, 3, 32, 32), dtype=np.uint8)
    labels = np.random.default_rng([seed, 1]).integers(0, 10, size=num_images).astype(np.int64)
    return torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device)


def site_generators(seed: int, current_round: int, sites: Sequence[int]) -> list[torch.Generator]:
    """A shuffle generator per (seed, round, site), fresh for each way of training."""
    return [torch.Generator().manual_seed(seed * 1_000_003 + current_round * 10_007 + site) for site in sites]


def train_in_turn(model, images, labels, shards, generators, global_params: Params, **settings) -> RoundResult:
    """One site after another in one model, as a fedray site actor serves its sites."""
    results = []
    for shard, generator in zip(shards, generators):
        load_params(model, global_params)
        _, steps = train_epochs(model, images, labels, shard, generator=generator, **settings)
        results.append((get_params(model), steps))
    return results


def train_at_once(model, images, labels, shards, generators, global_params: Params, **settings) -> RoundResult:
    """All the sites at once, vmapped over their stacked weights."""
    load_params(model, global_params)
    return [(r.params, r.steps) for r in train_sites_batched(model, images, labels, shards, generators=generators,
                                                              **settings)]


WAYS: dict[str, Callable[..., RoundResult]] = {"in_turn": train_in_turn, "batched": train_at_once}


def time_rounds(way: Callable[..., RoundResult], model, images, labels, shards, global_params: Params,
                rounds: int, device: torch.device, first_round: int = 0, **settings) -> list[float]:
    """Seconds of each of `rounds` rounds of `way` (each from the same global weights)."""
    seconds = []
    for current_round in range(first_round, first_round + rounds):
        generators = site_generators(0, current_round, range(len(shards)))
        _synchronize(device)
        started = time.perf_counter()
        way(model, images, labels, shards, generators, global_params, **settings)
        _synchronize(device)
        seconds.append(time.perf_counter() - started)
    return seconds


def max_difference(a: RoundResult, b: RoundResult) -> float:
    """The largest absolute weight difference between two ways' results for the same round."""
    return max(float(np.abs(pa[name] - pb[name]).max()) for (pa, _), (pb, _) in zip(a, b) for name in pa)


def compare(sites: int, batch_size: int, steps: int, threads: int, repeats: int, rounds: int,
            device: torch.device, momentum: float = 0.0, lr: float = 0.05) -> dict:
    """Median seconds per round of each way for K=`sites` shards of `steps` full batches, and their ratio."""
    torch.set_num_threads(threads)
    per_site = batch_size * steps
    images, labels = resident_data(sites * per_site, device)
    shards = [np.arange(k * per_site, (k + 1) * per_site) for k in range(sites)]
    torch.manual_seed(0)
    model = Net().to(device)
    global_params = get_params(model)
    settings = dict(epochs=1, batch_size=batch_size, lr=lr, momentum=momentum)
    generators = site_generators(0, 0, range(sites))
    difference = max_difference(train_in_turn(model, images, labels, shards, generators, global_params, **settings),
                                train_at_once(model, images, labels, shards, site_generators(0, 0, range(sites)),
                                              global_params, **settings))  # also the warm-up of both ways
    times: dict[str, list[float]] = {name: [] for name in WAYS}
    for repeat in range(repeats):
        for name, way in WAYS.items():
            times[name] += time_rounds(way, model, images, labels, shards, global_params, rounds, device,
                                       first_round=1 + repeat * rounds, **settings)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "sites": sites, "batch_size": batch_size, "steps_per_site": steps, "threads": threads,
        "device": str(device), "rounds_timed": repeats * rounds,
        "seconds_per_round": {name: round(value, 5) for name, value in medians.items()},
        "speedup_batched": round(medians["in_turn"] / medians["batched"], 3),
        "max_weight_difference": difference,
    }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sites", type=int, default=8)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 10])
    parser.add_argument("--steps", type=int, default=None, help="full batches per site (default: 10 at batch 32, "
                                                                  "5 at batch 10: 320 and 50 images)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="rounds timed per repeat")
    args = parser.parse_args(argv)
    results = []
    for batch_size in args.batch_sizes:
        steps = args.steps or (5 if batch_size <= 10 else 10)
        for threads in args.threads:
            results.append(compare(args.sites, batch_size, steps, threads, args.repeats, args.rounds,
                                   torch.device(args.device)))
            print(json.dumps(results[-1]), flush=True)
    return results


if __name__ == "__main__":
    main()
