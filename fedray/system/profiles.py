"""Each site's system profile: how fast it computes, how fast its link is, how often it drops out.

uniform: every cost zero (fedray before `system=`: no simulated time passes). lognormal: each quantity drawn
once per site, a function of (seed, the site's index), around a median with a spread (the sigma of its log), as
FedScale's and FLSim's log-normal device models. trace: FedScale's device_capacity pickle, whose
`computation` is a model's inference latency in ms per sample (a training sample costs 3x: forward and
backward, FedScale's augmentation_factor) and whose `communication` is a bandwidth in kbit/s, FedScale's
kbit being 1024/8 bytes (fedscale/cloud/internal/client_metadata.py, aggregation/aggregator.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fedray.system import LOGNORMAL, TRACE, UNIFORM

# FedScale's cost of training on a sample, in units of its inference latency (forward + backward ~ 3 forwards).
FEDSCALE_TRAIN_FACTOR = 3.0
# FedScale's kbit: a model's size in kbit is bytes / 1024 * 8, so a kbit/s link moves 128 bytes a second.
FEDSCALE_BYTES_PER_KBIT = 1024 / 8
# The lognormal draw's stream apart from every other seeded draw of (seed, index).
_PROFILE_STREAM = 0x5E7E


@dataclass(frozen=True)
class SiteProfile:
    seconds_per_sample: float  # one training sample's compute
    download_bytes_per_s: float  # inf: the model arrives at once
    upload_bytes_per_s: float
    latency_s: float  # per task: the request and the answer's round trip
    dropout: float  # probability that a task is lost (the device leaves), drawn per task


ZERO_COST = SiteProfile(0.0, math.inf, math.inf, 0.0, 0.0)


def build_profiles(system: Mapping[str, Any], sites: Sequence[str], seed: int) -> dict[str, SiteProfile]:
    """Every site's profile under `system` (the config group's keys): a function of them, the sites and the seed."""
    name = system["name"]
    if name == UNIFORM:
        return {site: ZERO_COST for site in sites}
    if name == LOGNORMAL:
        # One stream for the run, a row of 4 normals per site in site order: site k's draw depends on the seed
        # and k alone (a longer run's first rows are a shorter one's), at 1 ms for 10,000 sites.
        draws = np.random.default_rng([seed, _PROFILE_STREAM]).standard_normal((len(sites), 4))
        keys = ("seconds_per_sample", "compute_spread", "download_bytes_per_s", "upload_bytes_per_s",
                "bandwidth_spread", "latency_s", "latency_spread", "dropout")
        plain = {key: float(system[key]) for key in keys}  # read once: a DictConfig's reads cost microseconds
        return {site: lognormal_profile(plain, z) for site, z in zip(sites, draws.tolist())}
    if name == TRACE:
        capacity = ordered_entries(load_pickle(system["device_capacity"], "system.device_capacity"), len(sites), "system.device_capacity")
        return {site: capacity_profile(entry, system["dropout"]) for site, entry in zip(sites, capacity)}
    raise ValueError(f"system.name={name}: must be one of {UNIFORM}, {LOGNORMAL}, {TRACE}")


def lognormal_profile(system: Mapping[str, float], z: Sequence[float]) -> SiteProfile:
    """A site's profile from its 4 standard normals: each quantity median x exp(spread x z)."""
    compute_spread, bandwidth_spread, latency_spread = (system["compute_spread"], system["bandwidth_spread"],
                                                        system["latency_spread"])
    return SiteProfile(
        seconds_per_sample=float(system["seconds_per_sample"] * math.exp(compute_spread * z[0])),
        download_bytes_per_s=float(system["download_bytes_per_s"] * math.exp(bandwidth_spread * z[1])),
        upload_bytes_per_s=float(system["upload_bytes_per_s"] * math.exp(bandwidth_spread * z[2])),
        latency_s=float(system["latency_s"] * math.exp(latency_spread * z[3])),
        dropout=float(system["dropout"]),
    )


def capacity_profile(entry: Mapping[str, Any], dropout: float) -> SiteProfile:
    """One FedScale device_capacity entry {computation: ms per sample (inference), communication: kbit/s}."""
    bytes_per_s = float(entry["communication"]) * FEDSCALE_BYTES_PER_KBIT
    return SiteProfile(
        seconds_per_sample=FEDSCALE_TRAIN_FACTOR * float(entry["computation"]) / 1000.0,
        download_bytes_per_s=bytes_per_s,  # FedScale has one bandwidth for pull and push
        upload_bytes_per_s=bytes_per_s,
        latency_s=0.0,
        dropout=float(dropout),
    )


def ordered_entries(trace: Mapping[Any, Any], count: int, key: str) -> list[Any]:
    """site-k's entry is the trace's k-th, in the file's order (FedScale registers clients in its order too)."""
    if not isinstance(trace, Mapping):
        raise ValueError(f"{key}: not a FedScale trace (a dict by client id), found a {type(trace).__name__}")
    if len(trace) < count:
        raise ValueError(f"{key}: has {len(trace)} clients, fewer than num_clients={count}; lower num_clients or "
                         "give a larger trace")
    return list(trace.values())[:count]


def load_pickle(path: str | Path, key: str) -> Any:
    """A FedScale trace file (the config's `key`), read without running code (availability.py's unpickler)."""
    from fedray.system.availability import safe_load

    return safe_load(path, key)
