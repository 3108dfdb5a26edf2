"""Where each side's wall time went, in phases named the same for both.

fedray's phases come from its run's summary.json (`timings`, and per round
`train_seconds` and `evaluation_seconds`); the floor's from the JSON line it
prints. `process` is what the phases leave out of the whole process's wall
time: interpreter start, imports, (for fedray) Hydra and the config check, and
exit. A phase a side does not have, or does not report apart, is None.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

PHASES = ("process", "data", "ray_start", "workers_start", "pre_train", "training", "aggregation", "evaluation", "shutdown")

# Reported to the core owner: the phases fedray's summary.json does not yet time apart.
FEDRAY_NOT_SEPARATE = {
    "aggregation": "folded into training: FedAvg sums each site's result as it arrives",
    "data": "only the wait for it after Ray is up: reading and partitioning overlap Ray's start",
    "workers_start": "includes putting the dataset into Ray's object store and the controller's start",
    "pre_train": "pre_train, cross-site evaluation if on, and event polling: workflows less the rounds",
}


def fedray_breakdown(summary: Mapping[str, Any], wall_seconds: float) -> dict[str, Optional[float]]:
    timings, rounds = summary["timings"], summary["rounds"]
    training = sum(r["train_seconds"] for r in rounds)
    evaluation = sum(r["evaluation_seconds"] for r in rounds)
    phases = {
        "process": wall_seconds - summary["wall_seconds"],
        "data": timings["data_wait"],
        "ray_start": timings["ray_start"],
        "workers_start": timings["site_start"],
        "pre_train": timings["workflows"] - training - evaluation,
        "training": training,
        "aggregation": None,
        "evaluation": evaluation,
        "shutdown": timings["shutdown"],
    }
    return _rounded(phases)


def plain_breakdown(report: Mapping[str, Any], wall_seconds: float) -> dict[str, Optional[float]]:
    timings = report["timings"]
    phases = {
        "process": wall_seconds - sum(timings.values()),
        "data": timings["data"],
        "ray_start": None,
        "workers_start": timings["workers_start"],
        "pre_train": None,
        "training": timings["training"],
        "aggregation": timings["aggregation"],
        "evaluation": timings["evaluation"],
        "shutdown": timings["workers_stop"],
    }
    return _rounded(phases)


def site_task_seconds(summary: Mapping[str, Any]) -> float:
    """The sites' own seconds in their train tasks (validation of the received model included), summed:
    against `training` times the number of site actors, it shows how busy the actors were."""
    return round(sum(site["seconds"] for r in summary["rounds"] for site in r["sites"].values()), 3)


def _rounded(phases: dict[str, Optional[float]]) -> dict[str, Optional[float]]:
    return {name: None if value is None else round(value, 3) for name, value in phases.items()}
