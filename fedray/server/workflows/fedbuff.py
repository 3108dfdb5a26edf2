"""ScatterAndGather's asynchronous mode, FedBuff (Nguyen et al. 2022): the schedule's aggregations, one "round" each.

The schedule (`fedbuff_schedule.py`: who starts from which version, which buffer each arrival lands in) is
computed first, from the seed and the sites' task durations on the simulated clock; this loop only executes
it, in one stream of tasks across versions: once version k exists, the trainings that start from it are
queued (batched as a synchronous round's sites, a task's sites summed by the buffer each lands in), while
earlier versions' trainings still run; each answer is folded into the buffer it lands in, and buffer k, once all its
arrivals are in (they started from versions <= k), makes version k+1:

    x_{k+1} = x_k + server_lr * sum_i w_i s(tau_i) (x_i - x_{v_i}) / sum_i w_i,   w_i = factor_i x steps_i

(the algorithm's `apply` then takes that as the round's average: FedOpt's optimizer steps on it). Both
sums are compensated (`CompensatedSum`), so neither the order of answers nor the batching changes a bit.
"""

from __future__ import annotations

import heapq
import math
import re
import time
from collections import Counter, defaultdict
from functools import partial
from typing import Callable, Mapping, Optional

import numpy as np
import ray

from fedray.aggregation import CompensatedSum, Params, _cast, finite
from fedray.algorithms import COUNT, Algorithm
from fedray.fl_model import KEPT_MODELS, NUM_STEPS_CURRENT_ROUND, local_model
from fedray.server.tasks import Call, Outcome, WorkerPool, gather
from fedray.server.workflows.fedbuff_schedule import Schedule, Training, fedbuff_schedule, staleness_weight
from fedray.server.workflows.scatter_and_gather import (
    LocalModel,
    RoundFailed,
    _describe,
    _failure,
    _site_outcomes,
    _train,
    _train_batch,
    _without,
)

# Where checkpoints before KEPT_MODELS kept the start versions of trainings in flight (resume still reads it).
FEDBUFF_STATE = "fedray_fedbuff"


