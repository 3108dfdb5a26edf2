"""The privacy ledger: epsilon from the releases that actually happened, with dp-accounting's accountants.

A round that released a noisy model spends one `RoundEvent`: how its sites were sampled and the noise
multiplier of its Gaussian mechanism. The ledger keeps how many times each event was spent, in order
(plain data, so it rides in the checkpoint and a resumed run continues it), and answers epsilon at delta.

Which dp-accounting event and neighbouring relation each sampling is:

    every site every round  GaussianDpEvent(z)                          add/remove one site   rdp, pld
    sampling=poisson        PoissonSampledDpEvent(q, GaussianDpEvent(z))  add/remove one site   rdp, pld
    sampling=fixed          SampledWithoutReplacementDpEvent(n, m,      replace one site      rdp only
                                GaussianDpEvent(z/2))

Replace-one (n is public, a site's data is swapped for another's) moves the sum of clipped updates by up to
2 clip, not clip: its Gaussian's multiplier is z/2. dp-accounting's PLD accountant has no sampling without
replacement, so accountant=pld with fixed-size sampling is refused before Ray starts.

Cost: dp-accounting recomputes an event's RDP or PLD from scratch on each `compose` (50 ms to 1 s each on
this machine), so each distinct event's is computed once per process (`event_rdp`, `event_pld`; the
controller does it while the sites start) and the ledger composes from that: RDP as counts times the
event's RDP vector (exact: dp-accounting's own self-composition; 0.09 ms a round); PLD by composing the
running distribution with the event's, one convolution a round (resume replays the same convolutions, so
it gives the same bits); an unsampled Gaussian's composition is the Gaussian of z/sqrt(rounds), built
afresh each round as dp-accounting does.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np

# dp-accounting is the privacy extra's (pip install fedray[privacy]): imported when a DP run builds a ledger.

RDP, PLD = "rdp", "pld"
ALL, FIXED, POISSON = "all", "fixed", "poisson"
# The PLD's loss grid: dp-accounting's default (1e-4) makes each round's convolution ~60 ms; 1e-3 is ~10x
# cheaper and, being a pessimistic estimate, still an upper bound on epsilon (W2's event, 100 rounds: 2.19357
# against 2.19353 on the default grid; 1e-2 would be ~1 ms a round but 0.16% looser).
PLD_INTERVAL = 1e-3


@dataclass(frozen=True)
class RoundEvent:
    """One release: `cohort` of `population` sites sampled as `sampling` says, Gaussian noise of std
    `noise_multiplier` x clip on their sum."""

    sampling: str  # all | fixed | poisson
    population: int
    cohort: float  # the expected number of sites (clients_per_round)
    noise_multiplier: float

    def dp_event(self) -> Any:
        from dp_accounting import dp_event

        if self.sampling == FIXED:
            return dp_event.SampledWithoutReplacementDpEvent(
                self.population, int(self.cohort), dp_event.GaussianDpEvent(self.noise_multiplier / 2))
        gaussian = dp_event.GaussianDpEvent(self.noise_multiplier)
        if self.sampling == POISSON:
            return dp_event.PoissonSampledDpEvent(self.cohort / self.population, gaussian)
        return gaussian

    def neighbouring(self) -> Any:
        from dp_accounting import NeighboringRelation

        return NeighboringRelation.REPLACE_ONE if self.sampling == FIXED else NeighboringRelation.ADD_OR_REMOVE_ONE


def round_event(num_clients: int, clients_per_round: Optional[int], sampling: str, noise_multiplier: float) -> RoundEvent:
    """The event of one central-DP round of this job's sampler."""
    cohort = clients_per_round or num_clients
    kind = ALL if cohort >= num_clients else sampling
    return RoundEvent(kind, num_clients, cohort, noise_multiplier)


def unsupported(accountant: str, event: RoundEvent) -> Optional[str]:
    """Why `accountant` cannot count `event`, or None."""
    if accountant == PLD and event.sampling == FIXED:
        return ("dp-accounting's PLD accountant has no fixed-size sampling without replacement; use "
                "privacy.accountant=rdp, or sampling=poisson")
    return None


class Ledger:
    """Epsilon at `delta` of the events spent so far, with the `accountant` (rdp | pld) of dp-accounting."""

    def __init__(self, accountant: str, delta: float, spent: Optional[list] = None) -> None:
        _quiet_absl()
        self.accountant, self.delta = accountant, delta
        self.spent: list[list] = []  # [[event as a dict, times], ...] in the order spent: the checkpoint's data
        self._pld_runs: dict[RoundEvent, Any] = {}  # each distinct event's composition so far
        self._epsilon = 0.0
        for event, times in spent or ():
            for _ in range(times):
                self.spend(RoundEvent(**event))

    @property
    def epsilon(self) -> float:
        return self._epsilon

    @property
    def releases(self) -> int:
        return sum(times for _, times in self.spent)

    def spend(self, event: RoundEvent) -> float:
        """Count one release of `event`; epsilon after it."""
        if self.spent and self.spent[-1][0] == asdict(event):
            self.spent[-1][1] += 1
        else:
            self.spent.append([asdict(event), 1])
        self._epsilon = self._compose(event)
        return self._epsilon

    def epsilon_after(self, event: RoundEvent, times: int = 1) -> float:
        """Epsilon if `event` were spent `times` more times (the ledger itself is left as it is)."""
        trial = Ledger(self.accountant, self.delta)
        trial.spent = [list(entry) for entry in self.spent]
        trial._pld_runs = dict(self._pld_runs)
        for _ in range(times):
            trial.spend(event)
        return trial.epsilon

    def _compose(self, event: RoundEvent) -> float:
        if any(RoundEvent(**entry).noise_multiplier == 0 for entry, _ in self.spent):
            return math.inf  # no noise: no finite epsilon (dp-accounting's NonPrivate answer)
        if self.accountant == RDP:
            from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

            total = sum(times * event_rdp(RoundEvent(**entry)) for entry, times in self.spent)
            return float(compute_epsilon(_orders(), total, self.delta)[0])
        self._pld_runs[event] = self._pld_composed(event)
        runs = list(self._pld_runs.values())
        composed = runs[0]
        for other in runs[1:]:  # several kinds of event in one ledger (none of fedray's runs has that)
            composed = composed.compose(other)
        return float(composed.get_epsilon_for_delta(self.delta))

    def _pld_composed(self, event: RoundEvent) -> Any:
        """`event`'s PLD composed as often as the ledger spent it. Unsampled Gaussians compose to a Gaussian of
        noise z/sqrt(count), built afresh as dp-accounting does; sampled ones, one convolution more a round."""
        if event.sampling == ALL:
            times = sum(n for entry, n in self.spent if RoundEvent(**entry) == event)
            return _gaussian_pld(event.noise_multiplier / math.sqrt(times), event)
        step, before = event_pld(event), self._pld_runs.get(event)
        return step if before is None else before.compose(step)



