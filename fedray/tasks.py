"""Send a task to sites and yield their answers as they arrive, with FLARE's stopping rules.

Every workflow uses this one loop: at most `max_in_flight` tasks run at once
(so CPU sites don't oversubscribe the cores), a task that passes `timeout`
is given up, and once `min_results` answers are in, the loop waits at most
`wait_after_min` seconds more. Every `ray.wait` here has a bound.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

POLL_SECONDS = 1.0


@dataclass
class Outcome:
    site: str
    value: Any = None
    failure: Optional[str] = None  # None: success; else "error", "timeout", "died" or "abandoned"
    message: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failure is None


def gather(
    calls: list[tuple[str, Callable[[], ray.ObjectRef]]],
    *,
    max_in_flight: Optional[int] = None,
    min_results: Optional[int] = None,
    wait_after_min: float = 0.0,
    timeout: float = 0.0,
) -> Iterator[Outcome]:
    """Start `calls` (site name, thunk issuing the remote call); yield an Outcome per site.

    `timeout` (seconds, 0: none) counts from the moment a site's task is sent.
    Tasks still running when the loop stops early are cancelled and reported
    as "abandoned"; sites never sent a task are not reported.
    """
    queue = deque(calls)
    limit = max_in_flight or len(calls) or 1
    in_flight: dict[ray.ObjectRef, tuple[str, float]] = {}
    successes = 0
    enough_at: Optional[float] = None

    try:
        while queue or in_flight:
            now = time.monotonic()
            if enough_at is not None and now >= enough_at + wait_after_min:
                break
            while queue and len(in_flight) < limit:
                site, call = queue.popleft()
                in_flight[call()] = (site, time.monotonic())

            deadlines = [started + timeout for _, started in in_flight.values()] if timeout > 0 else []
            if enough_at is not None:
                deadlines.append(enough_at + wait_after_min)
            wait = min([POLL_SECONDS, *(d - now for d in deadlines)])
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=max(wait, 0.0))

            for ref in ready:
                site, started = in_flight.pop(ref)
                outcome = _collect(ref, site, started)
                if outcome.ok:
                    successes += 1
                    if min_results is not None and successes >= min_results and enough_at is None:
                        enough_at = time.monotonic()
                yield outcome

            if timeout > 0:
                now = time.monotonic()
                for ref, (site, started) in list(in_flight.items()):
                    if now - started >= timeout:
                        del in_flight[ref]
                        ray.cancel(ref)
                        yield Outcome(site, failure="timeout", message=f"no answer in {timeout:g} s", seconds=now - started)

        now = time.monotonic()
        for ref, (site, started) in list(in_flight.items()):
            del in_flight[ref]
            ray.cancel(ref)
            yield Outcome(site, failure="abandoned", message="still running when the round closed", seconds=now - started)
    finally:
        # A caller that stops reading early (first answer wins) leaves tasks behind.
        for ref in in_flight:
            ray.cancel(ref)


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