class _Buffer:
    """One aggregation's arrivals: sum_i w_i s_i x_i, and the w_i s_i and w_i by start version (sum_i w_i s_i x_{v_i}
    is summed once per version when the buffer aggregates, not once per arrival: W2's buffers of 10 arrivals hold
    2 start versions on average, 6.6 with system=lognormal)."""

    def __init__(self) -> None:
        self.trained = CompensatedSum()
        self.weights: list[float] = []
        # start version -> its weights (without exclude_vars) and its arrivals' w_i s_i
        self.starts: dict[int, tuple[Params, list[float]]] = {}
        self.metrics: dict[str, dict] = {}
        self.failures: dict[str, dict] = {}
        self.improved: dict[str, LocalModel] = {}

    def started_from(self, version: int, params: Params, weight: float) -> None:
        """An arrival that started from `version` (`params`), weighed `weight` (w_i s_i) in the trained sum."""
        self.starts.setdefault(version, (params, []))[1].append(weight)

    def update(self, params: Params, server_lr: float) -> Params:
        """`params` (version k) moved by server_lr times the buffer's staleness-weighted mean update."""
        total = math.fsum(sorted(self.weights))  # exactly rounded: the same whatever the order of arrivals
        base = CompensatedSum()
        for version in sorted(self.starts):  # each weight sum exactly rounded too: order-free
            start, weights = self.starts[version]
            base.add(start, math.fsum(sorted(weights)))
        moved = {}
        for name, trained in self.trained.sums.items():
            delta = (trained + self.trained.errors[name]) - (base.sums[name] + base.errors[name])
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
    lost: Optional[Callable[[str, int], bool]] = None,
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
    `state` may carry KEPT_MODELS from a checkpoint: "version-k" -> the model that trainings then in flight started from."""
    schedule = fedbuff_schedule(sites, concurrency=concurrency, buffer_size=buffer_size, num_aggregations=num_rounds,
                                seed=seed, duration=duration, traces=traces, lost=lost)
    factors = aggregation_weights or {}
    excluded = re.compile(exclude_vars) if exclude_vars else None
    algorithm = algorithm or Algorithm()
    state = algorithm.init(global_params, len(sites)) if state is None else dict(state)
    saved = {name.removeprefix("version-"): params for name, params in (state.pop(KEPT_MODELS, None) or {}).items()}
    saved.update((state.pop(FEDBUFF_STATE, None) or {}).get("versions", {}))
    saved = {**{int(v): params for v, params in saved.items()}, start_round: global_params}
    counted = [t for t in schedule.trainings if t.aggregation is not None]  # the rest arrive after the run's end
    missing = Counter(t.aggregation for t in counted)  # arrivals each buffer still waits for
    from_version: dict[int, list[Training]] = defaultdict(list)
    for training in counted:
        from_version[training.version].append(training)

    def weight_factor(training: Training) -> float:
        return factors.get(training.site, 1.0) * staleness_weight(training.staleness, staleness, staleness_a, staleness_b)

    tasks = _Tasks(num_rounds, sites_per_task, weight_factor, excluded, window=2 * len(pool.workers))
    global_ref = ray.put(global_params)  # one copy per version in the object store: its tasks', the round event's
    message_ref = _message_ref(algorithm, state)
    # Start versions of trainings yet to arrive, in the object store: the checkpoint's KEPT_MODELS, by reference.
    versions: dict[int, ray.ObjectRef] = {}
    # On resume, the trainings in flight at the checkpoint run again from their saved start versions.
    resumed = [t for t in schedule.pending_after(start_round - 1) if t.aggregation is not None]
    for version, params in sorted(saved.items()):
        trainings = from_version[version] if version == start_round else [t for t in resumed if t.version == version]
        if trainings or version == start_round:
            versions[version] = global_ref if version == start_round else ray.put(params)
            tasks.add(trainings, params, versions[version], message_ref)
    buffers: dict[int, _Buffer] = defaultdict(_Buffer)
    current, started = start_round, time.perf_counter()
    outcomes = gather([], pool, more=tasks.release, timeout=train_timeout * max(1, sites_per_task),
                      max_retries=max_task_retries, site_of=tasks.site_of)
    for task_outcome in outcomes:
        batch = task_outcome.site in tasks.batches
        arrivals = tasks.done(task_outcome)
        for training, outcome in arrivals:
            missing[training.aggregation] -= 1
            if on_site_done is not None:
                on_site_done(training.aggregation, outcome)
            _fold(buffers[training.aggregation], training, outcome, tasks.bases[training.version],
                  weight_factor(training) * _steps(outcome), factors, best_local_models, ignore_result_error)
            tasks.forget(training)
        if batch and task_outcome.ok:  # its sites' trained weights, summed by the buffer they land in
            for aggregation, total in task_outcome.value["sums"].items():
                buffers[aggregation].trained.merge(_without(total, excluded))
        # A later buffer may fill first (its arrivals trained sooner): buffers aggregate in turn, each once complete.
        while current < num_rounds and missing[current] == 0:
            buffer = buffers.pop(current)
            global_params, state = _aggregate(current, buffer, schedule, global_params, state, algorithm, server_lr,
                                              ignore_result_error)
            # Only the start versions of trainings still to arrive are kept (for them, and for the checkpoint).
            needed = {t.version for t in schedule.pending_after(current)}
            versions = {v: ref for v, ref in versions.items() if v in needed}
            # By reference (each model put once, when it was made); the driver writes each once (KEPT_MODELS).
            kept = {f"version-{v}": ref for v, ref in versions.items()}
            global_ref = ray.put(global_params)
            if current + 1 < num_rounds:  # queued before the round's records: the workers need not wait for them
                versions[current + 1] = global_ref
                message_ref = _message_ref(algorithm, state)
                tasks.add(from_version[current + 1], global_params, global_ref, message_ref)
            on_round_end(current, global_ref, buffer.metrics, buffer.failures, time.perf_counter() - started,
                         buffer.improved, ray.put({**state, KEPT_MODELS: kept}), {},
                         sim_seconds=schedule.times[current] - (schedule.times[current - 1] if current else 0.0),
                         sim_time=schedule.times[current])
            current, started = current + 1, time.perf_counter()
        if current == num_rounds:
            break
    if current < num_rounds:  # every counted training answers (or fails) once: only a bug leaves a buffer open
        raise RoundFailed(f"round {current}: {missing[current]} arrival(s) of its buffer never answered")
    return global_params


def _message_ref(algorithm: Algorithm, state: dict) -> ray.ObjectRef | None:
    """The algorithm's message to the sites that start from the model version `state` goes with."""
    message = algorithm.message(state)
    return ray.put(message) if message else None


