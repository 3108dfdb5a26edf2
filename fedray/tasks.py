"""Send a task for each site to a free worker and yield the answers as they arrive.

Every workflow uses this one loop, with FLARE's stopping rules: a task that
passes `timeout` (counted from when a worker started it) is given up, and once
`min_results` answers are in, the loop waits at most `wait_after_min` seconds
more. A worker runs one task at a time, so the pool's size bounds how many
sites train at once. Every `ray.wait` here has a bound.
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

    @property
    def ok(self) -> bool:
        return self.failure is None


def gather(
    calls: Sequence[tuple[str, Call]],
    workers: Mapping[str, Sequence[ActorHandle]],
    *,
    min_results: Optional[int] = None,
    wait_after_min: float = 0.0,
    timeout: float = 0.0,
) -> Iterator[Outcome]:
    """Run `calls` (site, call(worker) -> ObjectRef), each on a free worker among `workers[site]`.

    Yields one Outcome per site that was sent a task; sites still running when
    the loop stops early are cancelled and reported as "abandoned".
    """
    queue = deque(calls)
    idle = {worker for site, _ in calls for worker in workers[site]}
    in_flight: dict[ray.ObjectRef, tuple[str, ActorHandle, float]] = {}
    successes = 0
    enough_at: Optional[float] = None

    try:
        while queue or in_flight:
            now = time.monotonic()
            if enough_at is not None and now >= enough_at + wait_after_min:
                break
            _dispatch(queue, workers, idle, in_flight)
            if not in_flight:
                # Every worker these sites may use is stuck on a task we gave up on.
                for site, _ in queue:
                    yield Outcome(site, failure="no_worker", message="its workers are all busy with timed-out tasks")
                return

            deadlines = [started + timeout for _, _, started in in_flight.values()] if timeout > 0 else []
            if enough_at is not None:
                deadlines.append(enough_at + wait_after_min)
            wait = min([POLL_SECONDS, *(d - now for d in deadlines)])
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=max(wait, 0.0))

            for ref in ready:
                site, worker, started = in_flight.pop(ref)
                idle.add(worker)
                outcome = _collect(ref, site, started)
                if outcome.ok:
                    successes += 1
                    if min_results is not None and successes >= min_results and enough_at is None:
                        enough_at = time.monotonic()
                yield outcome

            if timeout > 0:
                now = time.monotonic()
                for ref, (site, _, started) in list(in_flight.items()):
                    if now - started >= timeout:
                        del in_flight[ref]  # its worker stays busy, so it is not returned to `idle`
                        ray.cancel(ref)
                        yield Outcome(site, failure="timeout", message=f"no answer in {timeout:g} s", seconds=now - started)

        now = time.monotonic()
        for ref, (site, _, started) in list(in_flight.items()):
            del in_flight[ref]
            ray.cancel(ref)
            yield Outcome(site, failure="abandoned", message="still running when the round closed", seconds=now - started)
    finally:
        # A caller that stops reading early (first answer wins) leaves tasks behind.
        for ref in in_flight:
            ray.cancel(ref)


def _dispatch(queue: deque, workers, idle: set, in_flight: dict) -> None:
    """Start queued sites, in order, on idle workers they may use."""
    for _ in range(len(queue)):
        if not idle:
            return
        site, call = queue.popleft()
        worker = next((w for w in workers[site] if w in idle), None)
        if worker is None:
            queue.append((site, call))  # its workers are busy; it waits for them
            continue
        idle.discard(worker)
        in_flight[call(worker)] = (site, worker, time.monotonic())


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
    return Outcome(site, value=value, seconds=time.monotonic() - started)
