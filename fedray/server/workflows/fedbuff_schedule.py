"""FedBuff's schedule on the simulated clock: who trains from which model version, and when it counts.

A pure function of the sites, the seed and each site's task duration (simulated seconds), never of
Ray's timing: the workflow (`fedbuff.py`) computes it first and then only executes it, so an
asynchronous run gives the same bits whatever the actors, the batching, a killed worker or a resume.
Pure Python and numpy: config checks and tests run it without Ray or torch.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

# The seed's stream for FedBuff's site draws (apart from the synchronous rounds' [seed, round] draws).
SCHEDULE_STREAM = 0xFEDB


@dataclass(frozen=True)
class Training:
    """One site task: `site` starts from model `version` at `start` and arrives at `arrival` (simulated seconds).
    `aggregation`: the buffer it lands in, None when the run ends before it arrives (never trained)."""

    index: int  # the order of starts: ties on the clock are broken by it
    site: str
    version: int
    start: float
    arrival: float
    aggregation: Optional[int]
    # How many earlier tasks of this site started from the same version (a site drawn again before the next
    # aggregation): a task's round for the site's seeds is version + repeat x num_rounds, so no two are the same.
    repeat: int = 0

    def round(self, num_rounds: int) -> int:
        """The round the site is told: its start version (what an lr schedule counts), unique per site and task."""
        return self.version + self.repeat * num_rounds

    @property
    def staleness(self) -> int:
        """How many aggregations happened while it trained (FedBuff's tau)."""
        return -1 if self.aggregation is None else self.aggregation - self.version


@dataclass(frozen=True)
class Schedule:
    trainings: list[Training]  # by index
    times: list[float]  # aggregation k's simulated time (version k+1 exists from then)

    def landing_in(self, aggregation: int) -> list[Training]:
        return [t for t in self.trainings if t.aggregation == aggregation]

    def starting_from(self, version: int) -> list[Training]:
        """The trainings that start from `version` and count (those arriving after the last aggregation never run)."""
        return [t for t in self.trainings if t.version == version and t.aggregation is not None]

    def pending_after(self, aggregation: int) -> list[Training]:
        """Trainings started by aggregation `aggregation` (from a version <= it) that land in a later buffer, or
        after this schedule's last (a resume may ask for more aggregations): a checkpoint taken then keeps their
        start versions' models to run them again on resume."""
        return [t for t in self.trainings
                if t.version <= aggregation and (t.aggregation is None or aggregation < t.aggregation)]


def fedbuff_schedule(sites: Sequence[str], *, concurrency: int, buffer_size: int, num_aggregations: int, seed: int,
                     duration: Callable[[str], float]) -> Schedule:
    """Simulate FedBuff (Nguyen et al. 2022) on the clock.

    At time 0, `concurrency` sites are drawn (seeded, without replacement among idle sites) and start from
    version 0. Each arrival (in order of arrival time, ties by start order) enters the buffer; the
    `buffer_size`-th makes aggregation k at that time (version k+1); then the arriving site's slot is
    refilled at once by a site drawn among the idle ones (the arriving site itself only when no other is
    idle), starting from the version current then. `duration(site)` is a task's simulated seconds (>= 0).
    """
    if not 1 <= buffer_size <= concurrency <= len(sites):
        raise ValueError(f"need 1 <= buffer_size ({buffer_size}) <= concurrency ({concurrency}) <= sites ({len(sites)})")
    draw = np.random.default_rng([seed, SCHEDULE_STREAM])
    idle = list(sites)
    started: list[list] = []  # [index, site, version, start, arrival, aggregation]
    arrivals: list[tuple[float, int]] = []
    times: list[float] = []
    version = 0

    def start(now: float) -> None:
        pick = int(draw.integers(len(idle)))
        site = idle[pick]
        idle[pick] = idle[-1]  # O(1) removal; the order of `idle` is itself a function of the seed
        idle.pop()
        seconds = float(duration(site))
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"{site}'s task duration is {seconds}, not a finite number of seconds >= 0")
        started.append([len(started), site, version, now, now + seconds, None])
        heapq.heappush(arrivals, (now + seconds, len(started) - 1))

    for _ in range(concurrency):
        start(0.0)
    buffer: list[int] = []
    while len(times) < num_aggregations:
        now, index = heapq.heappop(arrivals)
        buffer.append(index)
        if len(buffer) == buffer_size:
            for member in buffer:
                started[member][5] = len(times)
            times.append(now)
            buffer = []
            version += 1
            if len(times) == num_aggregations:
                break
        arrived = started[index][1]
        if not idle:
            idle.append(arrived)
            start(now)
        else:
            start(now)
            idle.append(arrived)
    seen: dict[tuple[str, int], int] = {}
    trainings = []
    for row in started:
        key = (row[1], row[2])
        trainings.append(Training(*row, repeat=seen.get(key, 0)))
        seen[key] = seen.get(key, 0) + 1
    return Schedule(trainings, times)


def staleness_weight(staleness: int, kind: str = "constant", a: float = 0.5, b: float = 4.0) -> float:
    """FedBuff's weight of an update `staleness` aggregations old (s >= 0).

    constant: 1. polynomial: 1/(1+s)^a (FLSim's PolynomialStalenessWeight, a in [0, 1]).
    threshold (FLSim's ThresholdStalenessWeight): 1 while s <= b, then a.
    hinge (Xie et al.'s FedAsync; FLSim has none): 1 while s <= b, then 1/(a(s-b)+1).
    Unnormalized: FLSim divides by the weight at its `avg_staleness`, a constant factor `server_lr` absorbs.
    """
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return 1.0 / (1.0 + staleness) ** a
    if kind == "threshold":
        return 1.0 if staleness <= b else a
    if kind == "hinge":
        return 1.0 if staleness <= b else 1.0 / (a * (staleness - b) + 1.0)
    raise ValueError(f"unknown staleness weighting {kind!r}: constant, polynomial, threshold or hinge")
