"""ScatterAndGather: FedAvg rounds, each result folded in as it arrives."""

from __future__ import annotations

import logging
import re
import time
from functools import partial
from typing import Callable, Iterator

import ray
from ray.actor import ActorHandle

from fedray.aggregation import Params
from fedray.fl_model import NUM_STEPS_CURRENT_ROUND
from fedray.tasks import Outcome, WorkerPool, gather

log = logging.getLogger(__name__)


class RoundFailed(RuntimeError):
    """A round got fewer results than `min_clients`; earlier rounds' outputs are kept."""


def scatter_and_gather(
    sites: list[str],
    pool: WorkerPool,
    global_params: Params,
    *,
    aggregate: Callable[[Iterator[tuple[Params, float]]], Params],
    on_round_end: Callable[[int, ray.ObjectRef, dict, dict, float], None],
    num_rounds: int,
    on_site_done: Callable[[int, Outcome], None] | None = None,
    start_round: int = 0,
    min_clients: int | None = None,
    wait_time_after_min_received: float = 0.0,
    train_timeout: float = 0.0,
    aggregation_weights: dict[str, float] | None = None,
    exclude_vars: str | None = None,
    best_local_models: dict[str, ray.ObjectRef] | None = None,
) -> Params:
    """Run FedAvg rounds; `on_round_end` gets each round's new global weights as one ObjectRef,
    `on_site_done` each site's outcome as it arrives (for progress reports).

    `best_local_models` is updated in place: per site, the train result whose local model
    scored best on the site's own validation split (an ObjectRef: the model stays in the object store).
    """
    best_local_models = {} if best_local_models is None else best_local_models
    best_local_accuracy: dict[str, float] = {}
    min_clients = min_clients or len(sites)
    factors = aggregation_weights or {}
    excluded = re.compile(exclude_vars) if exclude_vars else None

    # One copy of the global weights in the object store per round, shared by every site.
    global_ref = ray.put(global_params)
    for current_round in range(start_round, num_rounds):
        started = time.perf_counter()
        calls = [(site, partial(_train, site, global_ref, current_round, num_rounds)) for site in sites]
        outcomes = gather(
            calls,
            pool,
            min_results=min_clients,
            wait_after_min=wait_time_after_min_received,
            timeout=train_timeout,
        )
        site_metrics: dict[str, dict] = {}
        failures: dict[str, dict] = {}

        def arriving_updates() -> Iterator[tuple[Params, float]]:
            for outcome in outcomes:
                if on_site_done is not None:
                    on_site_done(current_round, outcome)
                if not outcome.ok:
                    failures[outcome.site] = _failure(outcome)
                    log.warning("round %d: %s %s: %s", current_round, outcome.site, outcome.failure, outcome.message)
                    continue
                result = outcome.value
                steps = result.meta[NUM_STEPS_CURRENT_ROUND]
                site_metrics[outcome.site] = {**result.metrics, "num_steps": steps}
                local_accuracy = result.metrics.get("local_val_accuracy", float("nan"))
                # Written so that NaN (no validation split) keeps the latest model.
                if not local_accuracy <= best_local_accuracy.get(outcome.site, float("-inf")):
                    best_local_accuracy[outcome.site] = local_accuracy
                    best_local_models[outcome.site] = outcome.ref
                params = {k: v for k, v in result.params.items() if not (excluded and excluded.search(k))}
                yield params, factors.get(outcome.site, 1.0) * steps

        try:
            aggregated = aggregate(arriving_updates())
        except Exception:
            if site_metrics:
                raise
            aggregated = {}  # nobody answered: reported as a failed round just below
        if len(site_metrics) < min_clients:
            raise RoundFailed(
                f"round {current_round}: {len(site_metrics)} of {len(sites)} sites returned results, "
                f"min_clients={min_clients} needed ({_describe(failures)})"
            )
        global_params = {**global_params, **aggregated}
        global_ref = ray.put(global_params)
        on_round_end(current_round, global_ref, site_metrics, failures, time.perf_counter() - started)
    return global_params


def _train(site: str, global_ref: ray.ObjectRef, current_round: int, num_rounds: int, worker: ActorHandle):
    return worker.train.remote(site, global_ref, current_round, num_rounds)


def _failure(outcome: Outcome) -> dict:
    return {"kind": outcome.failure, "message": outcome.message, "seconds": round(outcome.seconds, 3)}


def _describe(failures: dict[str, dict]) -> str:
    return "; ".join(f"{site}: {failure['kind']}" for site, failure in failures.items()) or "no failures reported"
