"""How sites map onto the cluster: GPU fractions, CPU threads, and sites training at once."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping


class ResourceError(RuntimeError):
    """The sites ask for what the cluster can never give; raised instead of pending forever."""


@dataclass(frozen=True)
class SitePlan:
    num_cpus: float  # Ray's logical CPUs per site actor
    num_gpus: float  # GPU fraction per site actor
    num_threads: int  # torch threads inside each site
    max_concurrent: int  # sites training at the same time


def plan_sites(site: Mapping[str, Any], num_sites: int, cluster: Mapping[str, float], nodes: list[Mapping[str, float]]) -> SitePlan:
    """Decide per-site resources from `site.*` and the cluster's totals, or explain why it cannot run."""
    cpus = float(cluster.get("CPU", 1))
    gpus = float(cluster.get("GPU", 0))
    num_gpus = site["num_gpus"] if site["num_gpus"] is not None else (min(1.0, gpus / num_sites) if gpus else 0.0)
    num_gpus = _floor4(num_gpus)  # Ray keeps 4 decimals; rounding up could strand the last site
    num_cpus = site["num_cpus"] if site["num_cpus"] is not None else _floor4(min(1.0, cpus / num_sites))

    if num_gpus > 0 and gpus == 0:
        raise ResourceError(f"site.num_gpus={num_gpus:g}: the Ray cluster has no GPU; set site.num_gpus=0")
    if num_gpus > max((n.get("GPU", 0) for n in nodes), default=0) + 1e-9:
        raise ResourceError(f"site.num_gpus={num_gpus:g}: no node has that many GPUs; lower site.num_gpus")
    if num_gpus * num_sites > gpus + 1e-6:
        raise ResourceError(
            f"site.num_gpus={num_gpus:g} x {num_sites} sites needs {num_gpus * num_sites:g} GPUs, "
            f"the cluster has {gpus:g}; lower site.num_gpus or num_clients"
        )
    if num_cpus * num_sites > cpus + 1e-6:
        raise ResourceError(
            f"site.num_cpus={num_cpus:g} x {num_sites} sites needs {num_cpus * num_sites:g} CPUs, "
            f"the cluster has {cpus:g}; lower site.num_cpus or leave it null"
        )

    if num_gpus > 0:
        max_concurrent = site["max_concurrent"] or num_sites
        num_threads = site["num_threads"] or max(1, int(cpus) // num_sites)
    else:
        # On CPU, one torch thread per site and as many sites at once as there are cores
        # beats fewer sites with more threads: these small models scale poorly across threads.
        num_threads = site["num_threads"] or 1
        max_concurrent = site["max_concurrent"] or max(1, int(cpus) // num_threads)
    return SitePlan(num_cpus, num_gpus, num_threads, min(max_concurrent, num_sites))


def _floor4(value: float) -> float:
    return math.floor(value * 10_000) / 10_000
