"""ScatterAndGather's asynchronous mode, FedBuff (Nguyen et al. 2022): the schedule's aggregations, one "round" each.

The schedule (`fedbuff_schedule.py`: who starts from which version, which buffer each arrival lands in) is
computed first, from the seed and the sites' task durations on the simulated clock; this loop only executes
it. After version k exists, every training that starts from it is sent at once (in parallel, batched as a
synchronous round's sites) and folded into the buffer it will land in; buffer k is then complete (its
trainings started from versions <= k), and version k+1 is computed from it:

    x_{k+1} = x_k + server_lr * sum_i w_i s(tau_i) (x_i - x_{v_i}) / sum_i w_i,   w_i = factor_i x steps_i

(the algorithm's `apply` then takes that as the round's average: FedOpt's optimizer steps on it). Both
sums are compensated (`CompensatedSum`), so neither the order of answers nor the batching changes a bit.
"""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from functools import partial
from typing import Callable, Mapping, Optional

import numpy as np
import ray

from fedray.aggregation import CompensatedSum, Params, _cast, finite
from fedray.algorithms import COUNT, Algorithm
from fedray.fl_model import NUM_STEPS_CURRENT_ROUND, local_model
from fedray.server.tasks import Outcome, WorkerPool, gather
from fedray.server.workflows.fedbuff_schedule import Training, fedbuff_schedule, staleness_weight
from fedray.server.workflows.scatter_and_gather import (
    LocalModel,
    RoundFailed,
    _answered,
    _describe,
    _failure,
    _site_outcomes,
    _train,
    _train_batch,
    _without,
)

# Where the checkpointed server state keeps the start versions of trainings still in flight (resume runs them again).
FEDBUFF_STATE = "fedray_fedbuff"


class _Buffer:
    """One aggregation's arrivals: sum_i w_i s_i x_i, sum_i w_i s_i x_{v_i}, and the w_i."""

    def __init__(self) -> None:
        self.trained, self.base = CompensatedSum(), CompensatedSum()
        self.weights: list[float] = []
        self.metrics: dict[str, dict] = {}
        self.failures: dict[str, dict] = {}
        self.improved: dict[str, LocalModel] = {}

    def update(self, params: Params, server_lr: float) -> Params:
        """`params` (version k) moved by server_lr times the buffer's staleness-weighted mean update."""
        total = math.fsum(sorted(self.weights))  # exactly rounded: the same whatever the order of arrivals
        moved = {}
        for name, trained in self.trained.sums.items():
            delta = (trained + self.trained.errors[name]) - (self.base.sums[name] + self.base.errors[name])
            moved[name] = _cast(np.asarray(params[name], np.float64) + server_lr * (delta / total), self.trained.dtypes[name])
        return moved


