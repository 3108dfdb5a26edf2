"""The driver: check the job, load data, start Ray, the sites and the controller, and wait.

`run_job` is the programmatic entry point; `python -m fedray.run` wraps it in Hydra.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import ray
from omegaconf import DictConfig, OmegaConf
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from fedray.config import (ConfigError, per_site_curves, runs_own_code, server_code_ids, site_names, validate,
                           with_new_keys)
from fedray.data.cifar10 import DataError, ensure_dataset, load_dataset
from fedray.data.partition import Shard, partition
from fedray.system.schedule import clock_runs
from fedray.data.synthetic import Dataset
from fedray.driver.cluster import ray_for
from fedray.driver.preflight import check_code, check_dp_sgd_budget
from fedray.driver.progress import Progress
from fedray.driver.resources import ResourceError, plan_sites
from fedray.fl_model import KEPT_MODELS, FLModel
from fedray.records import checkpoint
from fedray.records.atomic import DiskFull
from fedray.records.checkpoint import ResumeError
from fedray.records.partition_file import save_partition
from fedray.records.recorder import RunRecorder
from fedray.records.weights_only import NotPlainData
from fedray.server.controller import ControllerActor
from fedray.server.flare_components import FlareServerComponentsActor
from fedray.site.actor import SiteWorkerActor

log = logging.getLogger("fedray")

EVENT_POLL_SECONDS = 0.5
AGAIN_SECONDS = 0.2  # before asking a temporarily unavailable actor again
# The controller's calls return at once (drain: within EVENT_POLL_SECONDS); how long one that Ray's RPC keeps
# failing is asked again before the run ends in one line. Lost calls are asked again every AGAIN_SECONDS, so
# 10 s is fifty failures in a row: not a flaky network but a controller (or its node, the head) gone.
CONTROLLER_CALL_TIMEOUT = 60.0
CONTROLLER_PATIENCE = 10.0


class JobFailed(RuntimeError):
    """The job stopped; the message is one line, and the run dir keeps what finished rounds produced."""


class JobInterrupted(JobFailed):
    """Ctrl-C or SIGTERM: the actors are gone, Ray is shut down, finished rounds are on disk."""


# What users can cause (a bad key, a missing dataset, an impossible placement, a failed round):
# each says in one line what to change, so it needs no type name and no traceback.
USER_ERRORS = (ConfigError, DataError, ResourceError, ResumeError, NotPlainData, JobFailed)


# What a run adds to its saved config (summary.json's "config"), not config keys: set anew on resume.
PER_RUN_KEYS = ("job_id", "run_dir", "driver_host")


def run_job(
    cfg: DictConfig,
    run_dir: str | os.PathLike,
    on_event: Optional[Callable[[dict[str, Any]], None]] = None,
    keep_ray: bool = False,
) -> dict[str, Any]:
    """Run one fedray job and return its summary (also written to `run_dir/summary.json`).

    summary.json says `status: completed` or `failed` with a one-line `error`, and keeps what
    finished rounds produced. With `resume=RUN_DIR` in `cfg`, that stopped run continues in its
    own dir, with its own config. `keep_ray`: leave a Ray this job started up for the next job
    (a sweep's; see fedray/driver/cluster.py). `on_event` hears the controller's events (workflow,
    site_done, round, cross_site); by default a `Progress` logs a line per round and, on a
    terminal, shows a status line.
    """
    began = time.perf_counter()
    validate(cfg)
    saved = checkpoint.load(cfg.resume) if cfg.resume else None  # before Ray: a bad checkpoint fails fast
    if saved:
        # The stopped run's own config, but where it runs is this command's: its cluster may be gone.
        where = OmegaConf.to_container(cfg.ray)
        cfg = with_new_keys({key: value for key, value in saved["config"].items() if key not in PER_RUN_KEYS} | {"ray": where})
        run_dir = saved["run_dir"]
        if saved["warning"]:
            log.warning("%s", saved["warning"])
        log.info("resuming %s at round %d with its own config", run_dir, saved["next_round"] + 1)
    recorder = RunRecorder(Path(run_dir).resolve(), resumed=saved["summary"] if saved else None,
                           per_site=per_site_curves(cfg), simulated=clock_runs(cfg))
    timings: dict[str, float] = {}
    progress = Progress() if on_event is None else None
    failed = False
    try:
        job = OmegaConf.to_container(cfg, resolve=True)
        job["job_id"] = f"fedray-{uuid.uuid4().hex[:8]}"
        # Where the sites' FLARE workspaces go (fedray/flare/components.py): the run folder, on its machine.
        job["run_dir"], job["driver_host"] = str(recorder.run_dir), socket.gethostname()
        for key in ("script", "flare_app"):
            if job["site"].get(key):
                job["site"][key] = os.path.abspath(job["site"][key])
        job["python_path"] = [os.path.abspath(folder) for folder in job.get("python_path", ())]
        recorder.summary["config"] = job
        recorder.track(job)  # tracking=mlflow|wandb: a run with the config as its params
        if saved and saved["next_round"] >= job["workflows"]["scatter_and_gather"]["num_rounds"]:
            raise JobFailed(f"resume={recorder.run_dir}: that run already finished all its rounds")
        if saved:  # the folder as load read it (each file's checked version under its name), before Ray
            recorder.files = checkpoint.restore(saved)
        if not cfg.data.val_fraction:
            log.warning("data.val_fraction=0: no validation split, so no round is chosen as the best "
                        "(models/%s is not written)", "best_FL_global_model.pt")
        deadline = began + cfg.job_timeout if cfg.job_timeout else None
        _run(cfg, job, saved, recorder, on_event or progress, keep_ray, timings, deadline)
    except DiskFull as err:
        failed = True
        failure = _disk_full(err, recorder)
        recorder.summary.update(status="failed", error=str(failure))
        raise failure from None
    except KeyboardInterrupt:
        failed = True
        err = JobInterrupted(f"interrupted; {_kept(recorder)}")
        recorder.summary.update(status="failed", error=str(err))
        raise err from None
    except BaseException as err:
        failed = True
        recorder.summary.update(status="failed", error=str(err) if isinstance(err, USER_ERRORS) else _first_line(err))
        raise
    else:
        recorder.summary.update(status="completed", error=None)
    finally:
        if progress is not None:
            progress.close()
        try:
            recorder.finish(wall_seconds=round(time.perf_counter() - began, 3), timings=timings)
        except DiskFull as err:
            if not failed:  # else the job's own error is the one to tell (the disk is full anyway)
                raise _disk_full(err, recorder) from None
    return recorder.summary


def _disk_full(err: DiskFull, recorder: RunRecorder) -> JobFailed:
    """One line: the path, the free bytes, what is kept, and how to go on."""
    where, last = recorder.run_dir, recorder.files.round
    kept = (f"the checkpoint of round {last + 1} is whole; free space, then resume={where} continues it"
            if last is not None else "no round was finished")
    return JobFailed(f"{err}; {kept}")


def _run(
    cfg: DictConfig,
    job: dict[str, Any],
    saved: dict[str, Any] | None,
    recorder: RunRecorder,
    report: Callable[[dict[str, Any]], None],
    keep_ray: bool,
    timings: dict[str, float],
    deadline: float | None,
) -> None:
    clock = time.perf_counter()
    with ray_for(job["ray"], keep=keep_ray) as ray_session:
        # Ray starts in a thread meanwhile: these checks (torch's import, one forward pass) and the
        # data's reading overlap its start-up; no actor starts before the checks pass.
        check_code(cfg)  # imports and one forward pass here, not a traceback from every site actor
        ensure_dataset(cfg.data)  # a bad data path fails in a second, not after start-up
        with ThreadPoolExecutor(1, thread_name_prefix="fedray-data") as loader:
            loading = loader.submit(_load_and_partition, cfg, timings)
            ray_session.wait_until_up()
            timings["ray_start"], clock = _lap(clock)
            # After Ray started: its core worker installs a C-level SIGTERM handler that aborts the process.
            interrupt = _raise_on_sigterm()
            try:
                workflows_ended = _run_sites(cfg, job, saved, loading, recorder, report, timings, deadline,
                                             kill_actors=not ray_session.stops_after)
            finally:
                interrupt.restore()
    timings["shutdown"] = round(time.perf_counter() - workflows_ended, 3)


def _load_and_partition(cfg: DictConfig, timings: dict[str, float]) -> tuple[Dataset, list[Shard]]:
    started = time.perf_counter()
    dataset = load_dataset(cfg.data)
    # The samples' natural ids (writers, speaking roles) for partition=natural (fedray/data/partition.py).
    natural = {"ids": dataset.train_ids} if cfg.partition.name == "natural" else {}
    try:
        shards = partition(
            dataset.train_labels,
            cfg.num_clients,
            method=cfg.partition.name,
            alpha=cfg.partition.alpha,
            min_samples=cfg.partition.min_samples,
            val_fraction=cfg.data.val_fraction,
            seed=cfg.seed,
            shards_per_site=cfg.partition.shards_per_site,
            classes_per_site=cfg.partition.classes_per_site,
            class_assignment=cfg.partition.class_assignment,
            sizes=cfg.partition.sizes,
            **natural,
        )
    except ValueError as err:  # a split the data cannot give (it names the key): one line, no actor started
        raise ConfigError(str(err)) from None
    if cfg.privacy.mode == "dp_sgd" and cfg.privacy.target_epsilon is not None:
        smallest = min(range(len(shards)), key=lambda k: len(shards[k].train))
        check_dp_sgd_budget(cfg, len(shards[smallest].train), site_names(cfg.num_clients)[smallest])
    timings["data"] = round(time.perf_counter() - started, 3)
    return dataset, shards


def _run_sites(
    cfg: DictConfig,
    job: dict[str, Any],
    saved: dict[str, Any] | None,
    loading: Future,
    recorder: RunRecorder,
    report: Callable[[dict[str, Any]], None],
    timings: dict[str, float],
    deadline: float | None,
    kill_actors: bool = True,
) -> float:
    """Start the site actors and the controller on the connected Ray, follow the workflows, stop the actors
    (`kill_actors`: false when Ray itself stops next, which ends them).

    The site actors start first, while `loading` (the data) may still run: their seconds of imports
    overlap it; each then waits for the controller, which starts once the data is in the object store.
    """
    clock = time.perf_counter()
    actors: list[ray.actor.ActorHandle] = []
    server_components = None
    try:
        cluster = ray.cluster_resources()
        nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
        plan = plan_sites(job["site"], cfg.num_clients, cluster, nodes, share=cfg.ray.share)
        sites = site_names(cfg.num_clients)
        namespace = job["job_id"]
        # The controller (and a FLARE job's server code) on the driver's node, beside the objects the run
        # cannot lose (the dataset, the global model, site states, best local models: put by the driver or
        # the controller, stored on this node): a worker node's loss then takes sites only, which retry.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        one_per_site = plan.num_actors == len(sites)
        names = sites if one_per_site else [f"site-worker-{k}" for k in range(1, plan.num_actors + 1)]
        server_job, key_holder, readable = _he_contexts(job, namespace)
        actors.extend([key_holder] if key_holder else [])
        workers = [
            SiteWorkerActor.options(
                name=name, namespace=namespace, num_cpus=plan.num_cpus, num_gpus=plan.num_gpus,
                max_restarts=cfg.site.max_restarts, max_task_retries=0,  # fedray retries, on any free worker
            ).remote(job, plan.num_threads, name if one_per_site else None)
            for name in names
        ]
        actors.extend(workers)
        dataset, shards = loading.result()
        timings["data_wait"], clock = _lap(clock)
        # How the data is spread, before any round: datasets with a natural id carry it as train_ids.
        save_partition(recorder.run_dir, dataset.train_labels, shards, job["partition"], cfg.seed, cfg.data.val_fraction,
                       getattr(dataset, "train_ids", None))
        # One copy of the data in the object store, read zero-copy by every actor on a node;
        # other nodes fetch it from the driver's, so only the driver's node needs the files.
        shared = [
            ray.put(dict(zip(sites, shards))),
            ray.put(_chw(dataset.train_images)),
            ray.put(dataset.train_labels),
            ray.put(_chw(dataset.test_images)),
            ray.put(dataset.test_labels),
        ]
        # The controller holds the data's refs and hands them to each site actor as it starts or
        # restarts, and is the sites' mailbox for their streamed points (fedray/site/metric_stream.py); it sends
        # no task before they are ready.
        val_index = np.concatenate([shard.val for shard in shards])
        if server_code_ids(job["flare"]):
            # A FLARE server app's own components act on START_RUN (a data splitter) before any site trains.
            server_components = FlareServerComponentsActor.options(namespace=namespace, scheduling_strategy=here).remote(job)
            actors.append(server_components)
            _await_workers({"the FLARE server components": server_components}, cfg.site.start_timeout)
        controller = ControllerActor.options(name="controller", namespace=namespace, scheduling_strategy=here).remote(
            server_job, sites, shared, val_index, len(dataset.test_labels), _resume_state(saved),
            server_components if job["flare"]["model_locator"] else None,
        )
        actors.append(controller)
        answers = _await_workers(dict(zip(names, workers)), cfg.site.start_timeout)
        timings["site_start"], clock = _lap(clock)
        log.info(
            "%d sites on %d %s actors (%g CPU, %g GPU, %d threads each); run dir %s",
            len(sites), plan.num_actors, "GPU" if plan.num_gpus else "CPU", plan.num_cpus, plan.num_gpus,
            plan.num_threads, recorder.run_dir,
        )
        _ask_controller(recorder, controller.start, workers, one_per_site, [answers[name]["process"] for name in names])
        _follow(controller, recorder, report, deadline, readable)
        timings["workflows"], clock = _lap(clock)
        recorder.start_drawing()
        return clock
    finally:
        _end_run(server_components)
        _stop(actors, wait_for_scripts=runs_own_code(job["site"]), kill=kill_actors)


def _end_run(server_components: Optional[ray.actor.ActorHandle], timeout: float = 60.0) -> None:
    """END_RUN to a FLARE server app's components; the job's result stands whatever they do."""
    if server_components is None:
        return
    try:
        ray.get(server_components.end_run.remote(), timeout=timeout)
    except Exception as err:  # a failing END_RUN handler, or the actor gone with a failed start
        log.warning("FLARE server components at END_RUN: %s", _first_line(err))



def _await_workers(actors: dict[str, ray.actor.ActorHandle], timeout: float) -> dict[str, Any]:
    """Every actor answers `ready()` within `timeout`: their answers. "Temporarily unavailable" (a failed
    RPC, a restart under way) is asked again, not taken for a failed start."""
    deadline = time.monotonic() + timeout
    ready = {actor.ready.remote(): name for name, actor in actors.items()}
    answers: dict[str, Any] = {}
    while ready:
        done, _ = ray.wait(list(ready), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            waiting = ", ".join(sorted(ready.values()))
            raise JobFailed(
                f"site actors not up within site.start_timeout={timeout:g} s ({waiting}); "
                "the cluster may lack the CPUs/GPUs they ask for (see site.num_cpus, site.num_gpus)"
            )
        name = ready.pop(done[0])
        try:
            answers[name] = ray.get(done[0], timeout=60)
        except ActorUnavailableError:
            time.sleep(AGAIN_SECONDS)
            ready[actors[name].ready.remote()] = name
        except (RayTaskError, RayActorError) as err:
            raise JobFailed(f"{name} failed to start: {_creation_failure(err)}") from None
    return answers


def _creation_failure(err: BaseException) -> str:
    """What a site actor's constructor raised (a FLARE executor that fails at import or START_RUN), not
    Ray's wrapper around it: the last line of the traceback Ray keeps."""
    lines = [line.strip() for line in str(getattr(err, "error_msg", "") or "").splitlines() if line.strip()]
    if getattr(err, "_actor_init_failed", False) and lines:  # Ray's flag for an error raised in __init__
        return lines[-1]
    return _first_line(err)


def _he_contexts(job: dict[str, Any], namespace: str) -> tuple[dict[str, Any], Optional[ray.actor.ActorHandle],
                                                              Callable[[Any], Any]]:
    """secure_aggregation=he: the job's CKKS contexts, made once (FLARE's provisioning makes them once per project):
    the controller's job with the context without the secret key; the key holder the sites ask for theirs, with it
    (an actor by name: 160 kB in the sites' constructor arguments would sit in the object store, which Ray warns of
    for restartable actors); and how the driver reads the encrypted global model for the run folder (it stands for
    the study's owner, who holds a site's key). Else the job, no holder, and the identity."""
    secure = job["secure_aggregation"]
    if secure["mode"] != "he":
        return job, None, lambda params: params
    from fedray.secure import he

    site_context, server_context = he.make_contexts(secure["poly_modulus_degree"], secure["coeff_mod_bit_sizes"],
                                                    secure["scale_bits"])
    holder = _HEKeys.options(name=he.KEY_HOLDER, namespace=namespace).remote(site_context)
    server_job = {**job, "secure_aggregation": {**secure, "context": server_context}}
    return server_job, holder, lambda params: (he.decrypt(params, site_context) if isinstance(params, he.Encrypted)
                                               else params)


@ray.remote(num_cpus=0)
class _HEKeys:
    """The sites' CKKS context, with the secret key: FLARE's client_context.tenseal in each site's startup kit."""

    def __init__(self, context: bytes) -> None:
        self.context = context

    def site_context(self) -> bytes:
        return self.context


def _follow(
    controller: ray.actor.ActorHandle,
    recorder: RunRecorder,
    report: Callable[[dict[str, Any]], None],
    deadline: float | None,
    readable: Callable[[Any], Any] = lambda params: params,
) -> None:
    """Follow the controller's workflows (started), writing the sites' streamed points and each finished
    round, and relaying progress, as they come, until its "end" event; past `deadline` (job_timeout), stop."""
    events_taken = points_taken = 0
    while True:
        if deadline is not None and time.perf_counter() > deadline:
            rounds = len(recorder.summary["rounds"])
            raise JobFailed(f"job_timeout={recorder.summary['config']['job_timeout']:g} s passed; "
                            f"{rounds} finished round(s) kept in {recorder.run_dir}")
        # Points with the events: sites flush their points before they answer, so a round's
        # training curve is on disk by the time its round line appears.
        events, points = _ask_controller(recorder, controller.drain, events_taken, points_taken, EVENT_POLL_SECONDS)
        recorder.record_points(points)
        points_taken += len(points)
        for event in events:
            if event["type"] == "round":
                site_states = {site: ray.get(ref, timeout=60) for site, ref in event.pop("site_states").items()}
                checkpoint.save_algorithm_states(recorder.files, event["round"],
                                                 _kept_models(ray.get(event.pop("algorithm_state"), timeout=60)),
                                                 site_states)
                recorder.record_round(event, readable(ray.get(event.pop("params"), timeout=60)))
                for site, (accuracy, result) in event.pop("improved_local_models").items():
                    checkpoint.save_local_model(recorder.files, event["round"], site, accuracy,
                                                ray.get(result, timeout=60).params)
                checkpoint.save_state(recorder.files, event, recorder.summary["best_round"])  # the round's commit
            elif event["type"] == "cross_site":
                recorder.record_cross_site(event)
            elif event["type"] == "privacy_budget":
                recorder.record_budget_stop(event["message"])
            elif event["type"] == "end":
                if event["error"]:
                    raise JobFailed(event["error"])
                return
            events_taken += 1  # taken once written: a round is never lost between the controller and the files
            report(event)


def _kept_models(state: Any) -> Any:
    """The server state with its KEPT_MODELS, which the controller sends by reference (FedBuff's start versions
    in flight, each put once when made), read from the object store (zero-copy) for the checkpoint."""
    if not isinstance(state, dict) or not isinstance(state.get(KEPT_MODELS), dict):
        return state
    names, refs = zip(*state[KEPT_MODELS].items()) if state[KEPT_MODELS] else ((), ())
    return {**state, KEPT_MODELS: dict(zip(names, ray.get(list(refs), timeout=60)))}


def _ask_controller(recorder: RunRecorder, method: Any, *args: Any) -> Any:
    """The controller's answer to one call, asked again while Ray says it is "temporarily unavailable" (a
    failed RPC; `start` and `drain` are safe to ask twice), for at most CONTROLLER_PATIENCE seconds; a
    controller that is gone is one line."""
    patience = time.monotonic() + CONTROLLER_PATIENCE
    while True:
        try:
            return ray.get(method.remote(*args), timeout=CONTROLLER_CALL_TIMEOUT)
        except ActorUnavailableError as err:
            if time.monotonic() > patience:
                raise JobFailed(_controller_lost(err, recorder)) from None
            time.sleep(AGAIN_SECONDS)
        except RayActorError as err:
            raise JobFailed(_controller_lost(err, recorder)) from None


def _controller_lost(err: RayActorError, recorder: RunRecorder) -> str:
    """One line for a controller that is gone (its process or its node), with what is kept."""
    return f"the controller is gone ({_first_line(err)}); {_kept(recorder)}"


def _kept(recorder: RunRecorder) -> str:
    """What a stopped run keeps, and how to go on."""
    rounds, where = len(recorder.summary["rounds"]), recorder.run_dir
    return f"{rounds} finished round(s) kept in {where}" + (f", resume={where} continues it" if rounds else "")


def _stop(actors: list[ray.actor.ActorHandle], wait_for_scripts: bool, kill: bool = True, timeout: float = 30.0) -> None:
    """Kill every actor (`kill`); first, let scripts leave their loop and run the code after it."""
    if wait_for_scripts:
        stopping = [actor.shutdown.remote() for actor in actors if hasattr(actor, "shutdown")]
        ray.wait(stopping, num_returns=len(stopping), timeout=timeout)
    if kill:
        for actor in actors:
            ray.kill(actor)


def _resume_state(saved: dict[str, Any] | None) -> dict[str, Any] | None:
    """The checkpoint's models, put into the object store for the controller."""
    if not saved:
        return None
    return {
        "next_round": saved["next_round"],
        "global": ray.put(saved["global"]),
        "best_global": ray.put(saved["best_global"]),
        "best_val_accuracy": saved["best_val_accuracy"],
        "best_local": {site: (accuracy, ray.put(FLModel(params=params)))
                       for site, (accuracy, params) in saved["best_local"].items()},
        "algorithm_state": None if saved["algorithm_state"] is None else ray.put(saved["algorithm_state"]),
        "site_states": {site: ray.put(state) for site, state in saved["site_states"].items()},
        # The simulated clock after the last finished round (0: a run without one, or of before it).
        "sim_time": saved["summary"]["rounds"][-1].get("sim_time", 0.0) if saved["summary"]["rounds"] else 0.0,
    }


class _raise_on_sigterm:
    """SIGTERM stops the job like Ctrl-C does: through the same clean-up (Ray's own handler just exits)."""

    def __init__(self) -> None:
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._interrupt)

    @staticmethod
    def _interrupt(signum, frame) -> None:
        raise KeyboardInterrupt

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _chw(images: np.ndarray) -> np.ndarray:
    """HWC images (as CIFAR-10 stores them) to NCHW (as torch convolves them), once, in the driver; token
    windows and feature vectors as they are. Always a copy in C order: with one channel the transposed view is
    already "contiguous" to numpy, its channel stride 1, and torch convolves such a batch as channels_last, with
    other float rounding (the object store gives the sites the plain strides back in any case)."""
    return np.array(images.transpose(0, 3, 1, 2), order="C") if images.ndim == 4 else images


def _first_line(err: BaseException) -> str:
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"


def _lap(since: float) -> tuple[float, float]:
    now = time.perf_counter()
    return round(now - since, 3), now