def _steps(outcome: Outcome) -> int:
    return outcome.value.meta[NUM_STEPS_CURRENT_ROUND] if outcome.ok else 0


def _aggregate(current: int, buffer: _Buffer, schedule: Schedule, global_params: Params, state: dict,
               algorithm: Algorithm, server_lr: float, ignore_result_error: Optional[bool]) -> tuple[Params, dict]:
    """Aggregation `current`: its complete buffer (and the trainings the traces dropped by then) made version current+1."""
    for gone in schedule.dropped_by(current):  # known from the traces and the seed before any training: none ran
        message = (f"dropped out (its seeded dropout draw, system.dropout): nothing arrived by t={gone.arrival:g} s"
                   if gone.lost else f"went offline at t={gone.arrival:g} s, before its task would end")
        buffer.failures[gone.site] = {"kind": "dropped", "message": message, "seconds": 0.0,
                                      "sim_seconds": gone.arrival - gone.start}
    if not buffer.metrics and ignore_result_error is not True:
        raise RoundFailed(f"round {current}: no site of the buffer returned a result ({_describe(buffer.failures)})")
    if buffer.metrics:
        averaged = buffer.update(global_params, server_lr)
        averaged, state = algorithm.apply(global_params, averaged, {COUNT: len(buffer.weights)}, state, current)
        global_params = {**global_params, **averaged}
    if not finite(global_params):
        raise RoundFailed(f"round {current}: training diverged: the aggregated global model has NaN or Inf; lower lr")
    return global_params, state


def _fold(buffer: _Buffer, training: Training, outcome: Outcome, base: Params, weight: float, factors: dict[str, float],
          best_local_models: dict[str, LocalModel] | None, ignore_result_error: Optional[bool]) -> None:
    """One arrival into the buffer it lands in (a batch's trained weights come as its task's partial sum)."""
    if not outcome.ok:
        buffer.failures[outcome.site] = _failure(outcome)
        if ignore_result_error is False:
            raise RoundFailed(f"round {training.aggregation}: {outcome.site} {outcome.failure} and ignore_result_error=false")
        return
    result = outcome.value
    steps = result.meta[NUM_STEPS_CURRENT_ROUND]
    buffer.weights.append(factors.get(training.site, 1.0) * steps)  # the mean's divisor: no staleness
    buffer.metrics[outcome.site] = {**result.metrics, "num_steps": steps, "staleness": training.staleness,
                                    "start_version": training.version, "sim_seconds": training.arrival - training.start}
    buffer.started_from(training.version, base, weight)  # weight as the worker weighs a batch's site
    if result.params is not None:
        buffer.trained.add({k: v for k, v in result.params.items() if k in base}, weight)
    if best_local_models is not None and outcome.ref is not None:
        accuracy = result.metrics.get("local_val_accuracy", float("nan"))
        best = best_local_models.get(outcome.site)
        if best is None or not accuracy <= best.accuracy:
            kept = ray.put(local_model(result))
            best_local_models[outcome.site] = buffer.improved[outcome.site] = LocalModel(accuracy, kept)


