"""SecAgg+ in a synchronous round (`secure_aggregation=secagg_plus`, README "Secure aggregation"): the controller's
side, around ScatterAndGather's round. Before the sites train, two key stages (advertise keys, share keys); while
they train, their masked vectors summed as they arrive; after, one unmasking stage to the survivors, and the
exact sum of their quantized updates handed on as the round's model. Each key stage is one cheap task per worker,
whatever the cohort; the protocol itself is fedray/secure/ (the sites' steps in fedray/secure/site.py).
"""

from __future__ import annotations

import re
import time
from functools import partial
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import ray
from ray.actor import ActorHandle

from fedray.aggregation import CompensatedSum, Params
from fedray.fl_model import FLModel
from fedray.privacy.mechanisms import private_names
from fedray.secure import MASKED, SECAGG, SECONDS
from fedray.secure.quantize import dequantize_sum, unflatten
from fedray.secure.server import SecureRound, Unrecoverable
from fedray.secure.site import ADVERTISE, SHARE, UNMASK
from fedray.server.tasks import WorkerPool, gather

__all__ = ["SecureAggregation", "Unrecoverable"]


class SecureAggregation:
    def __init__(self, job: Mapping[str, Any], pool: WorkerPool, timeout: float = 0.0, max_retries: int = 0) -> None:
        self.group, self.seed = job["secure_aggregation"], job["seed"]
        self.exclude_vars = job["workflows"]["scatter_and_gather"]["exclude_vars"]
        self.pool, self.timeout, self.max_retries = pool, timeout, max_retries
        self.round: SecureRound | None = None
        self.current_round = 0
        self.seconds: dict[str, float] = {}
        self.unanswered: list[str] = []

    def begin(self, training: Sequence[str], current_round: int) -> tuple[list[str], dict[str, dict]]:
        """Stages 0 and 1 for the round's sites: the sites that shared their keys (they train), and the failures of
        those that did not. Raises Unrecoverable when a site is left with fewer than threshold neighbours."""
        started = time.perf_counter()
        self.current_round, self.unanswered = current_round, []
        self.round = secure_round = SecureRound(self.group, self.seed, current_round, [_number(s) for s in training])
        failures: dict[str, dict] = {}
        for site, public in self._stage(ADVERTISE, training, {}, failures).items():
            secure_round.advertised(_number(site), public)
        advertised = [site for site in training if _number(site) in secure_round.public]
        secure_round.check({_number(site) for site in advertised}, "advertising keys")
        requests = {site: {"keys": secure_round.key_request(_number(site)), "threshold": secure_round.threshold}
                    for site in advertised}
        for site, ciphertexts in self._stage(SHARE, advertised, requests, failures).items():
            secure_round.shares_sent(_number(site), ciphertexts)
        secure_round.check(secure_round.shared, "sharing keys")
        self.seconds = {"key_agreement": time.perf_counter() - started}
        return [site for site in training if _number(site) in secure_round.shared], failures

    def message(self) -> dict[str, Any]:
        """What every site gets with the global model: each site's neighbours' s public keys."""
        return {SECAGG: self.round.mask_keys()}

    def take_site(self, site: str, result: FLModel) -> None:
        """A site's result (one site a task): its masked vector into the round's sum."""
        if MASKED in result.meta:
            self.round.add([_number(site)], result.meta.pop(MASKED))

    def take_batch(self, value: Mapping[str, Any]) -> None:
        """A batch's answer: the sum of its sites' masked vectors (those whose result is no failure)."""
        sites = [site for site, result in value["results"].items() if not isinstance(result, tuple)]
        if sites and value.get("masked") is not None:
            self.round.add([_number(site) for site in sites], value["masked"])

    def unmasked(self, updates: Iterator[Any], global_params: Params) -> Iterator[CompensatedSum]:
        """The round's aggregate for the algorithm (or DP's noisy mean): drains `updates` (the masked vectors come
        in through take_site / take_batch), runs stage 3 and yields the survivors' mean model with weight = their
        number; nothing when no site survived."""
        for update in updates:
            raise RuntimeError(f"a plain update reached the controller under secure aggregation ({type(update)})")
        secure_round = self.round
        if not secure_round.survivors:
            return
        started = time.perf_counter()
        survivors = [f"site-{number}" for number in sorted(secure_round.survivors)]
        requests = {site: secure_round.unmask_request(_number(site)) for site in survivors}
        failures: dict[str, dict] = {}
        answers = self._stage(UNMASK, survivors, requests, failures)
        self.unanswered = sorted(set(survivors) - {site for site, answer in answers.items() if answer is not None})
        total = secure_round.unmask({_number(site): answer for site, answer in answers.items() if answer is not None})
        count = len(survivors)
        names = private_names(global_params, self.exclude_vars)
        mean = dequantize_sum(total, count, secure_round.clipping_range, secure_round.quantization_bits) / count
        # Integer variables (counters) are not secured: they keep their global values.
        model = {name: value for name, value in global_params.items() if not _excluded(name, self.exclude_vars)}
        for name, update in unflatten(mean, global_params, names).items():
            model[name] = np.asarray(global_params[name], dtype=np.float64) + update
        self.seconds["unmasking"] = time.perf_counter() - started
        summed = CompensatedSum()
        summed.add(model, float(count))
        yield summed

    def record(self, site_metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """The round's costs for rounds.jsonl: bytes per site, seconds in each part, who dropped where."""
        masking = [metrics[SECONDS] for metrics in site_metrics.values() if SECONDS in metrics]
        secure_round = self.round
        return {**secure_round.costs(sorted(secure_round.public)), "dropped_after_masking": self.unanswered,
                "seconds": {"key_agreement": round(self.seconds.get("key_agreement", 0.0), 4),
                            "masking_per_site": round(float(np.mean(masking)) if masking else 0.0, 4),
                            "unmasking": round(self.seconds.get("unmasking", 0.0), 4)}}

    def _stage(self, stage: str, sites: Sequence[str], requests: Mapping[str, Any],
               failures: dict[str, dict]) -> dict[str, Any]:
        """One key stage: one task per worker over `sites`; their answers by site. A task that failed fails its
        sites (into `failures`): they leave the round, as a device that stops answering does."""
        answers: dict[str, Any] = {}
        if not sites:
            return answers
        parts = [list(part) for part in np.array_split(np.array(sites, dtype=object), min(len(sites), len(self.pool.workers)))]
        calls = [(f"secagg-{stage}-{k + 1}", partial(_secagg_stage, stage, part, self.current_round,
                                                     {site: requests.get(site) for site in part}))
                 for k, part in enumerate(parts)]
        members = {label: part for (label, _), part in zip(calls, parts)}
        for outcome in gather(calls, self.pool, timeout=self.timeout, max_retries=self.max_retries):
            if outcome.ok:
                answers.update(outcome.value["answers"])
                continue
            for site in members[outcome.site]:
                failures[site] = {"kind": outcome.failure, "seconds": round(outcome.seconds, 3),
                                  "message": f"secure aggregation, stage {stage}: {outcome.message}"}
        return answers


def _secagg_stage(stage: str, sites: list[str], current_round: int, requests: dict, worker: ActorHandle) -> ray.ObjectRef:
    return worker.secagg_stage.remote(stage, sites, current_round, requests)


def _excluded(name: str, exclude_vars: str | None) -> bool:
    return bool(exclude_vars) and re.search(exclude_vars, name) is not None


def _number(site: str) -> int:
    return int(site.rsplit("-", 1)[1])
