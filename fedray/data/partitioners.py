"""The partitioners researchers compare with, beside IID and Dirichlet: natural id, shards, k classes per site
and size skews, each a pure function from the labels (or ids) and a seeded generator to each site's indices.

Each follows flwr-datasets' partitioner of the same name (flwr_datasets/partitioner/*.py, version 0.6.1; the
function's docstring says which and where fedray differs), written over numpy arrays here rather than used from
flwr-datasets: that package pulls Hugging Face `datasets`, pyarrow and pandas (290 MB installed) into every install
for what is a few lines of numpy on the labels the driver already holds. tests/test_partitioners.py checks the
shared semantics against flwr-datasets itself where it is installed. Where a split is impossible the
ValueError's message is one line naming the key and the fix (the driver makes it a ConfigError).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

CLASS_ASSIGNMENTS = ("first-deterministic", "random", "deterministic")
SIZE_SKEWS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    # flwr-datasets' LinearPartitioner, SquarePartitioner, ExponentialPartitioner: site k (1-based) gets a
    # share f(k) / sum_j f(j). exp is shifted by its largest exponent: the same shares, finite for many sites.
    "linear": lambda k: k,
    "square": np.square,
    "exponential": lambda k: np.exp(k - k[-1]),
}


def natural(ids: np.ndarray, num_sites: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Each site the samples of its natural ids (a writer, a speaking role).

    As many ids as sites: site k holds the k-th id in sorted order (flwr-datasets' NaturalIdPartitioner,
    natural_id_partitioner.py). More ids than sites: the sorted ids, shuffled by the seed, are cut into
    `num_sites` consecutive groups of floor or ceil(ids / sites) ids (np.array_split, as flwr-datasets'
    GroupedNaturalIdPartitioner's allow-bigger mode, on a shuffled list so that neighbouring ids, often alike,
    spread). Fewer ids than sites: no split."""
    unique, inverse = np.unique(sortable_ids(ids), return_inverse=True)
    if len(unique) < num_sites:
        raise ValueError(f"num_clients={num_sites}: the training set has {len(unique)} natural ids, fewer than the "
                         f"sites; lower num_clients to at most {len(unique)} or use another partition")
    order = np.arange(len(unique)) if len(unique) == num_sites else rng.permutation(len(unique))
    groups = np.array_split(order, num_sites)
    site_of_id = np.empty(len(unique), dtype=np.int64)
    for site, group in enumerate(groups):
        site_of_id[group] = site
    return _group_indices(site_of_id[inverse], num_sites)


def shards(labels: np.ndarray, num_sites: int, shards_per_site: int, rng: np.random.Generator) -> list[np.ndarray]:
    """McMahan et al.'s pathological non-IID split: the samples sorted by label, cut into shards of
    N // (num_sites x shards_per_site), `shards_per_site` drawn at random for each site (2 in the paper: 200 shards
    of 300 MNIST digits for 100 clients). flwr-datasets' ShardPartitioner (shard_partitioner.py) with
    `num_shards_per_partition` and its defaults: a stable sort, shard ids permuted by the generator, the
    remainder (fewer than num_sites x shards_per_site samples) left out, each site's indices shuffled."""
    needed = num_sites * shards_per_site
    if needed > len(labels):
        raise ValueError(f"partition.shards_per_site={shards_per_site}: {shards_per_site} x num_clients={num_sites} "
                         f"shards need at least {needed} training samples, there are {len(labels)}; lower "
                         "partition.shards_per_site or num_clients")
    size = len(labels) // needed
    by_label = np.argsort(labels, kind="stable")
    chosen = rng.permutation(len(labels) // size)[:needed]
    parts = [np.concatenate([by_label[s * size:(s + 1) * size] for s in site_shards])
             for site_shards in np.split(chosen, num_sites)]
    return [rng.permutation(part) for part in parts]


def pathological(labels: np.ndarray, num_sites: int, classes_per_site: int, assignment: str,
                 rng: np.random.Generator) -> list[np.ndarray]:
    """k classes per site (Li et al. 2021, "Federated Learning on Non-IID Data Silos"), as flwr-datasets'
    PathologicalPartitioner (pathological_partitioner.py): first each site's classes, then each class's samples
    split evenly (np.array_split, in dataset order) among the sites that have it.

    `assignment`: first-deterministic (the paper's, fedray's default: site k's first class is class k mod C,
    the rest drawn; every class used once there are as many sites as classes), random (flwr-datasets' default:
    k classes drawn per site), deterministic (site k: classes k ... k+k-1 mod C). A class no site drew is left out."""
    classes = np.unique(labels)
    if classes_per_site > len(classes):
        raise ValueError(f"partition.classes_per_site={classes_per_site}: the training set has {len(classes)} "
                         f"classes; choose at most {len(classes)}")
    chosen = _classes_of_sites(classes, num_sites, classes_per_site, assignment, rng)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_sites)]
    for label in classes:
        holders = [site for site in range(num_sites) if label in chosen[site]]
        members = np.flatnonzero(labels == label)
        if len(holders) > len(members):
            raise ValueError(f"partition.classes_per_site={classes_per_site}: class {label} has {len(members)} "
                             f"samples for the {len(holders)} sites that drew it; lower partition.classes_per_site or "
                             "num_clients")
        for site, chunk in zip(holders, np.array_split(members, len(holders)) if holders else ()):
            parts[site].append(chunk)
    return [rng.permutation(np.concatenate(part)) for part in parts]


