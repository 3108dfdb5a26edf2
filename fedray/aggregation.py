"""FedAvg as a pure function over a stream of updates.

The controller passes a generator that yields each site's update as it arrives,
so aggregation folds results one at a time and never holds N models.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

Params = dict[str, np.ndarray]


def fedavg(updates: Iterable[tuple[Mapping[str, np.ndarray], float]]) -> Params:
    """Weighted average of `(params, weight)` pairs, e.g. weight = NUM_STEPS_CURRENT_ROUND.

    Sums are kept in float64 with a compensation term (TwoSum), so the result
    does not depend on the order in which sites answer: the same seed gives the
    same global weights whatever Ray's scheduling. Integer variables (counters)
    are averaged and rounded back to their dtype.
    """
    sums: dict[str, np.ndarray] = {}
    errors: dict[str, np.ndarray] = {}
    dtypes: dict[str, np.dtype] = {}
    total_weight = 0.0
    for params, weight in updates:
        if weight < 0:
            raise ValueError(f"aggregation weight must be >= 0, got {weight}")
        if sums and params.keys() != sums.keys():
            raise ValueError(
                f"update has variables {sorted(params.keys() ^ sums.keys())} that others lack"
            )
        for name, value in params.items():
            term = np.asarray(value, dtype=np.float64) * weight
            if name not in sums:
                sums[name], errors[name], dtypes[name] = term, np.zeros_like(term), np.asarray(value).dtype
                continue
            total = sums[name] + term
            # TwoSum: the exact rounding error of this addition, kept aside.
            virtual = total - sums[name]
            errors[name] += (sums[name] - (total - virtual)) + (term - virtual)
            sums[name] = total
        total_weight += weight
    if not sums:
        raise ValueError("no updates to aggregate")
    if total_weight <= 0:
        raise ValueError("the updates' weights sum to zero")
    return {name: _cast((sums[name] + errors[name]) / total_weight, dtypes[name]) for name in sums}


def _cast(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        value = np.rint(value)
    return value.astype(dtype)


def pool_metrics(*parts: Mapping[str, float]) -> dict[str, float]:
    """Accuracy and mean loss from evaluation sums {"correct", "loss_sum", "count"} of one or more parts."""
    count = sum(p["count"] for p in parts)
    if count == 0:
        return {"accuracy": float("nan"), "loss": float("nan")}
    return {"accuracy": sum(p["correct"] for p in parts) / count, "loss": sum(p["loss_sum"] for p in parts) / count}
