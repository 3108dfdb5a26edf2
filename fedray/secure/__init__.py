"""Secure aggregation (`secure_aggregation=secagg_plus|he`, README "Secure aggregation"): SecAgg+ (Bell et al. 2020)
as pure functions over bytes and numpy arrays, no torch, no Ray.

`keys.py`: X25519 key pairs, their agreed secrets (HKDF), AES-GCM for the encrypted shares. `shamir.py`: Shamir
secret sharing over a prime field. `quantize.py`: clipping and stochastic rounding into [0, 2^bits), and back.
`masking.py`: the k-regular neighbour graph and the masks (a PRG seeded by an agreed secret, or a site's own seed).
`site.py`: a site's steps (advertise keys, share keys, mask its update, answer the unmasking); `server.py`: the
controller's (route the shares, ask the survivors, remove the masks), which never holds a site's plain update.
`he.py` (`secure_aggregation=he`): FLARE's homomorphic encryption with TenSEAL's CKKS (encrypt, add, decrypt).

In simulation every key comes from a generator seeded by (seed, round, site, purpose): the same bits on any worker,
in any batch, after any retry. A deployment's keys come from the operating system's randomness.
"""

from __future__ import annotations

from typing import Any, Mapping

NONE, SECAGG_PLUS = "none", "secagg_plus"
BEFORE_MASKING, AFTER_MASKING = "before_masking", "after_masking"  # secure_aggregation.dropout_at
SECAGG = "fedray_secagg"  # in the round's message: the neighbours' public keys each site masks with
MASKED = "fedray_secagg_masked"  # in a site's result meta: its masked, quantized update (uint, mod 2^modulus_bits)
DROPPED_OUT = "fedray_secagg_dropped"  # in a site's result meta: why it sent no masked vector (simulated dropout)
SECONDS = "secagg_masking_seconds"  # in a site's result metrics: its quantizing and masking
EXTRA = "pip install 'fedray[secagg]'"  # what secagg_plus needs installed


def secure(job: Mapping[str, Any]) -> bool:
    """Whether the job's sites send masked vectors instead of their models."""
    return (job.get("secure_aggregation") or {}).get("mode", NONE) == SECAGG_PLUS