def _classes_of_sites(classes: np.ndarray, num_sites: int, k: int, assignment: str,
                      rng: np.random.Generator) -> list[list]:
    """flwr-datasets' `_determine_partition_id_to_unique_labels`, draw for draw (the same generator calls)."""
    if assignment == "deterministic":
        return [[classes[(site + i) % len(classes)] for i in range(k)] for site in range(num_sites)]
    if assignment == "random":
        return [rng.choice(classes, size=k, replace=False).tolist() for _ in range(num_sites)]
    chosen = []
    for site in range(num_sites):
        mine = [classes[site % len(classes)]]
        while len(mine) < k:
            label = rng.choice(classes, size=1)[0]
            if label not in mine:
                mine.append(label)
        chosen.append(mine)
    return chosen


def size_skew(num_samples: int, num_sites: int, skew: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Site k (1-based) gets a share f(k) / sum_j f(j) of the samples, f the skew (linear k, square k^2,
    exponential e^k): flwr-datasets' IdToSizeFncPartitioner (id_to_size_fnc_partitioner.py): each size floored,
    the remainder to the last site. flwr-datasets gives consecutive rows; fedray a seeded permutation, so a
    file stored by label does not become a label split too."""
    sizes = checked_sizes(num_samples, num_sites, skew, "partition.name")
    return np.split(rng.permutation(num_samples), np.cumsum(sizes)[:-1])


def checked_sizes(num_samples: int, num_sites: int, skew: str, key: str) -> np.ndarray:
    """`size_skew_sizes`, or the line for a skew that leaves site-1 empty (`key`: the key that chose `skew`)."""
    sizes = size_skew_sizes(num_samples, num_sites, skew)
    if sizes.min() < 1:
        raise ValueError(f"{key}={skew}: num_clients={num_sites} sites leave site-1 {int(sizes[0])} of the "
                         f"{num_samples} training samples; lower num_clients or choose a milder skew "
                         "(linear < square < exponential)")
    return sizes


def size_skew_sizes(num_samples: int, num_sites: int, skew: str) -> np.ndarray:
    """The sites' sizes under `skew`, before any sample is drawn (flwr-datasets' `_determine_partition_id_to_size`)."""
    units = SIZE_SKEWS[skew](np.linspace(start=1, stop=num_sites, num=num_sites))
    sizes = np.array(units / units.sum() * num_samples, dtype=np.int64)
    sizes[-1] += num_samples - sizes.sum()
    return sizes


def inner_dirichlet(labels: np.ndarray, sizes: np.ndarray, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Site k gets exactly sizes[k] samples, its classes drawn from its own prior p_k ~ Dirichlet(alpha), a class
    that runs out removed from every prior (flwr-datasets' InnerDirichletPartitioner, inner_dirichlet_partitioner.py:
    quantity and label skew at once). flwr-datasets draws sample by sample (a random unfilled site, a class from
    its prior: 4.3 s for 50,000 samples, over a minute for FEMNIST's 800,000). fedray draws each site's unfilled
    quota at once from its prior, serves a class asked for more often than it has samples left to a uniformly random
    subset of the asks (as a random order of single draws would), and draws the rest again without that class: at
    most one round more than there are classes. Not draw for draw flwr-datasets' split: the same sizes, and the same
    label skew to within tests/test_partitioners.py's tolerance."""
    classes, codes = np.unique(labels, return_inverse=True)
    pools = [rng.permutation(np.flatnonzero(codes == c)) for c in range(len(classes))]
    left_in_class = np.array([len(pool) for pool in pools])
    priors = rng.dirichlet(np.full(len(classes), alpha), size=len(sizes))
    quota, got = np.array(sizes, dtype=np.int64), np.zeros((len(sizes), len(classes)), dtype=np.int64)
    while quota.sum() > 0:
        available = left_in_class > 0
        weights = priors * available
        totals = weights.sum(axis=1, keepdims=True)
        # A prior whose mass was all on classes now gone (a tiny alpha underflows to exact zeros): those left, evenly.
        weights = np.where(totals > 0, weights / np.where(totals > 0, totals, 1), available / available.sum())
        asks = rng.multinomial(quota, weights)
        for c in np.flatnonzero(asks.sum(axis=0) > left_in_class):
            askers = np.repeat(np.arange(len(sizes)), asks[:, c])
            served = rng.choice(len(askers), size=left_in_class[c], replace=False)
            asks[:, c] = np.bincount(askers[served], minlength=len(sizes))
        got += asks
        quota -= asks.sum(axis=1)
        left_in_class -= asks.sum(axis=0)
    cuts = np.cumsum(got, axis=0)
    return [np.concatenate([pools[c][cuts[k, c] - got[k, c]:cuts[k, c]] for c in range(len(classes))])
            for k in range(len(sizes))]


def sortable_ids(ids: np.ndarray) -> np.ndarray:
    """Ids as an array np.unique can sort: numbers as they are, anything else (strings, mixed) as strings."""
    ids = np.asarray(ids)
    return ids if ids.dtype.kind in "iufUSb" else ids.astype(str)


def _group_indices(site_of_sample: np.ndarray, num_sites: int) -> list[np.ndarray]:
    order = np.argsort(site_of_sample, kind="stable")
    return np.split(order, np.cumsum(np.bincount(site_of_sample, minlength=num_sites))[:-1])
