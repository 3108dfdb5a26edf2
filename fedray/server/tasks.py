"""Send a task for each site to a free worker and yield the answers as they arrive.

Every workflow uses this one loop, with FLARE's stopping rules: a task that
passes `timeout` (counted from when a worker started it) is given up, and once
`min_results` answers are in, the loop waits at most `wait_after_min` seconds
more. A worker runs one task at a time, so the pool's size bounds how many
sites train at once.

Two kinds of failure are told apart. A site's own fault (its code raised, it
hung past `timeout`) is its outcome. A dead worker process (the OOM killer, a
lost node: Ray's actor-died errors) is the infrastructure's: the task runs
again, on any worker the site may use, up to `max_retries` times. Tasks are
seeded by what they compute, not by where, so a retried task gives the same bits.

A task given up on is cancelled: built-in site tasks check Ray's cancellation
flag between batches and return at once; a worker whose task has not ended
`stop_timeout` seconds later is restarted. Every `ray.wait` here has a bound.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import ray
from ray.actor import ActorHandle
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError, TaskCancelledError

POLL_SECONDS = 1.0
RESTART_POLL_SECONDS = 0.25
MAX_LOST_CALLS = 10  # a task's calls Ray's RPC may lose before it counts as its worker's death

Call = Callable[[ActorHandle], ray.ObjectRef]


@dataclass
class Outcome:
    site: str
    value: Any = None
    # None: success; else "error", "timeout", "died", "abandoned", "unavailable" (or, from the workflows, "non_finite")
    failure: Optional[str] = None
    message: str = ""
    seconds: float = 0.0
    ref: Optional[ray.ObjectRef] = None  # the result in the object store, to pass on without a copy
    retries: int = 0  # times the task ran again because its worker died
    # Ray could not reach the worker ("temporarily unavailable"): a failed RPC, or a process that died and is
    # being restarted; which of the two, the worker's next `ready()` tells (WorkerPool.unreachable).
    unreachable: bool = False

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass
class _Busy:
    """Why a worker takes no work: a task given up on (until it ends), or a restart (until `ready`)."""

    ref: ray.ObjectRef
    deadline: float  # monotonic: past it, a given-up task's worker is restarted, a restart is given up
    restarting: bool
    ask_again_at: Optional[float] = None  # a restarting actor said "not yet": ask `ready` again then
    unreachable: bool = False  # asked after a call Ray could not deliver: did the worker's process change?


class WorkerPool:
    """The site actors, which of them each site may use, and which cannot take work now.

    A worker is *busy* while it runs a task that was given up on or while Ray restarts it;
    *restarted* when a given-up task does not stop within `stop_timeout` (Ray starts it
    afresh, with its data); *retired* once it died more often than Ray may restart it, or
    did not come back within `restart_timeout`.

    Ray says "temporarily unavailable" both for a call its RPC lost and for a process that died and is being
    restarted; the worker's `ready()` answer names its process (`processes`, the first from the driver's
    start), so only a new process counts as a death (`verdicts`: "died" or "rpc", for `gather`).
    """

    def __init__(self, workers: Sequence[ActorHandle], home: Mapping[str, ActorHandle] | None = None,
                 max_restarts: int = 0, stop_timeout: float = 10.0, restart_timeout: float = 180.0,
                 processes: Sequence[str] | None = None) -> None:
        self.workers = list(workers)
        self.home = dict(home or {})  # site -> its own actor, when each site has one
        self.max_restarts = max_restarts
        self.stop_timeout = stop_timeout
        self.restart_timeout = restart_timeout
        self.busy: dict[ActorHandle, _Busy] = {}
        self.deaths: dict[ActorHandle, int] = {}
        self.gone: set[ActorHandle] = set()  # retired for good
        # Why each worker's last restart was needed, when the restarted worker could tell (out of memory)
        # and Ray says nothing; None: it could not tell.
        self.death_causes: dict[ActorHandle, Optional[str]] = {}
        self.processes: dict[ActorHandle, str] = dict(zip(self.workers, processes or []))
        self.verdicts: dict[ActorHandle, str] = {}

    def candidates(self, site: str) -> list[ActorHandle]:
        return [self.home[site]] if site in self.home else self.workers

    def free(self) -> list[ActorHandle]:
        """Workers that can take a task now; restarts those whose given-up task would not stop."""
        if self.busy:
            refs = [busy.ref for busy in self.busy.values()]
            finished, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            finished = set(finished)
            now = time.monotonic()
            for worker, busy in list(self.busy.items()):
                if busy.ask_again_at is not None:
                    if now >= busy.ask_again_at:
                        busy.ref, busy.ask_again_at = worker.ready.remote(), None
                elif busy.ref in finished:
                    failure = _actor_failure(busy.ref)
                    if failure is ActorUnavailableError and busy.restarting:
                        busy.ask_again_at = now + RESTART_POLL_SECONDS  # still restarting
                        continue
                    del self.busy[worker]
                    if failure is not None:  # it went down with its actor: Ray restarts it
                        if busy.unreachable:
                            self.verdicts[worker] = "died"
                        self.died(worker)
                    elif busy.restarting:
                        self._answered(worker, busy)
                    continue
                if now >= busy.deadline and worker in self.busy:
                    del self.busy[worker]
                    if busy.restarting:  # it never came back
                        if busy.unreachable:
                            self.verdicts[worker] = "died"
                        self._retire(worker)
                    else:
                        self._restart(worker)
        return [w for w in self.workers if w not in self.busy and not self.retired(w)]

    def retired(self, worker: ActorHandle) -> bool:
        return worker in self.gone or self.deaths.get(worker, 0) > self.max_restarts

    def unavailable(self, site: str) -> bool:
        return all(w in self.busy or self.retired(w) for w in self.candidates(site))

    def give_up(self, worker: ActorHandle, ref: ray.ObjectRef) -> None:
        """Stop waiting for `ref`: cancel it (a queued task is dropped, a running one sees the flag)."""
        ray.cancel(ref)
        self.busy[worker] = _Busy(ref, time.monotonic() + self.stop_timeout, restarting=False)

    def unreachable(self, worker: ActorHandle) -> None:
        """A call to `worker` failed as "temporarily unavailable": busy until its `ready()` answers, which
        says whether its process is the one before (a failed RPC) or a new one (it died, Ray restarted it)."""
        self.verdicts.pop(worker, None)  # an earlier gather's, never read
        self.busy[worker] = _Busy(worker.ready.remote(), time.monotonic() + self.restart_timeout, restarting=True,
                                  unreachable=True)

    def died(self, worker: ActorHandle) -> None:
        """Ray restarts a dead actor; until it answers again, it is busy (calls would fail at once)."""
        self.deaths[worker] = self.deaths.get(worker, 0) + 1
        if not self.retired(worker):
            # Asked again while Ray restarts it (Ray's own retries would log a line per attempt).
            ready = worker.ready.remote()
            self.busy[worker] = _Busy(ready, time.monotonic() + self.restart_timeout, restarting=True)

    def busy_refs(self) -> list[ray.ObjectRef]:
        return [busy.ref for busy in self.busy.values() if busy.ask_again_at is None]

    def _answered(self, worker: ActorHandle, busy: _Busy) -> None:
        """A restarted (or unreachable) worker's `ready()` answer: its process, and why its predecessor died
        when it can tell (fedray/site/memory_watch.py), kept for the failure a site's last retry reports."""
        try:
            answer = ray.get(busy.ref, timeout=0)
        except Exception:
            answer = None
        answer = answer if isinstance(answer, dict) else {}
        before, process = self.processes.get(worker), answer.get("process")
        if process is not None:
            self.processes[worker] = process
        restarted = not busy.unreachable or before is None or process is None or process != before
        if busy.unreachable:  # a new process is a death, counted now; the same one, a failed RPC
            self.verdicts[worker] = "died" if restarted else "rpc"
            if restarted:
                self.deaths[worker] = self.deaths.get(worker, 0) + 1
                if self.retired(worker):
                    self._retire(worker)
        if restarted and answer:  # the latest restart's cause replaces an earlier death's
            self.death_causes[worker] = answer.get("predecessor_died_of")

    def _restart(self, worker: ActorHandle) -> None:
        if self.max_restarts <= 0:  # Ray may not restart it: it stays busy until its task ends
            self.busy[worker] = _Busy(self._last_ref(worker), float("inf"), restarting=False)
            return
        ray.kill(worker, no_restart=self.deaths.get(worker, 0) + 1 > self.max_restarts)
        self.died(worker)

    def _retire(self, worker: ActorHandle) -> None:
        self.gone.add(worker)
        ray.kill(worker, no_restart=True)

    def _last_ref(self, worker: ActorHandle) -> ray.ObjectRef:
        return worker.ready.remote()  # finishes once the running task has: the actor runs one at a time


