"""Seeded splits of the training set into per-site shards, each with a validation part."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fedray.data import partitioners

METHODS = ("iid", "dirichlet", "inner_dirichlet", "natural", "shard", "pathological", *partitioners.SIZE_SKEWS)


class Shard(NamedTuple):
    train: np.ndarray  # indices into the training set
    val: np.ndarray


def partition(
    labels: np.ndarray,
    num_sites: int,
    method: str = "iid",
    alpha: float = 0.5,
    min_samples: int = 10,
    val_fraction: float = 0.1,
    seed: int = 0,
    shards_per_site: int = 2,
    classes_per_site: int = 2,
    class_assignment: str = "first-deterministic",
    sizes: str = "equal",
    ids: np.ndarray | None = None,
) -> list[Shard]:
    """Split `labels`' indices over `num_sites` sites, then hold out `val_fraction` of each.

    `ids`: each training sample's natural id (a writer, a speaking role; any hashable values), None for a
    dataset without one; `method=natural` splits by it. The other methods are in fedray/data/partitioners.py.
    A split the data cannot give is a ValueError whose message names the key and the fix."""
    rng = np.random.default_rng(seed)
    if num_sites > len(labels):
        raise ValueError(f"num_clients={num_sites} exceeds the {len(labels)} training samples")
    if method == "iid":
        parts = np.array_split(rng.permutation(len(labels)), num_sites)
    elif method == "dirichlet":
        parts = _dirichlet(labels, num_sites, alpha, min_samples, rng)
    elif method == "inner_dirichlet":
        if sizes == "equal":
            counts = np.array([len(part) for part in np.array_split(np.arange(len(labels)), num_sites)])
        else:
            counts = partitioners.checked_sizes(len(labels), num_sites, sizes, "partition.sizes")
        parts = partitioners.inner_dirichlet(labels, counts, alpha, rng)
    elif method == "natural":
        if ids is None:
            raise ValueError("partition.name=natural: this dataset has no natural id (a writer, a speaking role); "
                             "choose a dataset with one or another partition (iid, dirichlet, shard, pathological)")
        parts = partitioners.natural(ids, num_sites, rng)
    elif method == "shard":
        parts = partitioners.shards(labels, num_sites, shards_per_site, rng)
    elif method == "pathological":
        parts = partitioners.pathological(labels, num_sites, classes_per_site, class_assignment, rng)
    elif method in partitioners.SIZE_SKEWS:
        parts = partitioners.size_skew(len(labels), num_sites, method, rng)
    else:
        raise ValueError(f"partition.name={method}: must be one of {', '.join(METHODS)}")
    return [_hold_out(part, val_fraction, rng) for part in parts]


def _dirichlet(labels, num_sites, alpha, min_samples, rng, max_draws: int = 1000) -> list[np.ndarray]:
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    needed = min(min_samples, len(labels) // num_sites)
    for _ in range(max_draws):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_sites)]
        for members in by_class:
            shares = rng.dirichlet(np.full(num_sites, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for site, chunk in enumerate(np.split(members, cuts)):
                parts[site].append(chunk)
        merged = [rng.permutation(np.concatenate(p)) for p in parts]
        if min(len(p) for p in merged) >= max(needed, 1):
            return merged
    raise ValueError(
        f"partition.alpha={alpha}: no draw in {max_draws} gave every one of {num_sites} sites "
        f"{needed} samples; raise partition.alpha or lower partition.min_samples"
    )


def _hold_out(indices: np.ndarray, val_fraction: float, rng: np.random.Generator) -> Shard:
    indices = rng.permutation(indices)
    num_val = int(round(len(indices) * val_fraction))
    if val_fraction > 0 and len(indices) > 1:
        num_val = min(max(num_val, 1), len(indices) - 1)
    return Shard(train=np.sort(indices[num_val:]), val=np.sort(indices[:num_val]))
