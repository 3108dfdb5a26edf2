"""A synchronous round on the simulated clock, decided before any site trains.

Each sampled site's task takes `clock.task_seconds`. In the order below, a site does not count when
  dropped:       its seeded dropout draw says so, or its availability trace has it go offline before it finishes;
  late:          it would finish after `round_deadline` seconds;
  over_selected: over-selection sent the task to more sites than `target`, and `target` others finish first
                 (ties broken by the sampled order).
The round ends, on the clock, when its last counted site's answer arrives; or at the deadline when fewer than
`target` sites count (the server waited to its deadline for the missing ones). These sites never train.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from fedray.system import DROPPED, LATE, OVER_SELECTED
from fedray.system.availability import active_until
from fedray.system.clock import dropped, task_seconds
from fedray.system.profiles import SiteProfile


@dataclass(frozen=True)
class Planned:
    site: str
    seconds: float  # its task's simulated duration
    kind: Optional[str] = None  # None: it trains and counts; else dropped, late or over_selected
    offline_at: Optional[float] = None  # dropped by its availability trace: when it goes offline


@dataclass(frozen=True)
class RoundPlan:
    sites: tuple[Planned, ...]  # in sampled order
    seconds: float  # the round's simulated duration

    @property
    def counted(self) -> list[str]:
        return [planned.site for planned in self.sites if planned.kind is None]

    @property
    def spared(self) -> dict[str, Planned]:
        return {planned.site: planned for planned in self.sites if planned.kind is not None}


def plan_round(chosen: Sequence[str], target: int, profiles: Mapping[str, SiteProfile], traces: Mapping[str, Mapping],
               start: float, model_bytes: int, samples: Mapping[str, int], deadline: Optional[float], seed: int,
               current_round: int) -> RoundPlan:
    """Who of `chosen` (sampled at simulated time `start`) counts in `current_round`, and how long it takes."""
    planned: dict[str, Planned] = {}
    candidates: list[tuple[float, int, str]] = []
    for order, site in enumerate(chosen):
        seconds = task_seconds(profiles[site], model_bytes, samples[site])
        offline_at = active_until(traces, site, start)
        if start + seconds > offline_at:
            planned[site] = Planned(site, seconds, DROPPED, offline_at)
        elif dropped(profiles[site], seed, current_round, site):
            planned[site] = Planned(site, seconds, DROPPED)
        elif deadline is not None and seconds > deadline:
            planned[site] = Planned(site, seconds, LATE)
        else:
            candidates.append((seconds, order, site))
    candidates.sort()
    for rank, (seconds, _, site) in enumerate(candidates):
        planned[site] = Planned(site, seconds, None if rank < target else OVER_SELECTED)
    counted = [seconds for seconds, _, _ in candidates[:target]]
    if deadline is not None and len(counted) < target:
        duration = float(deadline)
    else:
        duration = max(counted, default=0.0)
    return RoundPlan(tuple(planned[site] for site in chosen), duration)


def over_selected_count(target: int, over_selection: float, available: int) -> int:
    """Sites sent the task: ceil(over_selection x target), at most those available."""
    return min(available, math.ceil(over_selection * target - 1e-9))


@dataclass
class SyncClock:
    """The controller's clock for synchronous rounds: the sites' profiles and availability, what a task moves
    and computes, the round policies, and the simulated time now (a resumed run's: where it stopped)."""

    profiles: Mapping[str, SiteProfile]
    traces: Mapping[str, Mapping]  # by site; empty: always online
    samples: Mapping[str, int]  # a site's training samples per task: local steps x batch size
    model_bytes: int
    deadline: Optional[float] = None
    over_selection: float = 1.0
    now: float = 0.0

    def online(self, sites: Sequence[str]) -> list[str]:
        """The sites online at the round's start (the ones sampling may pick)."""
        if not self.traces:
            return list(sites)
        from fedray.system.availability import available

        return [site for site in sites if available(self.traces, site, self.now)]

    def wait_for_online(self, sites: Sequence[str]) -> float:
        """With no site online at the round's start, the server waits for the first to come online: the
        clock moves there; the seconds waited (0 when some site is online)."""
        if not self.traces or self.online(sites):
            return 0.0
        from fedray.system.availability import next_online

        waited = min(next_online(self.traces, site, self.now) for site in sites) - self.now
        if not math.isfinite(waited):
            raise ValueError("no site is ever online again in system.availability's trace")
        self.now += waited
        return waited

    def plan(self, chosen: Sequence[str], target: int, seed: int, current_round: int) -> RoundPlan:
        return plan_round(chosen, target, self.profiles, self.traces, self.now, self.model_bytes, self.samples,
                          self.deadline, seed, current_round)


def clock_runs(job: Mapping) -> bool:
    """Whether a job's rounds run on the simulated clock: anything but uniform profiles, always online, no
    deadline and no over-selection (which keeps fedray's code path of before `system=`, and its bits)."""
    system, sag = job["system"], job["workflows"]["scatter_and_gather"]
    return (system["name"] != "uniform" or system["availability"] is not None or sag["round_deadline"] is not None
            or sag["over_selection"] > 1)


def samples_per_task(train_size: int, local_epochs: int, batch_size: int) -> int:
    """A site's samples per task on the clock: its local steps (every epoch's batches) x the batch size."""
    return local_epochs * math.ceil(train_size / batch_size) * batch_size
