"""The driver: check the job, load data, start Ray, the sites and the controller, and wait.

`run_job` is the programmatic entry point; `python -m fedray.run` wraps it in Hydra.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import ray
from omegaconf import DictConfig, OmegaConf
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from fedray.config import site_names, validate
from fedray.controller import ControllerActor
from fedray.datasets import load_dataset
from fedray.outputs import RunRecorder
from fedray.partition import partition
from fedray.progress import Progress
from fedray.resources import plan_sites
from fedray.sites import SiteWorkerActor
from fedray.tracking import MetricStreamActor

log = logging.getLogger("fedray")

EVENT_POLL_SECONDS = 0.5


class JobFailed(RuntimeError):
    """The job stopped; the message is one line, and the run dir keeps what finished rounds produced."""


def run_job(
    cfg: DictConfig,
    run_dir: str | os.PathLike,
    on_event: Optional[Callable[[dict[str, Any]], None]] = None,
) -> dict[str, Any]:
    """Run one fedray job and return its summary (also written to `run_dir/summary.json`).

    `on_event` hears the controller's events (workflow, site_done, round, cross_site);
    by default a `Progress` logs a line per round and, on a terminal, shows a status line.
    """
    validate(cfg)
    job = OmegaConf.to_container(cfg, resolve=True)
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress() if on_event is None else None
    report = on_event or progress
    timings: dict[str, float] = {}
    began = clock = time.perf_counter()

    dataset = load_dataset(cfg.data)  # before Ray: a bad data path fails in a second, not after start-up
    shards = partition(
        dataset.train_labels,
        cfg.num_clients,
        method=cfg.partition.name,
        alpha=cfg.partition.alpha,
        min_samples=cfg.partition.min_samples,
        val_fraction=cfg.data.val_fraction,
        seed=cfg.seed,
    )
    timings["data"], clock = _lap(clock)

    started_ray = _connect(job["ray"])
    timings["ray_start"], clock = _lap(clock)
    actors: list[ray.actor.ActorHandle] = []
    recorder = RunRecorder(run_dir, job)
    try:
        cluster = ray.cluster_resources()
        nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
        plan = plan_sites(job["site"], cfg.num_clients, cluster, nodes)
        sites = site_names(cfg.num_clients)
        namespace = f"fedray-{uuid.uuid4().hex[:8]}"
        # The sites' channel to the driver for points streamed while they train (see fedray/tracking.py).
        metric_stream = MetricStreamActor.options(namespace=namespace).remote()
        actors.append(metric_stream)
        # One copy of the data in the object store, read zero-copy by every actor on a node.
        shared = [
            ray.put(dict(zip(sites, shards))),
            ray.put(_chw(dataset.train_images)),
            ray.put(dataset.train_labels),
            ray.put(_chw(dataset.test_images)),
            ray.put(dataset.test_labels),
        ]
        one_per_site = plan.num_actors == len(sites)
        names = sites if one_per_site else [f"site-worker-{k}" for k in range(1, plan.num_actors + 1)]
        workers = [
            SiteWorkerActor.options(
                name=name, namespace=namespace, num_cpus=plan.num_cpus, num_gpus=plan.num_gpus
            ).remote(job, *shared, plan.num_threads, metric_stream)
            for name in names
        ]
        actors.extend(workers)
        _await_workers({worker.ready.remote(): name for worker, name in zip(workers, names)}, cfg.site.start_timeout)
        timings["site_start"], clock = _lap(clock)

        val_index = np.concatenate([shard.val for shard in shards])
        controller = ControllerActor.options(namespace=namespace).remote(
            job, sites, workers, one_per_site, val_index, len(dataset.test_labels)
        )
        actors.append(controller)
        log.info(
            "%d sites on %d %s actors (%g CPU, %g GPU, %d threads each); run dir %s",
            len(sites), plan.num_actors, "GPU" if plan.num_gpus else "CPU", plan.num_cpus, plan.num_gpus,
            plan.num_threads, run_dir,
        )
        _follow(controller, metric_stream, recorder, report)
        timings["workflows"], clock = _lap(clock)
    finally:
        if progress is not None:
            progress.close()
        for actor in actors:
            ray.kill(actor)
        if started_ray:
            ray.shutdown()
        timings["shutdown"], clock = _lap(clock)
        recorder.finish(wall_seconds=round(time.perf_counter() - began, 3), timings=timings)
    return recorder.summary


def _connect(ray_cfg: dict[str, Any]) -> bool:
    """Join `ray.address` or $RAY_ADDRESS, else start a private local Ray; True if we started it."""
    if ray.is_initialized():
        return False
    address = ray_cfg["address"] or os.environ.get("RAY_ADDRESS")
    options: dict[str, Any] = dict(
        include_dashboard=ray_cfg["dashboard"],
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    if address:
        ray.init(address=address, **options)
    else:
        # "local": never join a stale cluster someone else left on this machine. Ray turns token
        # auth on for it by default and says so at every start; that notice is noise here.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(address="local", num_cpus=ray_cfg["num_cpus"], num_gpus=ray_cfg["num_gpus"], **options)
    return True


def _await_workers(ready: dict[ray.ObjectRef, str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(ready)
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            waiting = ", ".join(sorted(ready[ref] for ref in pending))
            raise JobFailed(
                f"site actors not up within site.start_timeout={timeout:g} s ({waiting}); "
                "the cluster may lack the CPUs/GPUs they ask for (see site.num_cpus, site.num_gpus)"
            )
        try:
            ray.get(done[0], timeout=60)
        except (RayTaskError, RayActorError) as err:
            raise JobFailed(f"{ready[done[0]]} failed to start: {_first_line(err)}") from None


def _follow(
    controller: ray.actor.ActorHandle,
    metric_stream: ray.actor.ActorHandle,
    recorder: RunRecorder,
    report: Callable[[dict[str, Any]], None],
) -> None:
    """Wait for the controller, writing the sites' streamed points and each finished round, and
    relaying progress, as they come."""
    run_ref = controller.run.remote()
    while True:
        finished, _ = ray.wait([run_ref], timeout=EVENT_POLL_SECONDS)
        events = ray.get(controller.drain_events.remote(), timeout=60)
        # Drained after the events: sites flush their points before they answer, so a round's
        # training curve is on disk by the time its round line appears.
        recorder.record_points(ray.get(metric_stream.drain.remote(), timeout=60))
        for event in events:
            if event["type"] == "round":
                recorder.record_round(event, ray.get(event.pop("params"), timeout=60))
            elif event["type"] == "cross_site":
                recorder.record_cross_site(event)
            report(event)
        if finished:
            break
    try:
        ray.get(run_ref, timeout=60)
    except (RayTaskError, RayActorError) as err:
        raise JobFailed(_first_line(err)) from None


def _chw(images: np.ndarray) -> np.ndarray:
    """HWC (as CIFAR-10 stores them) to NCHW (as torch convolves them), once, in the driver."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def _first_line(err: BaseException) -> str:
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"


def _lap(since: float) -> tuple[float, float]:
    now = time.perf_counter()
    return round(now - since, 3), now
