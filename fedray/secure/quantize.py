"""Quantization of a site's update into integers, as Flower's SecAgg+ (flwr/common/secure_aggregation/quantization.py):
each coordinate clipped to [-c, c], scaled onto [0, 2^bits - 1] and rounded stochastically (unbiased), the rounding
drawn from the generator of (seed, round, site).

The bound: a coordinate within [-c, c] comes back within one step, 2c / (2^bits - 1), of its value; so does the mean of
any number of sites' coordinates, which is what the controller gets.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def step(clipping_range: float, bits: int) -> float:
    """The value of one quantization level: the most a dequantized coordinate (or mean) is off by."""
    return 2 * clipping_range / (2**bits - 1)


def quantize(values: np.ndarray, clipping_range: float, bits: int, rng: np.random.Generator,
             dtype: np.dtype = np.uint32) -> np.ndarray:
    """`values` (float) clipped to [-c, c] and stochastically rounded to integers in [0, 2^bits - 1] of `dtype`."""
    scaled = np.clip(np.asarray(values, dtype=np.float64), -clipping_range, clipping_range)
    scaled += clipping_range
    scaled *= (2**bits - 1) / (2 * clipping_range)
    # floor(x + u), u uniform in [0, 1): up with probability x's fraction, so E[q] = x. The clip keeps float
    # rounding inside the range.
    scaled += rng.random(scaled.shape)
    np.floor(scaled, out=scaled)
    return np.clip(scaled, 0, 2**bits - 1, out=scaled).astype(dtype)


def dequantize_sum(total: np.ndarray, count: int, clipping_range: float, bits: int) -> np.ndarray:
    """The float sum of `count` sites' values from the exact integer sum of their quantized values."""
    return np.asarray(total, dtype=np.float64) * step(clipping_range, bits) - count * clipping_range


def flat_update(params: Mapping[str, np.ndarray], global_params: Mapping[str, np.ndarray],
                names: Sequence[str]) -> np.ndarray:
    """A site's update (its model minus the global one) over `names`, as one float64 vector in that order."""
    return np.concatenate([np.subtract(params[name], global_params[name], dtype=np.float64).ravel() for name in names])


def unflatten(vector: np.ndarray, global_params: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
    """`flat_update`'s vector back into variables of the global model's shapes (float64)."""
    out, start = {}, 0
    for name in names:
        shape = np.shape(global_params[name])
        size = int(np.prod(shape))
        out[name] = vector[start:start + size].reshape(shape)
        start += size
    return out
