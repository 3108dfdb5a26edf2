"""Send a task for each site to a free worker and yield the answers as they arrive.

Every workflow uses this one loop, with FLARE's stopping rules: a task that
passes `timeout` (counted from when a worker started it) is given up, and once
`min_results` answers are in, the loop waits at most `wait_after_min` seconds
more. A worker runs one task at a time, so the pool's size bounds how many
sites train at once, and a worker still busy with a task given up on gets no
new one until it finishes. Every `ray.wait` here has a bound.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import ray
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

POLL_SECONDS = 1.0

Call = Callable[[ActorHandle], ray.ObjectRef]


@dataclass
class Outcome:
    site: str
    value: Any = None
    failure: Optional[str] = None  # None: success; else "error", "timeout", "died", "abandoned" or "no_worker"
    message: str = ""
    seconds: float = 0.0
    ref: Optional[ray.ObjectRef] = None  # the result in the object store, to pass on without a copy

    @property
    def ok(self) -> bool:
        return self.failure is None


class WorkerPool:
    """The site actors, which of them each site may use, and which cannot take work now.

    A worker is *stuck* while it runs a task that was given up on (it gets no new
    work until that task ends), *restarted* when a task of its timed out (Ray
    starts it afresh with the same data), and *retired* once it died more often
    than Ray may restart it.
    """

    def __init__(self, workers: Sequence[ActorHandle], home: Mapping[str, ActorHandle] | None = None,
                 max_restarts: int = 0) -> None:
        self.workers = list(workers)
        self.home = dict(home or {})  # site -> its own actor, when each site has one
        self.max_restarts = max_restarts
        self.stuck: dict[ActorHandle, ray.ObjectRef] = {}
        self.deaths: dict[ActorHandle, int] = {}

    def candidates(self, site: str) -> list[ActorHandle]:
        return [self.home[site]] if site in self.home else self.workers

    def free(self) -> list[ActorHandle]:
        """Workers that can take a task now (those that finished a given-up task are free again)."""
        if self.stuck:
            refs = list(self.stuck.values())
            finished, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for worker, ref in list(self.stuck.items()):
                if ref in finished:
                    del self.stuck[worker]
                    if _actor_failed(ref):  # the abandoned task went down with its actor: Ray restarts it
                        self.died(worker)
        return [w for w in self.workers if w not in self.stuck and not self.retired(w)]

    def retired(self, worker: ActorHandle) -> bool:
        return self.deaths.get(worker, 0) > self.max_restarts

    def give_up(self, worker: ActorHandle, ref: ray.ObjectRef, restart: bool = False) -> None:
        """Stop waiting for `ref`; with `restart`, end it by restarting its actor (a hung task)."""
        ray.cancel(ref)  # drops it if still queued; a running actor task runs on
        if restart and self.max_restarts > 0:
            ray.kill(worker, no_restart=self.deaths.get(worker, 0) + 1 > self.max_restarts)
            self.died(worker)
        else:
            self.stuck[worker] = ref

    def died(self, worker: ActorHandle) -> None:
        """Ray restarts a dead actor; until it answers again, it is busy (calls would fail at once)."""
        self.deaths[worker] = self.deaths.get(worker, 0) + 1
        if not self.retired(worker):
            self.stuck[worker] = worker.ready.options(max_task_retries=-1).remote()


def gather(
    calls: Sequence[tuple[str, Call]],
    pool: WorkerPool,
    *,
    min_results: Optional[int] = None,
    wait_after_min: float = 0.0,
    timeout: float = 0.0,
) -> Iterator[Outcome]:
    """Run `calls` (site, call(worker) -> ObjectRef), each on a free worker among `pool.candidates(site)`.

    Yields one Outcome per site. Sites still running when the loop stops early
    are reported as "abandoned"; sites whose workers stayed busy (with tasks
    given up on earlier) longer than `timeout` are reported as "timeout".
    """
    queue = deque(calls)
    in_flight: dict[ray.ObjectRef, tuple[str, ActorHandle, float]] = {}
    successes = 0
    began = time.monotonic()
    enough_at: Optional[float] = None

    try:
        while queue or in_flight:
            now = time.monotonic()
            if enough_at is not None and now >= enough_at + wait_after_min:
                break
            busy = {worker for _, worker, _ in in_flight.values()}
            _dispatch(queue, pool, set(pool.free()) - busy, in_flight)

            if not in_flight:
                # Every worker the queued sites may use is busy with a task given up on, or retired.
                retired = [site for site, _ in queue if all(pool.retired(w) for w in pool.candidates(site))]
                for site in retired:
                    yield Outcome(site, failure="died", message="its actor died more often than site.max_restarts")
                queue = deque(call for call in queue if call[0] not in retired)
                if queue and timeout > 0 and now - began >= timeout:
                    for site, _ in queue:
                        yield Outcome(site, failure="timeout", message=f"no free worker in {timeout:g} s")
                    return
                if not queue or not pool.stuck:
                    continue
                ray.wait(list(pool.stuck.values()), num_returns=1, timeout=POLL_SECONDS)
                continue

            deadlines = [started + timeout for _, _, started in in_flight.values()] if timeout > 0 else []
            if enough_at is not None:
                deadlines.append(enough_at + wait_after_min)
            wait = min([POLL_SECONDS, *(d - now for d in deadlines)])
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=max(wait, 0.0))

            for ref in ready:
                site, worker, started = in_flight.pop(ref)
                outcome = _collect(ref, site, started)
                if outcome.failure == "died":
                    pool.died(worker)
                if outcome.ok:
                    successes += 1
                    if min_results is not None and successes >= min_results and enough_at is None:
                        enough_at = time.monotonic()
                yield outcome

            if timeout > 0:
                now = time.monotonic()
                for ref, (site, worker, started) in list(in_flight.items()):
                    if now - started >= timeout:
                        del in_flight[ref]
                        pool.give_up(worker, ref, restart=True)
                        yield Outcome(site, failure="timeout", message=f"no answer in {timeout:g} s", seconds=now - started)

        now = time.monotonic()
        for ref, (site, worker, started) in list(in_flight.items()):
            del in_flight[ref]
            pool.give_up(worker, ref)
            yield Outcome(site, failure="abandoned", message="still running when the round closed", seconds=now - started)
    finally:
        # A caller that stops reading early (first answer wins) leaves tasks behind.
        for ref, (_, worker, _) in in_flight.items():
            pool.give_up(worker, ref)


def _dispatch(queue: deque, pool: WorkerPool, idle: set, in_flight: dict) -> None:
    """Start queued sites, in order, on idle workers they may use."""
    for _ in range(len(queue)):
        if not idle:
            return
        site, call = queue.popleft()
        worker = next((w for w in pool.candidates(site) if w in idle), None)
        if worker is None:
            queue.append((site, call))  # its workers are busy; it waits for them
            continue
        idle.discard(worker)
        in_flight[call(worker)] = (site, worker, time.monotonic())


def _actor_failed(ref: ray.ObjectRef) -> bool:
    try:
        ray.get(ref, timeout=0)
    except RayActorError:
        return True
    except Exception:  # the task's own error, or a cancellation: the actor is fine
        return False
    return False


def _collect(ref: ray.ObjectRef, site: str, started: float) -> Outcome:
    try:
        value = ray.get(ref, timeout=60)  # ready already; the bound only guards a lost object
    except RayTaskError as err:
        cause = err.cause if getattr(err, "cause", None) is not None else err
        message = f"{type(cause).__name__}: {cause}".splitlines()[0]
        return Outcome(site, failure="error", message=message, seconds=time.monotonic() - started)
    except RayActorError as err:
        return Outcome(site, failure="died", message=str(err).splitlines()[0], seconds=time.monotonic() - started)
    except GetTimeoutError:
        return Outcome(site, failure="timeout", message="result could not be fetched", seconds=time.monotonic() - started)
    return Outcome(site, value=value, seconds=time.monotonic() - started, ref=ref)
