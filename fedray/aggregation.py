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
    total = fold(updates)
    if not total.sums:
        raise ValueError("no updates to aggregate")
    if total.total_weight <= 0:
        raise ValueError("the updates' weights sum to zero")
    return total.result(total.total_weight)


def fold(updates: Iterable[tuple[Mapping[str, np.ndarray], float] | "CompensatedSum"]) -> "CompensatedSum":
    """The compensated sum of `(params, weight)` pairs and of other sums (a worker's batch), as they arrive."""
    total = CompensatedSum()
    for update in updates:
        if isinstance(update, CompensatedSum):
            total.merge(update)
        else:
            total.add(*update)
    return total


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
        # Scratch arrays by variable, reused by every fold: a batch folds 25 sites in a row, and the
        # temporaries of each fold (6 arrays the model's size) cost more than the arithmetic (2.7x).
        self._free: dict[str, list[np.ndarray]] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_free": {}}  # scratch never travels with the sum

    def add(self, params: Mapping[str, np.ndarray], weight: float = 1.0) -> None:
        if weight < 0:
            raise ValueError(f"aggregation weight must be >= 0, got {weight}")
        if self.sums and params.keys() != self.sums.keys():
            raise ValueError(f"update has variables {sorted(params.keys() ^ self.sums.keys())} that others lack")
        for name, value in params.items():
            value = np.asarray(value)
            if name not in self.sums:
                self.sums[name] = np.multiply(value, weight, dtype=np.float64, out=np.empty(value.shape))
                self.errors[name], self.dtypes[name] = np.zeros(value.shape), value.dtype
                continue
            # The term is exact in float64 times one rounding, as np.asarray(value, np.float64) * weight.
            self._fold(name, np.multiply(value, weight, dtype=np.float64, out=self._scratch(name)))
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
            scratch = self._scratch(name)
            np.copyto(scratch, term)
            self._fold(name, scratch, other.errors[name])
        self.total_weight += other.total_weight

    def _fold(self, name: str, term: np.ndarray, term_error: np.ndarray | None = None) -> None:
        """sums[name] += term, its rounding error (TwoSum: exact) and the term's own error kept aside:
        error = (sums - (total - virtual)) + (term - virtual), in place. `term` is scratch: overwritten."""
        sums = self.sums[name]
        total, virtual = self._scratch(name), self._scratch(name)
        np.add(sums, term, out=total)
        np.subtract(total, sums, out=virtual)
        np.subtract(term, virtual, out=term)
        np.subtract(total, virtual, out=virtual)
        np.subtract(sums, virtual, out=virtual)
        np.add(virtual, term, out=virtual)
        if term_error is not None:
            np.add(virtual, term_error, out=virtual)
        self.errors[name] += virtual
        self.sums[name] = total
        self._free[name].extend((sums, virtual, term))

    def _scratch(self, name: str) -> np.ndarray:
        free = self._free.setdefault(name, [])
        return free.pop() if free else np.empty_like(self.sums[name])

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
