"""Which Ray a job runs on: a running cluster, the caller's own Ray, or a private local one.

A sweep runs its jobs one after another in one process, and starting a local Ray costs
seconds (10-20 s on a small, busy machine). So a job may keep the Ray it started up for
the next job with the same `ray` settings. Any failure inside Ray takes the kept Ray
down, so whatever state the failed job left behind (actors, objects, a sick raylet) is
gone and the next job starts a fresh one.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional

import ray

try:  # Ray's private module; without it, Ray starts as it always did
    from ray._private import auto_init_hook
except ImportError:  # pragma: no cover - a Ray that moved it
    auto_init_hook = None

from fedray.config import ConfigError
from fedray.driver import reaper

# The settings of the Ray this module started and left up for the next job; None: none kept.
_kept: Optional[dict[str, Any]] = None
# The watchdog of the local Ray this module started (see fedray/driver/reaper.py).
_watchdog: Optional[subprocess.Popen] = None
# Ray starts in this thread while the driver goes on (imports torch, reads the data): 2-3 s of
# Ray's start-up are mostly other processes' work, on the cores the driver does not use.
_STARTER = ThreadPoolExecutor(1, thread_name_prefix="fedray-ray-start")
# glibc's malloc settings for the processes of a private local Ray (they inherit the driver's
# environment; glibc reads these at start). By default it hands freed memory back to the OS now and
# then and faults it in again: in Ray's workers a site's training took 155,000 page faults and 20%
# longer in such episodes (the same training in a plain process: none). Kept: up to 256 MiB free at
# the heap's top, blocks up to 32 MiB from the heap: the most glibc takes (half its 64 MiB heap on 64-bit;
# a larger value is ignored). Setting the threshold turns off glibc's own raising of it, so anything above
# it is a fresh mmap, faulted in page by page, at every allocation: at 16 MiB the 25.7 MB gradient of LEAF's
# FEMNIST CNN's first dense layer was, every step, and a W3 round took 20 s instead of 13.5 s.
# A user's own values win.
MALLOC_SETTINGS = {"MALLOC_TRIM_THRESHOLD_": str(256 << 20), "MALLOC_MMAP_THRESHOLD_": str(32 << 20)}
START_TIMEOUT = 300.0  # seconds for ray.init to return; it has bounds of its own, this one is the last
RAYLET_REGISTRATION_TIMEOUT = 30.0  # Ray's own raylet_start_wait_time_s, for `_lean_head`'s faster poll
# A start whose job failed before Ray was up: that Ray is stopped once up (`_stop_abandoned`).
_abandoned: Optional[Future] = None
_stopping = threading.Lock()


@dataclass
class Session:
    """What `ray_for` yields to its body."""

    wait_until_up: Callable[[], None]  # call before the first use of Ray; raises what its start raised
    # This Ray is shut down as the body ends: its actors need no killing first (which made
    # ray.shutdown wait 0.2 s more for the dying processes).
    stops_after: bool


@contextmanager
def ray_for(ray_cfg: Mapping[str, Any], keep: bool = False) -> Iterator[Session]:
    """Run the body on Ray: `ray.address` or $RAY_ADDRESS if set, else a private local Ray.

    Ray starts in a thread and the body runs at once: it calls `wait_until_up()` of the yielded
    `Session` before its first use of Ray. A Ray the caller already
    started (a test's, a notebook's) is used and left running. The Ray started here is shut
    down at the end, unless `keep` and the body succeeded: then it stays up for the next
    `ray_for` with the same settings (see `release`). A body that fails before Ray is up
    raises at once; that Ray stops as soon as it is up.
    """
    global _kept, _abandoned
    settings = {**ray_cfg, "address": ray_cfg["address"] or os.environ.get("RAY_ADDRESS")}
    _settle_abandoned()  # an earlier job's Ray, still starting when that job failed, is stopped first
    if _kept is not None and _kept != settings:
        release()
    ours = _kept is not None or not ray.is_initialized()
    starting = _STARTER.submit(_start, settings) if not ray.is_initialized() else None
    _kept = None

    def wait_until_up() -> None:
        if starting is not None:
            try:
                starting.result(timeout=START_TIMEOUT)
            except TimeoutError:
                raise RuntimeError(f"Ray did not start within {START_TIMEOUT:g} s") from None

    try:
        yield Session(wait_until_up, stops_after=ours and not keep)
    except BaseException:
        if ours and starting is not None and not starting.done():
            # The body's error (a bad model, missing data) is for the user now; Ray stops once up.
            _abandoned = starting
            starting.add_done_callback(_stop_abandoned)
        elif ours:
            _shutdown()
        raise
    if ours and keep:
        _kept = settings
    elif ours:
        _shutdown()


def release() -> None:
    """Shut down the Ray that `ray_for(..., keep=True)` left up, if any; and one still starting for a
    job that failed before it was up (so a process may leave at once after this)."""
    global _kept
    _settle_abandoned()
    if _kept is not None and ray.is_initialized():
        _shutdown()
    _kept = None


def _settle_abandoned() -> None:
    """Wait for an abandoned start and its stop (done already, or under way in the starter thread)."""
    abandoned = _abandoned
    if abandoned is not None:
        try:
            abandoned.result(timeout=START_TIMEOUT)
        except Exception:  # that job has reported its own error; here only the wait matters
            pass
        _stop_abandoned(abandoned)


def _stop_abandoned(start: Future) -> None:
    global _abandoned
    with _stopping:
        if _abandoned is start:
            _abandoned = None
            if start.exception() is None:
                _shutdown()


def _shutdown() -> None:
    global _watchdog
    _stop_autoscaler_monitor()
    if ray.is_initialized():
        ray.shutdown()
    reaper.stop(_watchdog)
    _watchdog = None


def _stop_autoscaler_monitor() -> None:
    """Ray's shutdown waits a full second for its autoscaler monitor to take SIGTERM, every time
    (measured 1.37 s -> 0.38 s without it); a private local Ray has nothing to autoscale. `_lean_head`
    keeps it from starting; this is for a Ray whose private names it could not patch (and it uses
    Ray's private node handle too, so it does nothing if that changes)."""
    node = getattr(ray._private.worker, "_global_node", None)
    processes = getattr(node, "all_processes", None) or {}
    for info in processes.get("monitor", []):
        try:
            info.process.kill()
        except Exception:  # already gone
            pass


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Ray retries an address where nothing listens for minutes, with a log line every few seconds."""
    if "://" in address or address == "auto":
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as err:
        source = "ray.address" if os.environ.get("RAY_ADDRESS") != address else "$RAY_ADDRESS"
        raise ConfigError(f"{source}={address}: no Ray cluster answers there ({err}); start one with "
                          "`ray start --head`, or leave ray.address unset for a private local Ray") from None


def _start(settings: Mapping[str, Any]) -> None:
    # Ray's auto-init: ray.get, ray.get_runtime_context ... called before Ray is up start a default Ray
    # (dashboard and all) in the calling thread. A model whose constructor asks for its actor's name does,
    # in the driver's model check, while this thread starts the job's Ray: two Rays, and this ray.init fails
    # ("called ray.init twice"). Holding Ray's own auto-init lock makes such a call wait for this Ray and
    # use it, as Ray's auto-init itself holds it around its ray.init.
    with getattr(auto_init_hook, "auto_init_lock", None) or nullcontext():
        _init(settings)


def _init(settings: Mapping[str, Any]) -> None:
    options: dict[str, Any] = dict(
        include_dashboard=settings["dashboard"],
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    if settings["address"]:
        # Under `ray job submit`, Ray sets RAY_ADDRESS for the driver: this joins that cluster.
        _check_reachable(settings["address"])
        try:
            ray.init(address=settings["address"], **options)
        except (ConnectionError, RuntimeError) as err:  # Ray's "failed to connect", its cause chained
            if _refused_token(err):
                raise ConfigError(
                    f"ray.address={settings['address']}: the cluster uses token authentication and refused this "
                    "driver's token; give the cluster's token in RAY_AUTH_TOKEN (or a file in RAY_AUTH_TOKEN_PATH, "
                    "or ~/.ray/auth_token), with RAY_AUTH_MODE=token") from None
            raise
    else:
        # "local": never join a stale cluster someone else left on this machine. Ray turns token
        # auth on for it by default and says so at every start; that notice is noise here.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        for name, value in MALLOC_SETTINGS.items():
            os.environ.setdefault(name, value)
        with _lean_head():
            ray.init(address="local", num_cpus=settings["num_cpus"], num_gpus=settings["num_gpus"], **options)
        global _watchdog
        _watchdog = reaper.start()  # a driver killed outright leaves no Ray process behind


def _refused_token(err: BaseException) -> bool:
    """Ray's "failed to connect to GCS" whose cause is its AuthenticationError (a wrong or missing token)."""
    authentication_error = getattr(ray.exceptions, "AuthenticationError", ())
    while err is not None:
        if authentication_error and isinstance(err, authentication_error):
            return True
        if "InvalidAuthToken" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextmanager
def _lean_head() -> Iterator[None]:
    """`ray.init` of a private local head, with less waiting (measured on 2 cores, idle: ray.init 2.6-3.6 s
    -> 1.9-2.0 s, and 0.4 CPU s less while the driver imports torch):
    - the dashboard head starts after the raylet, not before: ray.init waits ~1 s for it to come up,
      and the raylet waits as long for its own agents; the two waits now overlap;
    - no autoscaler monitor: a one-node Ray has nothing to scale (0.4 CPU s; and Ray's shutdown
      waits a second for it to take SIGTERM);
    - the raylet's registration with the GCS is asked for every 20 ms: Ray's own wait asks every
      second, so a raylet up after 1.05 s cost 2 s (given up after Ray's own 30 s, as Ray does).
    Ray's private API, patched around ray.init only: on a Ray where these names differ, nothing is
    patched and Ray starts as it always does."""
    try:
        from ray._private import services, state
        from ray._private.node import Node
    except ImportError:
        Node = services = state = None
    needed = [(Node, "start_api_server"), (Node, "start_monitor"), (Node, "start_ray_processes"),
              (services, "get_node"), (services, "_get_gcs_client_options"), (state, "GlobalState")]
    if not all(hasattr(target, name) for target, name in needed):
        yield
        return
    saved = Node.start_api_server, Node.start_monitor, Node.start_ray_processes, services.get_node
    start_api_server, start_ray_processes, ask_gcs = saved[0], saved[2], saved[3]
    deferred: dict[str, Any] = {}

    def defer_api_server(node: Any, **options: Any) -> None:
        deferred.update(options)

    def then_api_server(node: Any) -> None:
        start_ray_processes(node)
        if deferred:
            start_api_server(node, **deferred)

    def registered_node(gcs_address: str, node_id: str) -> dict:
        gcs = state.GlobalState()
        gcs._initialize_global_state(services._get_gcs_client_options(gcs_address))
        deadline = time.monotonic() + RAYLET_REGISTRATION_TIMEOUT
        while time.monotonic() < deadline and not any(node["NodeID"] == node_id for node in gcs.node_table()):
            time.sleep(0.02)
        return ask_gcs(gcs_address, node_id)

    Node.start_api_server, Node.start_monitor, Node.start_ray_processes = defer_api_server, lambda node: None, then_api_server
    services.get_node = registered_node
    try:
        yield
    finally:
        Node.start_api_server, Node.start_monitor, Node.start_ray_processes, services.get_node = saved
