"""Homomorphic encryption of site updates, FLARE's way (nvflare/app_opt/he), over TenSEAL's CKKS.

Pure: numpy and tenseal, no torch, no Ray (import contract), so config checks it, sites and the controller run it.
FLARE's shape: the sites hold a context with the secret key (its client_context.tenseal), the controller one without
(server_context.tenseal); a site encrypts its update weighed by its steps (HEModelEncryptor, weigh_by_local_iter),
the controller adds ciphertexts and keeps the plain weight sum (HEInTimeAccumulateWeightedAggregator), the sites
decrypt the aggregate and divide (HEModelDecryptor).

One change from FLARE, for reproducibility: CKKS's encryption draws fresh randomness that TenSEAL cannot seed, so a
decrypted sum differs from run to run in its last bits. A site therefore encrypts its weighted update on a
fixed-point grid (integers: round(value x weight x 2^fraction_bits)); integer sums below 2^EXACT_BITS decrypt within
0.01 of the integer (measured), so rounding recovers the exact sum, whatever the noise, the order of the additions or
the batching: the same seed gives the same bits. The price is the grid: the average differs from plain FedAvg by at
most cohort x 2^-(fraction_bits+1) / weight sum (<= 2^-(fraction_bits+1) when each site counts its steps).
All layers are packed into one vector, cut into ciphertexts of poly_modulus_degree/2 slots (FLARE: one per layer).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

HE_EXTRA = "pip install 'fedray[he]'"
KEY_HOLDER = "he-keys"  # the job's actor that hands the sites their context (the driver starts it; never the controller)
UPDATE = "fedray_he_update"  # a train result's meta key: the site's encrypted update (its params stay None)
EXACT_BITS = 40  # integer sums below 2^40 decrypt within 0.006 of the integer (8192, [60, 40, 40], 2^40 scale)
ROUNDING_SLACK = 0.25  # a decrypted value farther than this from an integer: the sum left CKKS's exact range


class HEError(ValueError):
    """An update that cannot be encrypted exactly, or an aggregate that did not decrypt to integers."""


def tenseal() -> Any:
    """TenSEAL, imported here (an optional extra), or one line saying how to install it."""
    try:
        import tenseal as ts
    except ImportError:
        raise ImportError(f"secure_aggregation=he needs TenSEAL, which is not installed; {HE_EXTRA}") from None
    return ts


def make_contexts(poly_modulus_degree: int, coeff_mod_bit_sizes: list[int], scale_bits: int) -> tuple[bytes, bytes]:
    """(the sites' context, with the secret key; the controller's, without), as FLARE's HEBuilder provisions them:
    CKKS, symmetric encryption, relinearization keys, global scale 2^scale_bits. Keys come from SEAL's own random
    source: TenSEAL has no seed for them, so each job makes new ones (no ciphertext outlives its job)."""
    ts = tenseal()
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=poly_modulus_degree,
                     coeff_mod_bit_sizes=list(coeff_mod_bit_sizes), encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC)
    ctx.generate_relin_keys()
    ctx.global_scale = 2**scale_bits
    site = ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=True)
    server = ctx.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=True)
    return site, server


_contexts: dict[str, Any] = {}


def context(data: bytes) -> Any:
    """A serialized context, loaded once per process."""
    key = hashlib.sha1(data).hexdigest()
    if key not in _contexts:
        _contexts[key] = tenseal().context_from(data)
    return _contexts[key]


def has_secret_key(data: bytes) -> bool:
    return bool(context(data).has_secret_key())


@dataclass
class Encrypted:
    """What crosses between sites and the controller: CKKS ciphertexts of the sum of `count` sites' updates, each
    on the fixed-point grid and weighed by its weight, with the plain sum of the weights (FLARE sends the steps in
    the clear too) and the variables' names, shapes and dtypes."""

    chunks: list[bytes]
    weight: float
    count: int
    layout: list[tuple[str, tuple[int, ...], str]]
    fraction_bits: int

    @property
    def nbytes(self) -> int:
        return sum(len(chunk) for chunk in self.chunks)

    def digest(self) -> str:
        return hashlib.sha1(self.chunks[0]).hexdigest() if self.chunks else ""


def quantized(params: Mapping[str, np.ndarray], weight: float, fraction_bits: int, cohort: int) -> np.ndarray:
    """The update as integers (float64): round(value x weight x 2^fraction_bits), each at most 2^EXACT_BITS / cohort
    so that the cohort's sum stays where CKKS decrypts exactly."""
    flat = np.concatenate([np.asarray(value, dtype=np.float64).ravel() for value in params.values()])
    q = np.rint(flat * (weight * 2.0**fraction_bits))
    limit = 2.0**EXACT_BITS / max(1, cohort)
    if q.size and np.abs(q).max() > limit:
        raise HEError(f"an update times its weight ({np.abs(flat).max() * weight:.4g}) passes 2^{EXACT_BITS}/"
                      f"{cohort} sites on a 2^-{fraction_bits} grid; lower secure_aggregation.fraction_bits")
    return q


def encrypt(params: Mapping[str, np.ndarray], weight: float, ctx_data: bytes, fraction_bits: int,
            cohort: int) -> Encrypted:
    """A site's update weighed by `weight` (FLARE's HEModelEncryptor), on the fixed-point grid, encrypted."""
    ts, ctx = tenseal(), context(ctx_data)
    q = quantized(params, weight, fraction_bits, cohort)
    slots = slots_of(ctx)
    chunks = [ts.ckks_vector(ctx, q[start:start + slots]).serialize() for start in range(0, len(q), slots)]
    layout = [(name, tuple(np.shape(value)), str(np.asarray(value).dtype)) for name, value in params.items()]
    return Encrypted(chunks, float(weight), 1, layout, fraction_bits)