class _Tasks:
    """The schedule's trainings as tasks: queued by version as each exists, released to `gather` a few at a time
    (the buffer that aggregates first, first), and each answer told back as its trainings' outcomes."""

    def __init__(self, num_rounds: int, sites_per_task: int, weight_factor: Callable[[Training], float],
                 excluded: Optional[re.Pattern], window: int) -> None:
        self.num_rounds, self.sites_per_task, self.weight_factor = num_rounds, sites_per_task, weight_factor
        self.excluded = excluded
        # Released tasks not yet answered: enough to keep every worker busy with one queued behind, few enough
        # that a task the next aggregation waits for is not queued behind later buffers' tasks.
        self.window = window
        self.ready: list[tuple[int, int, str, Call]] = []  # heap: (buffer it lands in, first training, label, call)
        self.trainings: dict[str, list[Training]] = {}  # label -> its trainings (a site's, or a batch's)
        self.batches: set[str] = set()  # labels of multi-site tasks, until they answer
        self.bases: dict[int, Params] = {}  # start version -> its weights (without exclude_vars), while in use
        self.users: Counter = Counter()  # start version -> trainings from it not yet answered
        self.out = 0

    def add(self, trainings: list[Training], params: Params, params_ref: ray.ObjectRef,
            message_ref: ray.ObjectRef | None) -> None:
        """Queue `trainings` (all from one version, `params`, in the object store as `params_ref`)."""
        if not trainings:
            return
        version = trainings[0].version
        self.bases[version] = {k: v for k, v in params.items() if not (self.excluded and self.excluded.search(k))}
        self.users[version] += len(trainings)
        # A task's sites share a start version and a round (a site drawn again from one version trains as another
        # round, Training.round, so its seeds differ); the worker sums them by the buffer each lands in: one task
        # for a version's trainings, not one per buffer they land in (W2: 1,495 tasks -> 500 for 5,000 trainings).
        groups: dict[int, list[Training]] = defaultdict(list)
        for training in trainings:
            groups[training.repeat].append(training)
        size = max(1, self.sites_per_task)
        for group in groups.values():
            for members in (group[i:i + size] for i in range(0, len(group), size)):
                first = members[0]
                if self.sites_per_task > 1:
                    label = f"batch-{first.index}"
                    self.batches.add(label)
                    call = partial(_train_batch, [t.site for t in members], params_ref, first.round(self.num_rounds),
                                   self.num_rounds, [self.weight_factor(t) for t in members], message_ref,
                                   [None] * len(members), groups=[t.aggregation for t in members])
                else:
                    label = f"{first.site}@{first.index}"
                    call = partial(_train, first.site, params_ref, first.round(self.num_rounds), self.num_rounds,
                                   message_ref, None)
                self.trainings[label] = members
                heapq.heappush(self.ready, (min(t.aggregation for t in members), first.index, label, call))

    def release(self) -> list[tuple[str, Call]]:
        """The next tasks for `gather`, while fewer than `window` are out."""
        released = []
        while self.ready and self.out < self.window:
            _, _, label, call = heapq.heappop(self.ready)
            released.append((label, call))
            self.out += 1
        return released

    def site_of(self, label: str) -> str:
        return self.trainings[label][0].site if label in self.trainings else label

    def done(self, outcome: Outcome) -> list[tuple[Training, Outcome]]:
        """A task's answer as its trainings' outcomes, each named by its site."""
        self.out -= 1
        members = self.trainings.pop(outcome.site)
        if outcome.site in self.batches:
            self.batches.discard(outcome.site)
            return list(zip(members, _site_outcomes(outcome, {outcome.site: [t.site for t in members]})))
        (site_outcome,) = _site_outcomes(outcome, {})
        site_outcome.site = members[0].site
        return [(members[0], site_outcome)]

    def forget(self, training: Training) -> None:
        """Its start version's weights are dropped once no training from it is left to fold."""
        self.users[training.version] -= 1
        if not self.users[training.version]:
            del self.bases[training.version], self.users[training.version]
