"""The plain-PyTorch floor of a benchmark workload: the same FedAvg rounds in one process, no Ray.

The same work as the fedray job: the same dataset files read by fedray's loader,
the same shards (fedray.data.partition), the same sampled sites each round (fedray's
seeded draw), the same seeded model init and per-site shuffles, local SGD and
evaluation from fedray.site.training (itself plain PyTorch on tensor-resident data)
and FedAvg by steps, summed with fedray.aggregation's CompensatedSum (float64 with
compensation, its scratch arrays reused from site to site: for a 6.6M-parameter model a
fold that allocated its temporaries cost 1.7x as much), so the global weights come out
the same, bit for bit in practice; then
the global model's test accuracy. It does not score the global model on
validation splits each round, as a fedray job does: a floor does only what the
workload asks for.

The cores, two ways (`--parallel`): `processes`, a pool of single-threaded
workers forked after the data is loaded (they share it copy-on-write), each task
a share of the round's sites trained in turn and returned as one partial
weighted sum; or `threads`, one process training the sites in turn with
`--workers` torch threads (1: the one-process, one-thread floor).

Prints one JSON line: the accuracy and the seconds of each phase.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

# fedray/__init__.py imports Ray and Hydra (seconds of start-up) that plain PyTorch does not need:
# register the package without running it, so only the numpy/torch modules below are imported.
_PACKAGE = types.ModuleType("fedray")
_PACKAGE.__path__ = [str(Path(__file__).resolve().parent.parent / "fedray")]
sys.modules.setdefault("fedray", _PACKAGE)

from fedray.aggregation import CompensatedSum, pool_metrics  # noqa: E402
from fedray.data.cifar10 import load_cifar10, load_dataset  # noqa: E402
from fedray.data.partition import partition  # noqa: E402
from fedray.site.training import evaluate, get_params, load_params, to_device, train_epochs  # noqa: E402

Params = dict[str, np.ndarray]

# Set in the parent before the pool forks: workers inherit the data and shards without a copy.
_state: dict[str, Any] = {}


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    if args.data_config:  # any dataset by fedray's own loader and keys (W3: the FEMNIST-shaped stand-in)
        from omegaconf import OmegaConf

        dataset = load_dataset(OmegaConf.create(json.loads(args.data_config)))
    else:
        dataset = load_cifar10(args.data_root, download=False, check_integrity=args.check_integrity)
    natural = {"ids": dataset.train_ids} if args.partition == "natural" else {}
    shards = partition(dataset.train_labels, args.num_sites, method=args.partition, val_fraction=args.val_fraction,
                       seed=args.seed, **natural)
    _state["model_class"] = _model_class(args.model)
    train_images, train_labels = to_device(_chw(dataset.train_images), dataset.train_labels, torch.device("cpu"))
    test_images, test_labels = to_device(_chw(dataset.test_images), dataset.test_labels, torch.device("cpu"))
    del dataset  # its HWC images: the workers fork after this, and would each hold a copy-on-write view of them
    _state.update(args=args, shards=shards, images=train_images, labels=train_labels,
                  test_images=test_images, test_labels=test_labels)
    timings["data"], clock = _lap(clock)

    torch.manual_seed(args.seed)
    global_params = get_params(_state["model_class"]())
    pool = _start_pool(args) if args.parallel == "processes" else None
    if pool is None:
        torch.set_num_threads(args.workers)
        _init_model()
    run_all = pool.imap_unordered if pool else map
    timings["workers_start"], clock = _lap(clock)

    timings["training"] = timings["aggregation"] = 0.0
    for current_round in range(args.rounds):
        chosen = sample_sites(args.num_sites, args.clients_per_round, args.seed, current_round)
        shares = [share.tolist() for share in np.array_split(chosen, args.workers if pool else 1) if len(share)]
        partials = list(run_all(_train_sites, [(share, global_params, current_round) for share in shares]))
        lap, clock = _lap(clock)
        timings["training"] += lap
        for partial in partials[1:]:
            partials[0].merge(partial)
        global_params = partials[0].result(partials[0].total_weight)
        lap, clock = _lap(clock)
        timings["aggregation"] += lap

    parts = np.array_split(np.arange(len(test_labels)), args.workers if pool else 1)
    test = pool_metrics(*run_all(_evaluate_part, [(global_params, part) for part in parts]))
    timings["evaluation"], clock = _lap(clock)
    if pool:
        pool.close()
        pool.join()
    timings["workers_stop"], clock = _lap(clock)
    if args.save_weights:
        np.savez(args.save_weights, **global_params)
    print(json.dumps({
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "parallel": args.parallel,
        "workers": args.workers,
        "timings": {name: round(seconds, 3) for name, seconds in timings.items()},
    }))


def _train_sites(task: tuple[list[int], Params, int]) -> CompensatedSum:
    """Local updates of some of the round's sites from the global weights, each as fedray's
    SiteWorker.train does it, folded into one partial sum weighted by steps (FedAvg's weight)."""
    sites, global_params, current_round = task
    args, model, partial = _state["args"], _state["model"], CompensatedSum()
    for site in sites:
        load_params(model, global_params)
        generator = torch.Generator().manual_seed(site_shuffle_seed(args.seed, current_round, site))
        _, steps = train_epochs(
            model, _state["images"], _state["labels"], _state["shards"][site - 1].train, epochs=args.local_epochs,
            batch_size=args.batch_size, lr=args.lr, momentum=args.momentum, generator=generator,
        )
        partial.add(get_params(model, copy=False), steps)  # views of the model, folded before it trains again
    return partial


def sample_sites(num_sites: int, count: int | None, seed: int, current_round: int) -> list[int]:
    """The site numbers (1-based) that train in `current_round`, drawn as fedray's
    workflows.scatter_and_gather.sample_sites draws them (that module needs Ray; a test checks they agree)."""
    if count is None or count >= num_sites:
        return list(range(1, num_sites + 1))
    picked = np.random.default_rng([seed, current_round]).choice(num_sites, size=count, replace=False)
    return [int(i) + 1 for i in sorted(picked)]


def _evaluate_part(task: tuple[Params, np.ndarray]) -> dict[str, float]:
    """Evaluation sums of the global model on part of the test set (the workers score parts in parallel)."""
    global_params, indices = task
    model = _state["model"]
    load_params(model, global_params)
    return evaluate(model, _state["test_images"], _state["test_labels"], indices, _state["args"].eval_batch_size)


def site_shuffle_seed(seed: int, current_round: int, site_number: int) -> int:
    """The seed fedray's site workers shuffle with, so both sides draw the same batches."""
    return int(np.random.SeedSequence([seed, current_round, site_number]).generate_state(1)[0])


def _start_pool(args: argparse.Namespace):
    # fork, not spawn: workers inherit torch already imported and the data already loaded.
    pool = multiprocessing.get_context("fork").Pool(args.workers, initializer=_init_worker)
    # Wait until every worker is up (and its model made), so that round 1 times training alone.
    pool.map(_init_done, range(args.workers), chunksize=1)
    return pool


def _init_worker() -> None:
    torch.set_num_threads(1)
    _init_model()


def _init_model() -> None:
    """The model a worker loads each task's weights into; its first optimizer pays torch.optim's one-off import."""
    _state["model"] = _state["model_class"]()
    torch.optim.SGD(_state["model"].parameters(), lr=0.01)


def _init_done(_: int) -> int:
    time.sleep(0.05)  # hold the task briefly so that each worker takes one
    return os.getpid()


def _chw(images: np.ndarray) -> np.ndarray:
    """NCHW with the plain strides fedray's sites get from the object store (a copy in C order: one channel's
    transposed view is "contiguous" to numpy with channel stride 1, which torch convolves as channels_last,
    to other bits: W3's floor was 1e-5 off fedray's weights after two rounds)."""
    return np.array(images.transpose(0, 3, 1, 2), order="C") if images.ndim == 4 else images


def _model_class(target: str):
    """`model._target_`'s class (a model built with its defaults, as fedray's conf/model/ builds them)."""
    import importlib

    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _lap(since: float) -> tuple[float, float]:
    now = time.perf_counter()
    return now - since, now


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="a folder holding cifar-10-batches-py/")
    parser.add_argument("--data-config", default=None, help="fedray's data keys as JSON, in place of --data-root")
    parser.add_argument("--partition", default="iid", help="fedray's partition.name (natural: by the data's ids)")
    parser.add_argument("--model", default="fedray.models.Net", help="the model class, as model._target_")
    parser.add_argument("--check-integrity", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--num-sites", type=int, default=8)
    parser.add_argument("--clients-per-round", type=int, default=None, help="sites sampled each round (default: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--eval-batch-size", type=int, default=1000)
    parser.add_argument("--parallel", choices=("processes", "threads"), default="processes")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes or torch threads")
    parser.add_argument("--save-weights", default=None, help="write the final global weights to this .npz")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