def slots_of(ctx: Any) -> int:
    """CKKS's slots per ciphertext: poly_modulus_degree / 2."""
    return int(ctx.seal_context().data.first_context_data().parms().poly_modulus_degree()) // 2


class CipherSum:
    """Ciphertexts added as they arrive, with the public context (no secret key): the controller's fold
    (FLARE's HEInTimeAccumulateWeightedAggregator) and a site batch's partial sum."""

    def __init__(self, ctx_data: bytes) -> None:
        self.ctx = context(ctx_data)
        self.vectors: list[Any] | None = None
        self.weight, self.count = 0.0, 0
        self.layout: list | None = None
        self.fraction_bits = 0
        self.seconds = 0.0  # spent adding (deserializing included)

    def add(self, update: Encrypted) -> None:
        started = time.perf_counter()
        ts = tenseal()
        vectors = [ts.ckks_vector_from(self.ctx, chunk) for chunk in update.chunks]
        if self.vectors is None:
            self.vectors, self.layout, self.fraction_bits = vectors, update.layout, update.fraction_bits
        else:
            for total, vector in zip(self.vectors, vectors):
                total += vector  # in place
        self.weight += update.weight
        self.count += update.count
        self.seconds += time.perf_counter() - started

    def result(self) -> Encrypted | None:
        if self.vectors is None:
            return None
        return Encrypted([vector.serialize() for vector in self.vectors], self.weight, self.count, self.layout,
                         self.fraction_bits)


def decrypt(update: Encrypted, ctx_data: bytes) -> dict[str, np.ndarray]:
    """The weighted average the ciphertexts hold (FLARE's HEModelDecryptor, then the division by the weight
    sum), in each variable's shape and dtype: integers recovered exactly, then / 2^fraction_bits / weight."""
    ts, ctx = tenseal(), context(ctx_data)
    values = np.concatenate([np.asarray(ts.ckks_vector_from(ctx, chunk).decrypt(), dtype=np.float64)
                             for chunk in update.chunks]) if update.chunks else np.zeros(0)
    integers = np.rint(values)
    if values.size and np.abs(values - integers).max() > ROUNDING_SLACK:
        raise HEError(f"the encrypted sum did not decrypt to integers (off by up to {np.abs(values - integers).max():.3g}"
                      "): it left CKKS's exact range; lower secure_aggregation.fraction_bits")
    average = integers * 2.0**-update.fraction_bits / update.weight
    params, start = {}, 0
    for name, shape, dtype in update.layout:
        size = int(np.prod(shape, dtype=np.int64))
        value = average[start:start + size].reshape(shape)
        if np.issubdtype(np.dtype(dtype), np.integer) or np.dtype(dtype) == np.bool_:
            value = np.rint(value)
        params[name] = value.astype(dtype)
        start += size
    return params


def problems(poly_modulus_degree: int, coeff_mod_bit_sizes: list[int], scale_bits: int, fraction_bits: int) -> list[str]:
    """Bad HE keys, each as 'key: rule' (config.validate raises the first); needs TenSEAL (checked before)."""
    found = []
    if poly_modulus_degree not in (4096, 8192, 16384, 32768):
        found.append(f"secure_aggregation.poly_modulus_degree={poly_modulus_degree}: must be 4096, 8192, 16384 or "
                     "32768 (CKKS's ring sizes; FLARE's default is 8192)")
    elif len(coeff_mod_bit_sizes) < 2 or any(not 20 <= bits <= 60 for bits in coeff_mod_bit_sizes):
        found.append(f"secure_aggregation.coeff_mod_bit_sizes={list(coeff_mod_bit_sizes)}: must list at least 2 "
                     "primes of 20 to 60 bits each (FLARE's default is [60, 40, 40])")
    elif sum(coeff_mod_bit_sizes[:-1]) - scale_bits < EXACT_BITS + 2:
        found.append(f"secure_aggregation.scale_bits={scale_bits}: the data primes (all of coeff_mod_bit_sizes but "
                     f"its last) must hold scale_bits + {EXACT_BITS + 2} bits for exact sums below 2^{EXACT_BITS}; "
                     "lower scale_bits or add a prime")
    elif not 20 <= scale_bits <= 60:
        found.append(f"secure_aggregation.scale_bits={scale_bits}: must be in [20, 60] (FLARE's default is 40)")
    elif not 1 <= fraction_bits <= 30:
        found.append(f"secure_aggregation.fraction_bits={fraction_bits}: must be in [1, 30] (the fixed-point grid "
                     "2^-fraction_bits of the encrypted updates)")
    else:
        try:
            make_contexts(poly_modulus_degree, coeff_mod_bit_sizes, scale_bits)
        except ValueError as err:  # SEAL's own check: e.g. too many modulus bits for the ring size
            found.append(f"secure_aggregation.coeff_mod_bit_sizes={list(coeff_mod_bit_sizes)}: TenSEAL refuses "
                         f"them with poly_modulus_degree={poly_modulus_degree} ({err}); FLARE's default is "
                         "8192 with [60, 40, 40]")
    return found
