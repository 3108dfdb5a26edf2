"""FedAvg as a pure function over a stream of updates.

The controller passes a generator that yields each site's update as it arrives,
so aggregation folds results one at a time and never holds N models.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

Params = dict[str, np.ndarray]


def fedavg(updates: Iterable[tuple[Mapping[str, np.ndarray], float] | "CompensatedSum"]) -> Params:
    """Weighted average of `(params, weight)` pairs, e.g. weight = NUM_STEPS_CURRENT_ROUND.

    Sums are kept in float64 with a compensation term (TwoSum), so the result
    does not depend on the order in which sites answer: the same seed gives the
    same global weights whatever Ray's scheduling. Integer variables (counters)
    are averaged and rounded back to their dtype. An update may also be a
    `CompensatedSum` of several sites (a worker's batch), merged as exactly.
    """
    total = CompensatedSum()
    for update in updates:
        if isinstance(update, CompensatedSum):
            total.merge(update)
        else:
            total.add(*update)
    if not total.sums:
        raise ValueError("no updates to aggregate")
    if total.total_weight <= 0:
        raise ValueError("the updates' weights sum to zero")
    return total.result(total.total_weight)


class CompensatedSum:
    """An order-independent running sum of weighted variables: float64 with TwoSum compensation.

    FedAvg's fold, and the fold of any extra result an algorithm sums (SCAFFOLD's control
    variate updates): whichever order sites answer in, the same bits.
    """

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.errors: dict[str, np.ndarray] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self.total_weight = 0.0

    def add(self, params: Mapping[str, np.ndarray], weight: float = 1.0) -> None:
        if weight < 0:
            raise ValueError(f"aggregation weight must be >= 0, got {weight}")
        if self.sums and params.keys() != self.sums.keys():
            raise ValueError(f"update has variables {sorted(params.keys() ^ self.sums.keys())} that others lack")
        for name, value in params.items():
            term = np.asarray(value, dtype=np.float64) * weight
            if name not in self.sums:
                self.sums[name], self.errors[name], self.dtypes[name] = term, np.zeros_like(term), np.asarray(value).dtype
                continue
            self._fold(name, term)
        self.total_weight += weight

    def merge(self, other: "CompensatedSum") -> None:
        """Add another sum (of other sites) as if its terms had been added here, to the same bits:
        the terms are exact in float64, and the pair (sum, error) keeps about twice its precision."""
        if not other.sums:
            return
        if self.sums and other.sums.keys() != self.sums.keys():
            raise ValueError(f"update has variables {sorted(other.sums.keys() ^ self.sums.keys())} that others lack")
        for name, term in other.sums.items():
            if name not in self.sums:
                self.sums[name], self.errors[name] = term.copy(), other.errors[name].copy()
                self.dtypes[name] = other.dtypes[name]
                continue
            self._fold(name, term, other.errors[name])
        self.total_weight += other.total_weight

    def _fold(self, name: str, term: np.ndarray, term_error: np.ndarray | None = None) -> None:
        """sums[name] += term, its rounding error (TwoSum: exact) and the term's own error kept aside."""
        total = self.sums[name] + term
        virtual = total - self.sums[name]
        error = (self.sums[name] - (total - virtual)) + (term - virtual)
        self.errors[name] += error if term_error is None else error + term_error
        self.sums[name] = total

    def result(self, divisor: float = 1.0) -> Params:
        """The sum divided by `divisor`, cast back to each variable's dtype."""
        return {name: _cast((self.sums[name] + self.errors[name]) / divisor, self.dtypes[name]) for name in self.sums}


# Why a site whose update has NaN or Inf is a failure (`non_finite`), wherever that is found.
NON_FINITE = "its weights have NaN or Inf: local training diverged"


def finite(params: Mapping[str, np.ndarray]) -> bool:
    """No NaN or Inf in any floating-point variable: a diverged update is never aggregated."""
    return all(np.isfinite(value).all() for value in params.values() if np.issubdtype(np.asarray(value).dtype, np.inexact))


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
