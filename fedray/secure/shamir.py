"""Shamir secret sharing of 32-byte secrets over the prime field of 2^521 - 1.

Our own few lines instead of pycryptodome's `Shamir` (16-byte secrets, coefficients from the OS): the polynomial's
coefficients come from the caller's seeded bytes, so a simulated round gives the same shares on any worker.
Any `threshold` shares give the secret back; fewer are uniformly distributed, independent of it.
"""

from __future__ import annotations

from typing import Iterable, Sequence

PRIME = 2**521 - 1  # a Mersenne prime above every 32-byte secret
SHARE_BYTES = 66  # a field element


def split(secret: bytes, threshold: int, xs: Sequence[int], randomness: bytes) -> dict[int, bytes]:
    """Shares of `secret` at the points `xs` (distinct, non-zero: fedray uses site numbers), any `threshold` of
    which recover it. `randomness`: at least 66 x (threshold - 1) bytes, the polynomial's other coefficients."""
    if threshold < 1:
        raise ValueError(f"threshold {threshold} must be at least 1")
    if len(set(xs)) != len(xs) or any(x % PRIME == 0 for x in xs):
        raise ValueError("share points must be distinct and non-zero")
    if len(randomness) < SHARE_BYTES * (threshold - 1):
        raise ValueError(f"{SHARE_BYTES * (threshold - 1)} bytes of randomness needed, got {len(randomness)}")
    coefficients = [int.from_bytes(secret, "big")] + [
        int.from_bytes(randomness[k * SHARE_BYTES:(k + 1) * SHARE_BYTES], "big") % PRIME for k in range(threshold - 1)]
    shares = {}
    for x in xs:
        value = 0
        for coefficient in reversed(coefficients):  # Horner
            value = (value * x + coefficient) % PRIME
        shares[x] = value.to_bytes(SHARE_BYTES, "big")
    return shares


def combine(shares: Iterable[tuple[int, bytes]], threshold: int, length: int = 32) -> bytes:
    """The secret from `threshold` of its shares (x, share): Lagrange interpolation at 0. Raises with fewer."""
    points = list(shares)[:threshold]
    if len(points) < threshold:
        raise ValueError(f"{len(points)} shares, {threshold} needed")
    secret = 0
    for i, (xi, yi) in enumerate(points):
        numerator = denominator = 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                numerator = numerator * -xj % PRIME
                denominator = denominator * (xi - xj) % PRIME
        secret = (secret + int.from_bytes(yi, "big") * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret >> (8 * length):
        raise ValueError("the shares do not belong to one secret")
    return secret.to_bytes(length, "big")