def fedbuff(
    sites: list[str],
    pool: WorkerPool,
    global_params: Params,
    *,
    on_round_end: Callable[..., None],
    num_rounds: int,
    concurrency: int,
    buffer_size: int,
    duration: Callable[[str], float],
    traces: Optional[Mapping[str, Mapping]] = None,
    staleness: str = "constant",
    staleness_a: float = 0.5,
    staleness_b: float = 4.0,
    server_lr: float = 1.0,
    on_site_done: Callable[[int, Outcome], None] | None = None,
    start_round: int = 0,
    seed: int = 0,
    train_timeout: float = 0.0,
    aggregation_weights: dict[str, float] | None = None,
    exclude_vars: str | None = None,
    ignore_result_error: Optional[bool] = None,
    best_local_models: dict[str, LocalModel] | None = None,
    max_task_retries: int = 0,
    sites_per_task: int = 1,
    algorithm: Algorithm | None = None,
    state: dict | None = None,
) -> Params:
    """Run aggregations `start_round .. num_rounds-1` of FedBuff; `on_round_end` as `scatter_and_gather`'s, once per
    aggregation, with each arrival's metrics (plus `staleness`, `start_version`, its task's `sim_seconds`), and the
    aggregation's `sim_seconds` (since the last) and `sim_time` on the clock.
    `state` may carry FEDBUFF_STATE from a checkpoint: the models that trainings in flight then started from."""
    schedule = fedbuff_schedule(sites, concurrency=concurrency, buffer_size=buffer_size, num_aggregations=num_rounds,
                                seed=seed, duration=duration, traces=traces)
    factors = aggregation_weights or {}
    excluded = re.compile(exclude_vars) if exclude_vars else None
    algorithm = algorithm or Algorithm()
    state = algorithm.init(global_params, len(sites)) if state is None else dict(state)
    saved = state.pop(FEDBUFF_STATE, None) or {}
    versions: dict[int, Params] = {int(v): params for v, params in saved.get("versions", {}).items()}
    buffers: dict[int, _Buffer] = defaultdict(_Buffer)

    def weight_factor(training: Training) -> float:
        return factors.get(training.site, 1.0) * staleness_weight(training.staleness, staleness, staleness_a, staleness_b)

    global_ref = ray.put(global_params)  # one copy per version in the object store: its tasks' and the round event's
    for current in range(start_round, num_rounds):
        started = time.perf_counter()
        versions[current] = global_params
        # On resume, the trainings in flight at the checkpoint run again from their saved start versions.
        resumed = schedule.pending_after(current - 1) if current == start_round else []
        runs = schedule.starting_from(current) + [t for t in resumed if t.aggregation is not None]
        message = algorithm.message(state)
        message_ref = ray.put(message) if message else None
        for version in sorted({t.version for t in runs}):
            from_version = [t for t in runs if t.version == version]
            version_ref = global_ref if version == current else ray.put(versions[version])
            _run(from_version, versions[version], version_ref, current, num_rounds, message_ref, weight_factor, factors,
                 buffers, pool,
                 excluded=excluded, train_timeout=train_timeout, max_task_retries=max_task_retries,
                 sites_per_task=sites_per_task, best_local_models=best_local_models, on_site_done=on_site_done,
                 ignore_result_error=ignore_result_error)
        buffer = buffers.pop(current)
        for gone in schedule.dropped_by(current):  # known from the traces before any training: none ran
            buffer.failures[gone.site] = {"kind": "dropped", "message": f"went offline at t={gone.arrival:g} s, "
                                          "before its task would end", "seconds": 0.0, "sim_seconds": gone.arrival - gone.start}
        if not buffer.metrics and ignore_result_error is not True:
            raise RoundFailed(f"round {current}: no site of the buffer returned a result ({_describe(buffer.failures)})")
        if buffer.metrics:
            averaged = buffer.update(global_params, server_lr)
            averaged, state = algorithm.apply(global_params, averaged, {COUNT: len(buffer.weights)}, state, current)
            global_params = {**global_params, **averaged}
        if not finite(global_params):
            raise RoundFailed(f"round {current}: training diverged: the aggregated global model has NaN or Inf; lower lr")
        # Only the start versions of trainings still in flight are kept (for them, and for the checkpoint).
        needed = {t.version for t in schedule.pending_after(current)}
        versions = {v: params for v, params in versions.items() if v in needed}
        saved_versions = {str(v): params for v, params in versions.items()}
        global_ref = ray.put(global_params)
        on_round_end(current, global_ref, buffer.metrics, buffer.failures, time.perf_counter() - started,
                     buffer.improved, ray.put({**state, FEDBUFF_STATE: {"versions": saved_versions}}), {},
                     sim_seconds=schedule.times[current] - (schedule.times[current - 1] if current else 0.0),
                     sim_time=schedule.times[current])
    return global_params