def gather(
    calls: Sequence[tuple[str, Call]],
    pool: WorkerPool,
    *,
    min_results: Optional[int] = None,
    wait_after_min: float = 0.0,
    timeout: float = 0.0,
    max_retries: int = 0,
    unavailable_after: Optional[float] = None,
    count: Callable[[Outcome], int] = lambda outcome: int(outcome.ok),
    more: Optional[Callable[[], Iterable[tuple[str, Call]]]] = None,
    site_of: Callable[[str], str] = lambda label: label,
) -> Iterator[Outcome]:
    """Run `calls` (site, call(worker) -> ObjectRef), each on a free worker among `pool.candidates(site)`.

    Yields one Outcome per site. Sites still running when the loop stops early are
    "abandoned"; sites whose workers stayed busy longer than `timeout` are "timeout";
    with `unavailable_after`, sites whose every worker is still busy (or retired) that many
    seconds in are "unavailable" instead of waited for. A task whose worker died runs
    again up to `max_retries` times, then is "died"; one whose call Ray's RPC lost (the worker
    answers from the same process) runs again, up to MAX_LOST_CALLS times, without counting
    as a retry. `count(outcome)`: the results an outcome brings towards `min_results` (a
    batch of sites brings several).

    `more`: calls the caller adds while it reads the answers (FedBuff's next model versions): asked
    before each dispatch, and a worker that answers takes the next queued call before its answer is
    yielded (the caller's work on it then overlaps the worker's); the loop ends once nothing is queued,
    running or added. `site_of(label)`: the site whose workers may run a call (labels unique per task).
    """
    queue: deque[tuple[str, Call, int]] = deque((site, call, 0) for site, call in calls)
    in_flight: dict[ray.ObjectRef, tuple[str, Call, int, ActorHandle, float]] = {}
    # Tasks Ray could not deliver, until their worker's `ready()` says why (WorkerPool.unreachable).
    parked: dict[ActorHandle, tuple[str, Call, int, Outcome]] = {}
    lost_calls: dict[str, int] = {}
    successes = 0
    began = time.monotonic()
    enough_at: Optional[float] = None

    try:
        while True:
            if more is not None:
                if not queue:  # "no free worker in `timeout` s" counts from when the queue last emptied
                    began = time.monotonic()
                queue.extend((site, call, 0) for site, call in more())
            if not (queue or in_flight or parked):
                break
            now = time.monotonic()
            if enough_at is not None and now >= enough_at + wait_after_min:
                break
            for worker in [w for w in parked if w in pool.verdicts]:
                site, call, retries, outcome = parked.pop(worker)
                if pool.verdicts.pop(worker) == "rpc" and lost_calls.get(site, 0) < MAX_LOST_CALLS:
                    lost_calls[site] = lost_calls.get(site, 0) + 1
                    queue.appendleft((site, call, retries))  # the same bits on any worker: run it again
                elif retries < max_retries:
                    queue.appendleft((site, call, retries + 1))
                else:
                    successes += count(_given_up(outcome, pool, worker))
                    yield outcome
            busy = {entry[3] for entry in in_flight.values()}
            _dispatch(queue, pool, [w for w in pool.free() if w not in busy], in_flight, site_of)

            if not in_flight:
                # Every worker the queued sites may use is busy (a given-up task, a restart) or retired.
                given_up = [entry for entry in queue if all(pool.retired(w) for w in pool.candidates(site_of(entry[0])))]
                for site, _, retries in given_up:
                    yield Outcome(site, failure="died", retries=retries,
                                  message="its actor died more often than site.max_restarts")
                queue = deque(entry for entry in queue if entry not in given_up)
                waited = now - began
                if queue and unavailable_after is not None and waited >= unavailable_after:
                    for site, _, _ in queue:
                        yield Outcome(site, failure="unavailable", seconds=waited,
                                      message=f"its actor could not take work within {unavailable_after:g} s")
                    return
                if queue and timeout > 0 and waited >= timeout:
                    for site, _, _ in queue:
                        yield Outcome(site, failure="timeout", message=f"no free worker in {timeout:g} s", seconds=waited)
                    return
                if queue or parked:
                    refs = pool.busy_refs()
                    if refs:
                        ray.wait(refs, num_returns=1, timeout=POLL_SECONDS)
                    else:
                        time.sleep(RESTART_POLL_SECONDS)
                continue

            deadlines = [entry[4] + timeout for entry in in_flight.values()] if timeout > 0 else []
            if enough_at is not None:
                deadlines.append(enough_at + wait_after_min)
            wait = min([POLL_SECONDS, *(d - now for d in deadlines)])
            # A parked task's worker answering is news too: its task runs again at once, not a poll later.
            probes = [pool.busy[w].ref for w in parked if w in pool.busy and pool.busy[w].ask_again_at is None]
            ready, _ = ray.wait(list(in_flight) + probes, num_returns=1, timeout=max(wait, 0.0))

            for ref in (ref for ref in ready if ref in in_flight):
                site, call, retries, worker, started = in_flight.pop(ref)
                outcome = _collect(ref, site, started)
                outcome.retries = retries
                if outcome.unreachable:  # a lost call or a death: its worker's next answer tells which
                    pool.unreachable(worker)
                    parked[worker] = (site, call, retries, outcome)
                    continue
                if outcome.failure == "died":
                    pool.died(worker)
                    if retries < max_retries:  # the infrastructure's fault, not the site's: run it again
                        queue.appendleft((site, call, retries + 1))
                        continue
                    _given_up(outcome, pool, worker)
                successes += count(outcome)
                if outcome.ok:
                    if min_results is not None and successes >= min_results and enough_at is None:
                        enough_at = time.monotonic()
                if more is not None and outcome.failure != "died" and worker not in pool.busy and not pool.retired(worker):
                    queue.extend((site, call, 0) for site, call in more())
                    _dispatch(queue, pool, [worker], in_flight, site_of)
                yield outcome

            if timeout > 0:
                now = time.monotonic()
                for ref, (site, _, retries, worker, started) in list(in_flight.items()):
                    if now - started >= timeout:
                        del in_flight[ref]
                        pool.give_up(worker, ref)
                        yield Outcome(site, failure="timeout", message=f"no answer in {timeout:g} s",
                                      seconds=now - started, retries=retries)

        now = time.monotonic()
        for ref, (site, _, retries, worker, started) in list(in_flight.items()):
            del in_flight[ref]
            pool.give_up(worker, ref)
            yield Outcome(site, failure="abandoned", message="still running when the round closed",
                          seconds=now - started, retries=retries)
        for site, _, retries in [*queue, *((entry[0], None, entry[2]) for entry in parked.values())]:
            # their workers were busy, or said nothing yet after a lost call: never (re)started
            yield Outcome(site, failure="abandoned", message="not started when the round closed", retries=retries)
    finally:
        # A caller that stops reading early (first answer wins) leaves tasks behind.
        for ref, entry in in_flight.items():
            pool.give_up(entry[3], ref)


