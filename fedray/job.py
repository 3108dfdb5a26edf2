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

from fedray.cluster import ray_for
from fedray.config import ConfigError, site_names, validate
from fedray.controller import ControllerActor
from fedray.datasets import DataError, load_dataset
from fedray.outputs import RunRecorder
from fedray.partition import Shard, partition
from fedray.resources import ResourceError, plan_sites
from fedray.sites import SiteWorkerActor
from fedray.synthetic import Dataset

log = logging.getLogger("fedray")

EVENT_POLL_SECONDS = 0.5


class JobFailed(RuntimeError):
    """The job stopped; the message is one line, and the run dir keeps what finished rounds produced."""


# What users can cause (a bad key, a missing dataset, an impossible placement, a failed round):
# each says in one line what to change, so it needs no type name and no traceback.
USER_ERRORS = (ConfigError, DataError, ResourceError, JobFailed)


def run_job(
    cfg: DictConfig,
    run_dir: str | os.PathLike,
    on_event: Optional[Callable[[dict[str, Any]], None]] = None,
    keep_ray: bool = False,
) -> dict[str, Any]:
    """Run one fedray job and return its summary (also written to `run_dir/summary.json`).

    summary.json says `status: completed` or `failed` with a one-line `error`, and keeps what
    finished rounds produced. `keep_ray`: leave a Ray this job started up for the next job
    (a sweep's; see fedray/cluster.py).
    """
    began = time.perf_counter()
    recorder = RunRecorder(Path(run_dir).resolve())
    timings: dict[str, float] = {}
    try:
        validate(cfg)
        recorder.summary["config"] = OmegaConf.to_container(cfg, resolve=True)
        _run(cfg, recorder, on_event or log_event, keep_ray, timings)
    except BaseException as err:
        recorder.summary.update(status="failed", error=str(err) if isinstance(err, USER_ERRORS) else _first_line(err))
        raise
    else:
        recorder.summary["status"] = "completed"
    finally:
        recorder.write(wall_seconds=round(time.perf_counter() - began, 3), timings=timings)
    return recorder.summary


def _run(
    cfg: DictConfig,
    recorder: RunRecorder,
    report: Callable[[dict[str, Any]], None],
    keep_ray: bool,
    timings: dict[str, float],
) -> None:
    job = recorder.summary["config"]
    clock = time.perf_counter()
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

    with ray_for(job["ray"], keep=keep_ray):
        timings["ray_start"], clock = _lap(clock)
        workflows_ended = _run_sites(cfg, job, dataset, shards, recorder, report, timings)
    timings["shutdown"] = round(time.perf_counter() - workflows_ended, 3)


def _run_sites(
    cfg: DictConfig,
    job: dict[str, Any],
    dataset: Dataset,
    shards: list[Shard],
    recorder: RunRecorder,
    report: Callable[[dict[str, Any]], None],
    timings: dict[str, float],
) -> float:
    """Start the site actors and the controller on the connected Ray, follow the workflows, kill the actors."""
    clock = time.perf_counter()
    actors: list[ray.actor.ActorHandle] = []
    try:
        cluster = ray.cluster_resources()
        nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
        plan = plan_sites(job["site"], cfg.num_clients, cluster, nodes)
        sites = site_names(cfg.num_clients)
        namespace = f"fedray-{uuid.uuid4().hex[:8]}"
        # One copy of the data in the object store, read zero-copy by every actor on a node;
        # other nodes fetch it from the driver's, so only the driver's node needs the files.
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
            ).remote(job, *shared, plan.num_threads)
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
            plan.num_threads, recorder.run_dir,
        )
        _follow(controller, recorder, report)
        timings["workflows"], clock = _lap(clock)
        return clock
    finally:
        for actor in actors:
            ray.kill(actor)


def log_event(event: dict[str, Any]) -> None:
    """The default progress report: a log line per round."""
    if event["type"] != "round":
        return
    metrics = event["global"]
    log.info(
        "round %d/%d  val_acc %.4f  test_acc %.4f  test_loss %.4f  sites %d/%d  %.1f s",
        event["round"] + 1, event["num_rounds"], metrics["val_accuracy"], metrics["test_accuracy"],
        metrics["test_loss"], len(event["sites"]), event["num_sites"], event["seconds"],
    )


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


def _follow(controller: ray.actor.ActorHandle, recorder: RunRecorder, report: Callable[[dict[str, Any]], None]) -> None:
    """Wait for the controller, writing each finished round and relaying progress as events come."""
    run_ref = controller.run.remote()
    while True:
        finished, _ = ray.wait([run_ref], timeout=EVENT_POLL_SECONDS)
        for event in ray.get(controller.drain_events.remote(), timeout=60):
            if event["type"] == "round":
                recorder.record_round(event, ray.get(event.pop("params"), timeout=60))
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
