"""DP's mechanisms as pure functions over numpy arrays: clip a site's update, noise the server's sum and
divide it by the expected cohort, move an adaptive clip norm, noise a site's own release (local DP).

A site's *update* is its model minus the global model over the variables DP covers (`private_names`:
the floating-point ones not in `exclude_vars`), taken as one vector. Noise comes from numpy generators
seeded by (seed, round[, site], purpose), never by timing or arrival order, so a run's bits do not
depend on batching, workers, retries or a resume.
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from fedray.aggregation import CompensatedSum, Params

# Each random draw's purpose, the last word of its generator's seed: the draws never share a stream.
UPDATE_NOISE, COUNT_NOISE, LOCAL_NOISE = 1, 2, 3


def private_names(params: Mapping[str, np.ndarray], exclude_vars: Optional[str] = None) -> list[str]:
    """The variables DP covers: the floating-point ones that reach the global model (not `exclude_vars`).
    Integer counters (BatchNorm's num_batches_tracked) count steps, not data, and are averaged as FedAvg does."""
    excluded = re.compile(exclude_vars) if exclude_vars else None
    return [name for name, value in params.items()
            if np.issubdtype(np.asarray(value).dtype, np.floating) and not (excluded and excluded.search(name))]


def update_norm(params: Mapping[str, np.ndarray], global_params: Mapping[str, np.ndarray], names: Sequence[str]) -> float:
    """The L2 norm of the update (params - global) over `names`, as one vector, in float64."""
    return _norm(_differences(params, global_params, names))


def clip_update(params: Mapping[str, np.ndarray], global_params: Mapping[str, np.ndarray], clip: float,
                names: Sequence[str]) -> tuple[Params, float]:
    """`params` with the update scaled to L2 norm at most `clip`, and the update's norm before clipping.

    An update within the bound comes back as the very same arrays, so clip=inf changes no bit."""
    differences = _differences(params, global_params, names)
    norm = _norm(differences)
    if norm <= clip:
        return dict(params), norm
    scale = clip / norm
    clipped = dict(params)
    for name, difference in differences.items():
        moved = np.multiply(difference, scale, out=difference)
        moved += global_params[name]
        clipped[name] = moved.astype(np.asarray(params[name]).dtype)
    return clipped, norm


def _differences(params: Mapping[str, np.ndarray], global_params: Mapping[str, np.ndarray],
                 names: Sequence[str]) -> dict[str, np.ndarray]:
    return {name: np.subtract(params[name], global_params[name], dtype=np.float64) for name in names}


def _norm(differences: Mapping[str, np.ndarray]) -> float:
    # Not np.dot: BLAS's threads, in every site process at once, made a 62k-variable norm cost 12 ms.
    return math.sqrt(sum(float(np.square(difference).sum()) for difference in differences.values()))


def noise_generator(seed: int, current_round: int, purpose: int, site_number: int = 0) -> np.random.Generator:
    """The generator of one round's draw for one purpose (and one site, for local DP)."""
    return np.random.default_rng([seed, current_round, site_number, purpose])


def noisy_mean(total: CompensatedSum, global_params: Mapping[str, np.ndarray], names: Sequence[str],
               expected_cohort: float, noise_std: float, rng: np.random.Generator) -> Params:
    """DP-FedAvg's new global model from the sum of the round's clipped models, each with weight 1.

    global + (sum of updates + noise) / expected_cohort: the fixed-denominator estimator, whose
    sensitivity to one site is clip / expected_cohort whatever the others sent (a mean over the sites that
    answered would divide by a number that itself depends on who took part). With models summed, not
    updates: (sum of models + (expected - answered) * global + noise) / expected, which is the models' plain
    mean when every expected site answered and the noise is zero (clip=inf, noise_multiplier=0: FedAvg with
    uniform weights, to the bit). Variables outside `names` (integer counters) take the answered sites' mean.
    """
    answered = total.total_weight  # each site's weight is 1 under DP
    privatized = set(names)
    mean: Params = {}
    for name in names:
        value = total.sums[name] + total.errors[name] if name in total.sums else np.zeros(np.shape(global_params[name]))
        if expected_cohort != answered:
            value = value + (expected_cohort - answered) * np.asarray(global_params[name], dtype=np.float64)
        if noise_std > 0:
            value = value + rng.standard_normal(value.shape) * noise_std
        mean[name] = (value / expected_cohort).astype(np.asarray(global_params[name]).dtype)
    if answered > 0:
        rest = total.result(answered)
        mean.update({name: value for name, value in rest.items() if name not in privatized})
    return mean


def adaptive_noise_multiplier(noise_multiplier: float, count_noise: float) -> float:
    """The noise multiplier of the updates when the count of unclipped updates gets noise of std
    `count_noise` too: the two releases together are one Gaussian mechanism of `noise_multiplier`
    (Andrew et al. 2021, section 3.1; TensorFlow Federated's adaptive_clip_noise_params). Each site's
    count term is 1/2 - [unclipped] in {-1/2, 1/2}, sensitivity 1/2, so the count's multiplier is 2 count_noise."""
    if noise_multiplier == 0:
        return 0.0
    if noise_multiplier >= 2 * count_noise:
        raise ValueError(f"privacy.count_noise={count_noise:g} is too small for noise_multiplier={noise_multiplier:g}: "
                         "it must be more than noise_multiplier/2")
    return (noise_multiplier ** -2 - (2 * count_noise) ** -2) ** -0.5


def next_clip(clip: float, unclipped: Iterable[bool], expected_cohort: float, target_quantile: float, clip_lr: float,
              count_noise: float, rng: np.random.Generator) -> tuple[float, float]:
    """Andrew et al.'s geometric step: the clip norm after a round, and the noisy fraction of unclipped
    updates it moved by. The fraction is (sum of ([unclipped] - 1/2) + N(0, count_noise^2)) / expected + 1/2,
    kept in [0, 1]; the clip norm is multiplied by exp(-clip_lr (fraction - target_quantile)): it grows
    while fewer than the target quantile of the updates fit in it, and shrinks while more do."""
    centered = sum(float(bit) - 0.5 for bit in unclipped)
    noise = rng.standard_normal() * count_noise if count_noise > 0 else 0.0
    fraction = min(1.0, max(0.0, (centered + noise) / expected_cohort + 0.5))
    return clip * math.exp(-clip_lr * (fraction - target_quantile)), fraction


def local_release(params: Mapping[str, np.ndarray], global_params: Mapping[str, np.ndarray], clip: float,
                  noise_std: float, names: Sequence[str], rng: np.random.Generator) -> tuple[Params, float]:
    """What leaves a site under local DP: its update clipped to `clip`, plus N(0, noise_std^2) per
    coordinate, as a model (global + noisy update); and the update's norm before clipping."""
    clipped, norm = clip_update(params, global_params, clip, names)
    released = dict(clipped)
    for name in names:
        noisy = np.asarray(clipped[name], dtype=np.float64) + rng.standard_normal(np.shape(clipped[name])) * noise_std
        released[name] = noisy.astype(np.asarray(params[name]).dtype)
    return released, norm