def _given_up(outcome: Outcome, pool: WorkerPool, worker: ActorHandle) -> Outcome:
    """A task whose worker died once more than it may run again: the site's failure, with why it died."""
    cause = pool.death_causes.get(worker) or outcome.message
    outcome.message = f"its worker died {outcome.retries + 1} time(s) running it: {cause}"
    outcome.unreachable = False
    return outcome


def _dispatch(queue: deque, pool: WorkerPool, idle: list[ActorHandle], in_flight: dict,
              site_of: Callable[[str], str] = lambda label: label) -> None:
    """Start queued sites, in order, on idle workers they may use."""
    idle_set = set(idle)
    for _ in range(len(queue)):
        if not idle_set:
            return
        site, call, retries = queue.popleft()
        worker = next((w for w in pool.candidates(site_of(site)) if w in idle_set), None)
        if worker is None:
            queue.append((site, call, retries))  # its workers are busy; it waits for them
            continue
        idle_set.discard(worker)
        in_flight[call(worker)] = (site, call, retries, worker, time.monotonic())


def _actor_failure(ref: ray.ObjectRef) -> Optional[type]:
    """The actor error a finished task ended with (ActorUnavailableError: restarting), or None."""
    try:
        ray.get(ref, timeout=0)
    except RayActorError as err:
        return ActorUnavailableError if isinstance(err, ActorUnavailableError) else RayActorError
    except Exception:  # the task's own error, or a cancellation: the actor is fine
        return None
    return None


def _collect(ref: ray.ObjectRef, site: str, started: float) -> Outcome:
    seconds = time.monotonic() - started
    try:
        value = ray.get(ref, timeout=60)  # ready already; the bound only guards a lost object
    except RayActorError as err:
        return Outcome(site, failure="died", message=str(err).strip().splitlines()[0], seconds=seconds,
                       unreachable=isinstance(err, ActorUnavailableError))
    except TaskCancelledError:
        return Outcome(site, failure="abandoned", message="cancelled", seconds=seconds)
    except RayTaskError as err:
        cause = err.cause if getattr(err, "cause", None) is not None else err
        if isinstance(cause, RayActorError):  # the task itself lost an actor it called: the infrastructure's
            return Outcome(site, failure="died", message=str(cause).strip().splitlines()[0], seconds=seconds)
        message = f"{type(cause).__name__}: {cause}".splitlines()[0]
        return Outcome(site, failure="error", message=message, seconds=seconds)
    except GetTimeoutError:
        return Outcome(site, failure="timeout", message="result could not be fetched", seconds=seconds)
    return Outcome(site, value=value, seconds=seconds, ref=ref)
