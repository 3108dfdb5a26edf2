"""A site's steps of SecAgg+, each a pure function of the job's seed, the round and the site's number: the site keeps
no state between them (any worker may run any step), as every secret is drawn again from its seeded generator.

0. `advertise`: its two public keys (c: for encrypting shares, s: for the pairwise masks).
1. `share_keys`: its self-mask seed b and its private s key, Shamir-shared with threshold t among its neighbours (each
   share encrypted for its neighbour with the key they agreed), for the controller to route.
2. `masked_input`: its update quantized, plus its self mask and its pairwise masks with the neighbours that shared.
3. `unmask_answer`: for each neighbour the controller asks about, the share of b (the neighbour sent its vector) or
   of the s key (it did not): never both of one site, which would unmask it.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from fedray.secure import AFTER_MASKING, keys, masking, shamir
from fedray.secure.quantize import quantize

ADVERTISE, SHARE, UNMASK = "advertise", "share", "unmask"  # the key stages a site task answers
# Each draw's purpose, the last word of its generator's seed: no two share a stream.
C_KEY, S_KEY, SELF_SEED, B_SHARES, S_SHARES, NONCE, ROUNDING, DROPOUT = range(1, 9)


class Settings(NamedTuple):
    """The secure_aggregation group's keys a site needs, and the job's seed."""

    seed: int
    clipping_range: float
    quantization_bits: int
    modulus_bits: int
    dropout: float
    dropout_at: str

    @classmethod
    def of(cls, job: Mapping[str, Any]) -> "Settings":
        group = job["secure_aggregation"]
        return cls(job["seed"], float(group["clipping_range"]), group["quantization_bits"], group["modulus_bits"],
                   group["dropout"], group["dropout_at"])


def drops(settings: Settings, current_round: int, site: int, stage: str) -> bool:
    """Whether `site` drops out of this round at `stage` (BEFORE_MASKING, AFTER_MASKING): its seeded draw."""
    if settings.dropout <= 0 or settings.dropout_at != stage:
        return False
    return bool(np.random.default_rng([settings.seed, current_round, site, DROPOUT]).random() < settings.dropout)


def advertise(seed: int, current_round: int, site: int) -> tuple[bytes, bytes]:
    """Stage 0: the site's public keys (c, s)."""
    return (keys.public_key(keys.private_key(seed, current_round, site, C_KEY)),
            keys.public_key(keys.private_key(seed, current_round, site, S_KEY)))


def _shares(seed: int, current_round: int, site: int, threshold: int, xs: Sequence[int]) -> tuple[dict, dict]:
    """The site's shares of b and of its private s key at the points `xs` (its neighbours' numbers)."""
    randomness = shamir.SHARE_BYTES * max(threshold - 1, 0)
    self_seed = keys.seeded_bytes(32, seed, current_round, site, SELF_SEED)
    return (shamir.split(self_seed, threshold, xs, keys.seeded_bytes(randomness, seed, current_round, site, B_SHARES)),
            shamir.split(keys.private_key(seed, current_round, site, S_KEY), threshold, xs,
                         keys.seeded_bytes(randomness, seed, current_round, site, S_SHARES)))


def share_keys(seed: int, current_round: int, site: int, neighbour_keys: Mapping[int, tuple[bytes, bytes]],
               threshold: int) -> dict[int, bytes]:
    """Stage 1: for each other neighbour j (every neighbour's public keys, the site's own included), its shares of
    b and of the s key, encrypted under the secret agreed with j's c key."""
    b_shares, s_shares = _shares(seed, current_round, site, threshold, sorted(neighbour_keys))
    agreed = keys.agreements(keys.private_key(seed, current_round, site, C_KEY),
                             {peer: c_public for peer, (c_public, _) in sorted(neighbour_keys.items()) if peer != site})
    return {peer: keys.encrypt(key, b_shares[peer] + s_shares[peer], site, peer,
                               keys.seeded_bytes(keys.NONCE_BYTES, seed, current_round, site, peer, NONCE))
            for peer, key in agreed.items()}


def masked_input(settings: Settings, current_round: int, site: int, update: np.ndarray,
                 s_publics: Mapping[int, bytes]) -> np.ndarray:
    """Stage 2: the update (a flat float vector) quantized, plus the self mask and the pairwise masks with each
    neighbour in `s_publics` (those that shared their keys), modulo 2^modulus_bits."""
    rng = np.random.default_rng([settings.seed, current_round, site, ROUNDING])
    dtype = masking.carrier(settings.modulus_bits)
    quantized = quantize(update, settings.clipping_range, settings.quantization_bits, rng, dtype)
    pair_seeds = keys.agreements(keys.private_key(settings.seed, current_round, site, S_KEY),
                                 {peer: public for peer, public in s_publics.items() if peer != site})
    return masking.masked(quantized, keys.seeded_bytes(32, settings.seed, current_round, site, SELF_SEED), pair_seeds,
                          site, settings.modulus_bits)


def unmask_answer(seed: int, current_round: int, site: int, inbox: Mapping[int, bytes],
                  c_publics: Mapping[int, bytes], survivors: Sequence[int], dropped: Sequence[int],
                  threshold: int) -> dict[int, bytes]:
    """Stage 3: the share of b for each neighbour in `survivors`, of the s key for each in `dropped`, from the
    encrypted shares `inbox` (sender -> ciphertext, routed by the controller) and, for the site itself, its own."""
    if set(survivors) & set(dropped):
        raise ValueError(f"site-{site}: asked for both shares of {sorted(set(survivors) & set(dropped))}; refused")
    agreed = keys.agreements(keys.private_key(seed, current_round, site, C_KEY),
                             {peer: c_publics[peer] for peer in [*survivors, *dropped] if peer != site})
    answer = {}
    for peer in [*survivors, *dropped]:
        if peer == site:
            b_shares, s_shares = _shares(seed, current_round, site, threshold, [site])
            pair = b_shares[site] + s_shares[site]
        else:
            pair = keys.decrypt(agreed[peer], inbox[peer], peer, site)
        answer[peer] = pair[:shamir.SHARE_BYTES] if peer in survivors else pair[shamir.SHARE_BYTES:]
    return answer



def answer(stage: str, settings: Settings, current_round: int, site: int, request: Any) -> Any:
    """A site's answer to one of the controller's key stages (ADVERTISE, SHARE, UNMASK): what a site task runs for
    each of its sites. None: the site dropped out (its seeded draw, secure_aggregation.dropout_at=after_masking)."""
    if stage == ADVERTISE:
        return advertise(settings.seed, current_round, site)
    if stage == SHARE:
        return share_keys(settings.seed, current_round, site, request["keys"], request["threshold"])
    if drops(settings, current_round, site, AFTER_MASKING):
        return None
    return unmask_answer(settings.seed, current_round, site, **request)
