"""SecAgg+'s masks: the neighbour graph, a pseudo-random generator, and adding or removing the masks modulo 2^bits.

A site adds its self mask PRG(b) and, for each neighbour j, +PRG(s_ij) if its number is below j's, else -PRG(s_ij)
(s_ij: the secret i and j agreed): summed over the sites of a round, the pairwise masks cancel and the self masks are
what the controller removes with the seeds it reconstructs. Vectors are unsigned integers: uint32 for a modulus up to
2^32, else uint64; their wrap-around is arithmetic modulo 2^32 (2^64), of which 2^bits is a divisor.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np


def carrier(modulus_bits: int) -> np.dtype:
    """The unsigned dtype that holds a vector modulo 2^modulus_bits."""
    return np.dtype(np.uint32 if modulus_bits <= 32 else np.uint64)


def reduce(vector: np.ndarray, modulus_bits: int) -> np.ndarray:
    """`vector` modulo 2^modulus_bits, in place."""
    if modulus_bits not in (32, 64):
        vector &= vector.dtype.type(2**modulus_bits - 1)
    return vector


def prg(seed: bytes, size: int, modulus_bits: int) -> np.ndarray:
    """`size` uniform integers modulo 2^modulus_bits from a 32-byte seed (numpy's PCG64 on the seed's integer)."""
    dtype = carrier(modulus_bits)
    words = -(-size * dtype.itemsize // 8)  # 64-bit draws: two uint32 entries each
    raw = np.random.PCG64(int.from_bytes(seed, "big")).random_raw(words)
    return reduce(raw.view(dtype)[:size], modulus_bits)


def share_count(cohort: int, num_shares: int | None) -> int:
    """k, the sites in a site's neighbourhood (itself included, so odd as in Flower): `num_shares`, or by default
    Bell et al.'s O(log n), 2 ceil(log2 n) + 1; all the cohort's sites when that is not fewer."""
    wanted = num_shares if num_shares is not None else 2 * math.ceil(math.log2(max(cohort, 2))) + 1
    if wanted >= cohort:
        return cohort
    return wanted + 1 if wanted % 2 == 0 else wanted


def threshold_count(threshold: float | int, shares: int) -> int:
    """t, the shares that recover a site's secret: a count, or a fraction of the k shares (rounded up)."""
    if isinstance(threshold, float) and threshold <= 1:
        return max(1, min(shares, math.ceil(threshold * shares)))
    return int(threshold)


def neighbours(sites: Sequence[int], shares: int, seed: int, current_round: int) -> dict[int, list[int]]:
    """The k-regular graph of Bell et al.'s SecAgg+ (Flower's ring): the cohort in an order seeded by (seed, round),
    each site with the k // 2 sites on either side of it, itself included. All sites when k is the cohort."""
    order = [sites[i] for i in np.random.default_rng([seed, current_round, 0x5ECA66]).permutation(len(sites))]
    if shares >= len(sites):
        return {site: sorted(sites) for site in sites}
    half = shares // 2
    return {site: sorted({order[(index + offset) % len(order)] for offset in range(-half, half + 1)})
            for index, site in enumerate(order)}


def masked(quantized: np.ndarray, self_seed: bytes, pair_seeds: Mapping[int, bytes], me: int,
           modulus_bits: int) -> np.ndarray:
    """A site's quantized vector plus its self mask and its signed pairwise masks, modulo 2^modulus_bits."""
    vector = quantized.astype(carrier(modulus_bits), copy=True)
    vector += prg(self_seed, vector.size, modulus_bits)
    for peer, seed in pair_seeds.items():
        if peer < me:
            vector -= prg(seed, vector.size, modulus_bits)
        else:
            vector += prg(seed, vector.size, modulus_bits)
    return reduce(vector, modulus_bits)


def unmasked(total: np.ndarray, self_seeds: Iterable[bytes], dropped_pairs: Iterable[tuple[int, int, bytes]],
             modulus_bits: int) -> np.ndarray:
    """The survivors' sum of masked vectors without their self masks, and without the pairwise masks they share with
    dropped sites: (survivor, dropped, seed) for each such pair, the survivor's sign as `masked` chose it."""
    vector = total.astype(carrier(modulus_bits), copy=True)
    for seed in self_seeds:
        vector -= prg(seed, vector.size, modulus_bits)
    for survivor, dropped, seed in dropped_pairs:
        if dropped < survivor:
            vector += prg(seed, vector.size, modulus_bits)
        else:
            vector -= prg(seed, vector.size, modulus_bits)
    return reduce(vector, modulus_bits)


def modular_sum(vectors: Iterable[np.ndarray], modulus_bits: int) -> np.ndarray | None:
    """The sum of vectors modulo 2^modulus_bits (None for none): what the controller (or a batch) adds up."""
    total = None
    for vector in vectors:
        total = vector.astype(carrier(modulus_bits), copy=True) if total is None else total + vector
    return None if total is None else reduce(total, modulus_bits)
