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
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from fedray.system.availability import active_until, available

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
    dropped: bool = False  # went offline before it would arrive (at `arrival`): never trained, never aggregated
    lost: bool = False  # dropped by its seeded dropout draw (system.dropout): its slot is refilled at `arrival`

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

    def dropped_by(self, aggregation: int) -> list[Training]:
        """The trainings that went offline after the previous aggregation and by this one (on the clock)."""
        after = self.times[aggregation - 1] if aggregation else -math.inf
        return [t for t in self.trainings if t.dropped and after < t.arrival <= self.times[aggregation]]

    def starting_from(self, version: int) -> list[Training]:
        """The trainings that start from `version` and count (those arriving after the last aggregation never run)."""
        return [t for t in self.trainings if t.version == version and t.aggregation is not None]

    def pending_after(self, aggregation: int) -> list[Training]:
        """Trainings started by aggregation `aggregation` (from a version <= it) that land in a later buffer, or
        after this schedule's last (a resume may ask for more aggregations): a checkpoint taken then keeps their
        start versions' models to run them again on resume."""
        return [t for t in self.trainings if t.version <= aggregation and not t.dropped
                and (t.aggregation is None or aggregation < t.aggregation)]


def fedbuff_schedule(sites: Sequence[str], *, concurrency: int, buffer_size: int, num_aggregations: int, seed: int,
                     duration: Callable[[str], float], traces: Optional[Mapping[str, Mapping]] = None,
                     lost: Optional[Callable[[str, int], bool]] = None) -> Schedule:
    """Simulate FedBuff (Nguyen et al. 2022) on the clock.

    At time 0, `concurrency` sites are drawn (seeded, without replacement among idle sites) and start from
    version 0. Each arrival (in order of arrival time, ties by start order) enters the buffer; the
    `buffer_size`-th makes aggregation k at that time (version k+1); then the arriving site's slot is
    refilled at once by a site drawn among the idle ones (the arriving site itself only when no other is
    idle), starting from the version current then. `duration(site)` is a task's simulated seconds (>= 0).
    With availability `traces` (fedray/system/availability.py), only a site online then is drawn (none online:
    the slot waits until an idle site comes online), and a site that goes offline before it would arrive drops
    out then (`dropped`: never trained, never aggregated) and its slot is refilled.
    `lost(site, round)`: a task's seeded dropout draw (round: Training.round, unique per site and task); a lost
    task is `dropped` too, at the time it would have arrived (the device left; the server hears nothing).
    """
    if not 1 <= buffer_size <= concurrency <= len(sites):
        raise ValueError(f"need 1 <= buffer_size ({buffer_size}) <= concurrency ({concurrency}) <= sites ({len(sites)})")
    draw = np.random.default_rng([seed, SCHEDULE_STREAM])
    idle = list(sites)
    started: list[list] = []  # [index, site, version, start, arrival, aggregation, dropped, lost]
    repeats: dict[tuple[str, int], int] = {}  # tasks so far per (site, start version): Training.repeat
    events: list[tuple[float, int, int]] = []  # (time, 0: an arrival or a drop | 1: a wake-up, index)
    times: list[float] = []
    version = 0
    waiting = 0  # slots with no site online to fill them

    def pick(now: float) -> Optional[int]:
        """A seeded draw among the idle sites (online at `now`, with traces): its place in `idle`, or None."""
        if traces is None:
            return int(draw.integers(len(idle))) if idle else None
        for _ in range(8):  # most sites are online: a few tries, then the exact draw among those that are
            tried = int(draw.integers(len(idle))) if idle else None
            if tried is None or online(traces, idle[tried], now):
                return tried
        candidates = [i for i, site in enumerate(idle) if online(traces, site, now)]
        return candidates[int(draw.integers(len(candidates)))] if candidates else None

    def start(now: float) -> bool:
        place = pick(now)
        if place is None:
            return False
        site = idle[place]
        idle[place] = idle[-1]  # O(1) removal; the order of `idle` is itself a function of the seed
        idle.pop()
        seconds = float(duration(site))
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"{site}'s task duration is {seconds}, not a finite number of seconds >= 0")
        offline = active_until(traces, site, now) if traces is not None else math.inf
        if len(started) > 100 * (num_aggregations * buffer_size + concurrency):  # a trace where tasks never finish
            raise ValueError(f"{len(started)} tasks started by t={now:g} s and too few arrived to fill "
                             f"{num_aggregations} buffers: the sites go offline before their tasks end")
        ends = min(now + seconds, offline)
        repeat = repeats[site, version] = repeats.get((site, version), -1) + 1
        gone = lost is not None and offline >= now + seconds and lost(site, version + repeat * num_aggregations)
        started.append([len(started), site, version, now, ends, None, offline < now + seconds or gone, gone])
        heapq.heappush(events, (ends, 0, len(started) - 1))
        return True

    def refill(now: float, freed: Optional[str]) -> None:
        """Fill a slot at `now`: a site other than the one just `freed` if one can start, else that one."""
        nonlocal waiting
        if freed is None:
            filled = start(now)
        else:
            filled = bool(idle) and start(now)
            idle.append(freed)
            filled = filled or start(now)
        if not filled:
            waiting += 1
            wake = min((next_online(traces[site], now) for site in idle if site in traces), default=math.inf)
            if not math.isfinite(wake) and not any(kind == 0 for _, kind, _ in events):
                raise ValueError(f"no site comes online after t={now:g} s: FedBuff cannot go on")
            if math.isfinite(wake):
                heapq.heappush(events, (wake, 1, -1))

    for _ in range(concurrency):
        refill(0.0, None)
    buffer: list[int] = []
    while len(times) < num_aggregations:
        if not events:
            raise ValueError("no site comes online again: FedBuff cannot go on")
        now, kind, index = heapq.heappop(events)
        if kind == 1:  # a site may be online now: fill the slots that waited
            for _ in range(waiting):
                waiting -= 1
                refill(now, None)
            continue
        if not started[index][6]:
            buffer.append(index)
            if len(buffer) == buffer_size:
                for member in buffer:
                    started[member][5] = len(times)
                times.append(now)
                buffer = []
                version += 1
                if len(times) == num_aggregations:
                    break
        refill(now, started[index][1])
    seen: dict[tuple[str, int], int] = {}
    trainings = []
    for row in started:
        key = (row[1], row[2])
        trainings.append(Training(*row[:6], repeat=seen.get(key, 0), dropped=row[6], lost=row[7]))
        seen[key] = seen.get(key, 0) + 1
    return Schedule(trainings, times)


def online(traces: Mapping[str, Mapping], site: str, t: float) -> bool:
    """Online at `t` with time left to train: an interval that ends at `t` itself does not count."""
    return available(traces, site, t) and active_until(traces, site, t) > t


def next_online(trace: Mapping, t: float) -> float:
    """When a site with FedScale's `trace` is next `online` at or after `t` (inf: never)."""
    if online({"site": trace}, "site", t):
        return t
    period = trace["finish_time"]
    norm = t % period if period > 0 else t
    later = [start for start in trace["active"] if start > norm]
    if later:
        return t + later[0] - norm
    if period > 0 and trace["active"]:
        return t + (period - norm) + trace["active"][0]
    return math.inf


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
