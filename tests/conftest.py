"""Shared fixtures: one private local Ray for the session, and a tiny CIFAR-10 on disk."""

from __future__ import annotations

import os
from contextlib import contextmanager

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private test head on loopback needs no token

import pytest
import ray

from fedray import load_config, make_synthetic, write_cifar10

TINY_TRAIN = 900
TINY_TEST = 300


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> str:
    """A small, learnable CIFAR-10 in the real on-disk format (cifar-10-batches-py/)."""
    root = tmp_path_factory.mktemp("cifar10")
    # Easier than the default synthetic set: a few hundred samples per site must beat chance in 2 rounds.
    write_cifar10(root, make_synthetic(TINY_TRAIN, TINY_TEST, seed=1, signal=0.9, blotch=20.0))
    return str(root)


def start_session_ray() -> None:
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")


@contextmanager
def logical_gpus(count: int):
    """A private Ray with `count` logical GPUs in place of the session's (which has none), then the session's back."""
    ray.shutdown()
    ray.init(address="local", num_cpus=2, num_gpus=count, include_dashboard=False, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()
        start_session_ray()


@pytest.fixture(scope="session")
def ray_session():
    """One private Ray for every test that runs jobs; jobs started inside it leave it running."""
    start_session_ray()
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def job_config(tiny_cifar):
    """Build a validated job config on the tiny dataset, with test-sized defaults (a pure builder:
    session-wide, so module-wide fixtures can run a job once for several tests)."""

    def build(*overrides: str):
        base = [
            f"data.root={tiny_cifar}",
            "data.download=false",
            "data.check_integrity=false",
            "num_clients=3",
            "rounds=2",
            "lr=0.05",
            "local_epochs=2",
            "eval_batch_size=500",
        ]
        return load_config(base + list(overrides))

    return build


@ray.remote(num_cpus=0)
class DataHolder:
    """The controller's part for site actors started by hand: it hands them the dataset's refs."""

    def __init__(self, data: list) -> None:
        self.data = data

    def shared_data(self) -> list:
        return self.data


def start_site_worker(job: dict, data: list, namespace: str, **options):
    """A SiteWorker actor outside a job, and the holder it asks for `data` (kill both when done)."""
    from fedray.site.actor import SiteWorkerActor

    holder = DataHolder.options(name="controller", namespace=namespace).remote(data)
    worker = SiteWorkerActor.options(namespace=namespace, **options).remote(job, 1, None, namespace, "controller", None)
    return worker, holder