def _run(trainings: list[Training], params: Params, params_ref: ray.ObjectRef, current: int, num_rounds: int,
         message_ref: ray.ObjectRef | None, weight_factor: Callable[[Training], float], factors: dict[str, float],
         buffers: dict[int, _Buffer], pool: WorkerPool, *, excluded: Optional[re.Pattern], train_timeout: float,
         max_task_retries: int, sites_per_task: int, best_local_models: dict[str, LocalModel] | None,
         on_site_done: Callable[[int, Outcome], None] | None, ignore_result_error: Optional[bool]) -> None:
    """Train `trainings` (all from one version, `params`, in the object store as `params_ref`) in parallel and fold
    each into its buffer."""
    base = {k: v for k, v in params.items() if not (excluded and excluded.search(k))}
    # A site drawn again from one version trains in a later wave, as another round (Training.round): a task's
    # label is its site (or batch), and its seeds must differ from its first task's.
    waves: dict[int, list[Training]] = defaultdict(list)
    for training in trainings:
        waves[training.repeat].append(training)
    for _, wave in sorted(waves.items()):
        by_site = {t.site: t for t in wave}
        if sites_per_task > 1:
            groups: dict[int, list[Training]] = defaultdict(list)  # a batch's sum goes to one buffer
            for training in wave:
                groups[training.aggregation].append(training)
            members = [group[i:i + sites_per_task] for _, group in sorted(groups.items())
                       for i in range(0, len(group), sites_per_task)]
            batches = {f"batch-{k + 1}": [t.site for t in batch] for k, batch in enumerate(members)}
            # The worker seeds a site's shuffle by the round it is told (Training.round): one per wave.
            calls = [(label, partial(_train_batch, names, params_ref, by_site[names[0]].round(num_rounds), num_rounds,
                                     [weight_factor(by_site[s]) for s in names], message_ref, [None] * len(names)))
                     for label, names in batches.items()]
        else:
            batches = {}
            calls = [(t.site, partial(_train, t.site, params_ref, t.round(num_rounds), num_rounds, message_ref, None))
                     for t in wave]
        outcomes = gather(calls, pool, timeout=train_timeout * max(1, sites_per_task), max_retries=max_task_retries,
                          count=lambda outcome: _answered(outcome, batches))
        for task_outcome in outcomes:
            for outcome in _site_outcomes(task_outcome, batches):
                training = by_site[outcome.site]
                buffer = buffers[training.aggregation]
                if on_site_done is not None:
                    on_site_done(current, outcome)
                if not outcome.ok:
                    buffer.failures[outcome.site] = _failure(outcome)
                    if ignore_result_error is False:
                        raise RoundFailed(f"round {current}: {outcome.site} {outcome.failure} and ignore_result_error=false")
                    continue
                result = outcome.value
                steps = result.meta[NUM_STEPS_CURRENT_ROUND]
                weight = weight_factor(training) * steps  # as the worker weighs a batch's site
                buffer.weights.append(factors.get(training.site, 1.0) * steps)  # the mean's divisor: no staleness
                buffer.metrics[outcome.site] = {**result.metrics, "num_steps": steps, "staleness": training.staleness,
                                                "start_version": training.version,
                                                "sim_seconds": training.arrival - training.start}
                buffer.base.add(base, weight)
                if result.params is not None:
                    buffer.trained.add({k: v for k, v in result.params.items() if k in base}, weight)
                if best_local_models is not None and outcome.ref is not None:
                    accuracy = result.metrics.get("local_val_accuracy", float("nan"))
                    best = best_local_models.get(outcome.site)
                    if best is None or not accuracy <= best.accuracy:
                        kept = ray.put(local_model(result))
                        best_local_models[outcome.site] = buffer.improved[outcome.site] = LocalModel(accuracy, kept)
            if task_outcome.site in batches and task_outcome.ok and task_outcome.value["sum"].sums:
                buffers[by_site[batches[task_outcome.site][0]].aggregation].trained.merge(
                    _without(task_outcome.value["sum"], excluded))
