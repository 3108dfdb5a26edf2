"""How sites map onto the cluster: how many worker actors, their GPU fractions and CPU threads."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from fedray.config import runs_own_code

# Sites per GPU that get an actor of their own before they share a pool.
ACTORS_PER_GPU = 8


class ResourceError(RuntimeError):
    """The sites ask for what the cluster can never give; raised instead of pending forever."""


@dataclass(frozen=True)
class SitePlan:
    num_actors: int  # site worker actors; == num_sites means one actor per site
    num_cpus: float  # Ray's logical CPUs per actor
    num_gpus: float  # GPU fraction per actor
    num_threads: int  # torch threads inside each actor


def plan_sites(site: Mapping[str, Any], num_sites: int, cluster: Mapping[str, float], nodes: list[Mapping[str, float]],
               share: float = 1.0) -> SitePlan:
    """Decide the site actors from `site.*` and the cluster's totals, or explain why it cannot run.

    With GPUs, each site gets its own actor with a GPU fraction (up to
    ACTORS_PER_GPU per GPU; more sites share them). On CPU, a pool of one
    single-threaded actor per core serves all sites in turn: the tutorial-sized
    models scale poorly across threads, and every extra process costs seconds
    of start-up (torch import) and memory. `share`: the part of the cluster's CPUs and
    GPUs this job may take (a parallel sweep's jobs run side by side).
    """
    # `share` (ray.share): a parallel sweep's jobs each plan on their part, so all their actors fit at once.
    cpus = float(cluster.get("CPU", 1)) * share
    gpus = float(cluster.get("GPU", 0)) * share
    use_gpu = gpus > 0 if site["num_gpus"] is None else site["num_gpus"] > 0
    num_threads = site["num_threads"] or 1
    if runs_own_code(site):
        num_actors = num_sites  # a script's (or executor's) state belongs to one site: one process each
    elif site["num_actors"] is not None:
        num_actors = site["num_actors"]
    elif use_gpu:
        num_actors = max(1, int(ACTORS_PER_GPU * gpus))
    else:
        num_actors = max(1, int(cpus) // num_threads)
    num_actors = min(num_actors, num_sites)
    if use_gpu and site["num_threads"] is None:
        num_threads = max(1, int(cpus) // num_actors)

    num_gpus = site["num_gpus"] if site["num_gpus"] is not None else (_floor4(min(1.0, gpus / num_actors)) if gpus else 0.0)
    # Ray keeps 4 decimals; rounding up could strand the last actor.
    num_cpus = site["num_cpus"] if site["num_cpus"] is not None else _floor4(min(num_threads, cpus / num_actors))

    if num_gpus > 0 and gpus == 0:
        raise ResourceError(f"site.num_gpus={num_gpus:g}: the Ray cluster has no GPU; set site.num_gpus=0")
    if num_gpus > max((n.get("GPU", 0) for n in nodes), default=0) + 1e-9:
        raise ResourceError(f"site.num_gpus={num_gpus:g}: no node has that many GPUs; lower site.num_gpus")
    if num_gpus * num_actors > gpus + 1e-6:
        raise ResourceError(
            f"site.num_gpus={num_gpus:g} x {num_actors} site actors needs {num_gpus * num_actors:g} GPUs, "
            f"the cluster has {gpus:g}; lower site.num_gpus or site.num_actors"
        )
    if num_cpus * num_actors > cpus + 1e-6:
        raise ResourceError(
            f"site.num_cpus={num_cpus:g} x {num_actors} site actors needs {num_cpus * num_actors:g} CPUs, "
            f"the cluster has {cpus:g}; lower site.num_cpus or site.num_actors"
        )
    return SitePlan(num_actors, num_cpus, num_gpus, num_threads)


def _floor4(value: float) -> float:
    return math.floor(value * 10_000) / 10_000
