"""The controller's side of DP in a round: what the sites are told (the clip norm), how their models are
averaged (central: noised sum over the expected cohort; local: their plain mean, the noise is theirs),
the adaptive clip norm's step, the ledgers, and the budget (`privacy.target_epsilon`).

Its state (the clip norm, the central ledger's events, each site's count of releases) is plain data that
rides in the algorithm's server state, so the checkpoint keeps it and a resumed run continues the ledger.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

import numpy as np

from fedray.aggregation import CompensatedSum, Params, fedavg, fold
from fedray.privacy import ADAPTIVE, CENTRAL, CLIP, LOCAL, delta_of
from fedray.privacy.ledger import ALL, Ledger, RoundEvent, round_event, warm
from fedray.privacy.mechanisms import (COUNT_NOISE, UPDATE_NOISE, adaptive_noise_multiplier, next_clip, noise_generator,
                                       noisy_mean)


class ServerPrivacy:
    def __init__(self, job: Mapping[str, Any], saved: Optional[Mapping[str, Any]] = None) -> None:
        """`saved`: `state()` after the last finished round of a resumed run; None for a new one."""
        privacy = job["privacy"]
        sampler = job["workflows"]["scatter_and_gather"]
        self.mode, self.seed = privacy["mode"], job["seed"]
        self.expected = sampler["clients_per_round"] or job["num_clients"]
        self.noise_multiplier = privacy["noise_multiplier"]  # the accounted one
        self.target_epsilon = privacy["target_epsilon"]
        self.adaptive = privacy["clip"] == ADAPTIVE
        self.update_noise = self.noise_multiplier
        self.count_noise = 0.0
        if self.adaptive:
            self.target_quantile, self.clip_lr = privacy["target_quantile"], privacy["clip_lr"]
            count_noise = privacy["count_noise"]
            self.count_noise = (self.expected / 20 if count_noise is None else count_noise) if self.noise_multiplier else 0.0
            self.update_noise = adaptive_noise_multiplier(self.noise_multiplier, self.count_noise)
        if self.mode == CENTRAL:
            self.event = round_event(job["num_clients"], sampler["clients_per_round"], sampler["sampling"],
                                     self.noise_multiplier)
        else:  # local: each release is the site's own Gaussian mechanism, on all of its data
            self.event = RoundEvent(ALL, 1, 1, self.noise_multiplier)
        saved = saved or {}
        self.clip = saved.get("clip", privacy["initial_clip"] if self.adaptive else privacy["clip"])
        self.ledger = Ledger(privacy["accountant"], delta_of(privacy, job["num_clients"]), saved.get("ledger"))
        self.site_releases: dict[str, int] = dict(saved.get("sites", {}))
        self._epsilon_after: list[float] = [0.0]  # local: epsilon after n releases, composed as sites reach n
        self._site_ledger = Ledger(privacy["accountant"], self.ledger.delta)

    @staticmethod
    def prepare(job: Mapping[str, Any]) -> None:
        """Compute the run's round event's RDP/PLD (up to a second for fixed-size sampling) ahead of round 1:
        the controller does it in a thread while the site actors start."""
        privacy, sampler = job["privacy"], job["workflows"]["scatter_and_gather"]
        if privacy["mode"] == CENTRAL:
            warm(privacy["accountant"], round_event(job["num_clients"], sampler["clients_per_round"], sampler["sampling"],
                                                    privacy["noise_multiplier"]))

    def state(self) -> dict[str, Any]:
        return {"clip": self.clip, "ledger": self.ledger.spent, "sites": dict(self.site_releases)}

    def message(self) -> dict[str, Any]:
        """What every site gets with the global model this round."""
        return {CLIP: self.clip} if self.mode == CENTRAL else {}

    def stop_before(self, current_round: int) -> Optional[str]:
        """Why `current_round` may not run (its release would pass target_epsilon), or None."""
        if self.mode != CENTRAL or self.target_epsilon is None:
            return None
        after = self.ledger.epsilon_after(self.event)
        if after <= self.target_epsilon:
            return None
        return (f"privacy.target_epsilon={self.target_epsilon:g}: round {current_round + 1} would reach epsilon "
                f"{after:.4g}; stopped after {self.ledger.releases} round(s) at epsilon {self.ledger.epsilon:.4g} "
                f"(delta {self.ledger.delta:g})")

    def aggregate(self, updates: Iterable[tuple[Params, float] | CompensatedSum], global_params: Mapping[str, np.ndarray],
                  names: list[str], current_round: int) -> Params:
        """The round's new values of the sites' variables. Central: noise on the sum, over the expected cohort,
        even when no site answered (a round that releases a model always adds its noise). Local: the mean."""
        if self.mode == LOCAL:
            updates = list(updates)  # each site's weight is 1: the plain mean of what they released
            return fedavg(updates) if updates else {}
        return noisy_mean(fold(updates), global_params, names, self.expected, self.update_noise * self.clip,
                          noise_generator(self.seed, current_round, UPDATE_NOISE))

    def close_round(self, current_round: int, unclipped: Mapping[str, bool]) -> dict[str, Any]:
        """Spend the round's releases; the round's record (epsilon, and the clip norm it used)."""
        if self.mode == LOCAL:
            for site in unclipped:
                self.site_releases[site] = self.site_releases.get(site, 0) + 1
            # The round's sites only (a run's every site is in totals()): rounds.jsonl stays small with 1000 sites.
            spent = {site: self._local_epsilon(self.site_releases[site]) for site in sorted(unclipped)}
            return {"epsilon": self._local_epsilon(max(self.site_releases.values(), default=0)),
                    "delta": self.ledger.delta, "sites": spent, "clip": self.clip}
        record = {"epsilon": self.ledger.spend(self.event), "delta": self.ledger.delta, "clip": self.clip}
        if self.adaptive:
            rng = noise_generator(self.seed, current_round, COUNT_NOISE)
            self.clip, record["unclipped_fraction"] = next_clip(
                self.clip, unclipped.values(), self.expected, self.target_quantile, self.clip_lr, self.count_noise, rng)
        return record

    def totals(self) -> dict[str, Any]:
        """What summary.json's `privacy` says of the whole run so far."""
        totals = {"mode": self.mode, "accountant": self.ledger.accountant, "delta": self.ledger.delta,
                  "noise_multiplier": self.noise_multiplier}
        if self.mode == LOCAL:
            sites = {site: {"releases": n, "epsilon": self._local_epsilon(n)} for site, n in sorted(self.site_releases.items())}
            return {**totals, "epsilon": max((s["epsilon"] for s in sites.values()), default=0.0), "sites": sites}
        return {**totals, "epsilon": self.ledger.epsilon, "rounds_spent": self.ledger.releases, "clip": self.clip}

    def _local_epsilon(self, releases: int) -> float:
        """A site's epsilon after `releases` releases: one ledger, composed further as a site first gets there."""
        while len(self._epsilon_after) <= releases:
            self._epsilon_after.append(self._site_ledger.spend(self.event))
        return self._epsilon_after[releases]