# Each distinct event's RDP vector and PLD, computed once per process (dp-accounting's own work for one
# composition: 50 ms to 1 s) and shared by every ledger; the controller computes its run's event while the
# sites start (`warm`), so no round waits for it.
@functools.lru_cache(maxsize=64)
def event_rdp(event: RoundEvent) -> np.ndarray:
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant(orders=_orders(), neighboring_relation=event.neighbouring())
    accountant.compose(event.dp_event())
    # dp-accounting keeps the composed RDP per order in _rdp; read once per event, every later round is
    # counts x vector (tests check the ledger's epsilon equals dp-accounting's get_epsilon).
    rdp = np.array(accountant._rdp, dtype=np.float64)
    rdp.flags.writeable = False
    return rdp


@functools.lru_cache(maxsize=64)
def event_pld(event: RoundEvent) -> Any:
    reason = unsupported(PLD, event)
    if reason:
        raise ValueError(reason)
    return _gaussian_pld(event.noise_multiplier, event)


def warm(accountant: str, event: RoundEvent) -> None:
    """Compute `event`'s RDP or PLD now, so that the first round's accounting is as cheap as the others."""
    _quiet_absl()
    if event.noise_multiplier == 0:
        return  # no noise, no finite epsilon: nothing to compute
    if accountant == RDP:
        event_rdp(event)
    elif event.sampling != ALL:
        event_pld(event)


def _gaussian_pld(noise_multiplier: float, event: RoundEvent) -> Any:
    """As dp-accounting's PLDAccountant builds it for `event` (with this noise), on the ledger's grid."""
    from dp_accounting.pld import privacy_loss_distribution

    return privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=noise_multiplier, value_discretization_interval=PLD_INTERVAL,
        sampling_prob=event.cohort / event.population if event.sampling == POISSON else 1.0,
        neighboring_relation=event.neighbouring())


def reference_epsilon(accountant: str, delta: float, event: RoundEvent, times: int) -> float:
    """dp-accounting's own answer for `times` releases of `event` (its accountant, composed from scratch):
    what the ledger's cached composition must equal."""
    from dp_accounting import dp_event
    from dp_accounting.pld import PLDAccountant
    from dp_accounting.rdp import RdpAccountant

    _quiet_absl()
    if accountant == RDP:
        counter: Any = RdpAccountant(orders=_orders(), neighboring_relation=event.neighbouring())
    else:
        counter = PLDAccountant(neighboring_relation=event.neighbouring(), value_discretization_interval=PLD_INTERVAL)
    counter.compose(dp_event.SelfComposedDpEvent(event.dp_event(), times))
    return float(counter.get_epsilon(delta))


@functools.lru_cache(maxsize=32)  # validate runs twice in a run's process (the CLI's check, then the job's)
def calibrate(target_epsilon: float, delta: float, rounds: int, accountant: str, population: int,
              clients_per_round: Optional[int], sampling: str) -> float:
    """The smallest noise multiplier (to 0.1%) whose `rounds` releases of this sampler's round event stay
    within `target_epsilon` on the ledger; ValueError when none up to 1000 does.

    Searched with dp-accounting's own composition (one self-composition per trial), then checked on the
    ledger's incremental composition (PLD's may differ in the last digits) and raised until it fits."""
    def event(z: float) -> RoundEvent:
        return round_event(population, clients_per_round, sampling, z)

    def within(z: float) -> bool:
        return reference_epsilon(accountant, delta, event(z), rounds) <= target_epsilon

    high = 1.0
    while not within(high):
        high *= 2
        if high > 1000:
            raise ValueError(f"no noise_multiplier up to 1000 keeps {rounds} rounds within epsilon={target_epsilon:g}")
    low = 0.0
    while high - low > 1e-3 * high:  # epsilon falls as the noise grows: `high` stays within the budget
        middle = (low + high) / 2
        low, high = (low, middle) if within(middle) else (middle, high)
    while Ledger(accountant, delta).epsilon_after(event(high), rounds) > target_epsilon:
        high *= 1.001
    return high


def _orders() -> list[float]:
    from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS

    return DEFAULT_RDP_ORDERS


def _quiet_absl() -> None:
    """dp-accounting warns through absl for every RDP order whose series converges slowly (hundreds of
    lines a run); such orders are left out of the minimum over orders, which stays an upper bound."""
    logging.getLogger("absl").setLevel(logging.ERROR)
