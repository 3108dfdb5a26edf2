"""ScatterAndGather: FedAvg rounds, each result folded in as it arrives."""

from __future__ import annotations

import itertools
import logging
import math
import re
import time
from functools import partial
from typing import Callable, Iterator, NamedTuple, Optional

import numpy as np
import ray
from ray.actor import ActorHandle

from fedray.aggregation import NON_FINITE, CompensatedSum, Params, finite
from fedray.algorithms import COUNT, SITE_STATE, Algorithm
from fedray.fl_model import NUM_STEPS_CURRENT_ROUND, local_model
from fedray.privacy import PRIVACY_STATE, UNCLIPPED
from fedray.privacy.mechanisms import private_names
from fedray.privacy.server import ServerPrivacy
from fedray.secure import DROPPED_OUT
from fedray.secure import he
from fedray.server.tasks import Outcome, WorkerPool, gather
from fedray.server.workflows.secagg import SecureAggregation, Unrecoverable
from fedray.system import DROPPED, LATE
from fedray.system.schedule import Planned, SyncClock, over_selected_count

log = logging.getLogger(__name__)


class RoundFailed(RuntimeError):
    """A round cannot go on (too few results, or an error with ignore_result_error=false).

    Earlier rounds' outputs are kept; the message is one line with each site's failure.
    """


class LocalModel(NamedTuple):
    """A site's best local model so far: the train result it came from, in the object store."""

    accuracy: float
    result: ray.ObjectRef


def scatter_and_gather(
    sites: list[str],
    pool: WorkerPool,
    global_params: Params,
    *,
    aggregate: Callable[[Iterator[tuple[Params, float]]], Params],
    on_round_end: Callable[..., None],
    num_rounds: int,
    on_site_done: Callable[[int, Outcome], None] | None = None,
    start_round: int = 0,
    min_clients: int | None = None,
    clients_per_round: int | None = None,
    seed: int = 0,
    wait_time_after_min_received: float = 0.0,
    train_timeout: float = 0.0,
    aggregation_weights: dict[str, float] | None = None,
    exclude_vars: str | None = None,
    ignore_result_error: Optional[bool] = None,
    best_local_models: dict[str, LocalModel] | None = None,
    max_task_retries: int = 0,
    sites_per_task: int = 1,
    algorithm: Algorithm | None = None,
    state: dict | None = None,
    site_states: dict[str, ray.ObjectRef] | None = None,
    sampling: str = "fixed",
    privacy: ServerPrivacy | None = None,
    on_stop: Callable[[str], None] | None = None,
    clock: SyncClock | None = None,
    secure: SecureAggregation | None = None,
    he_context: bytes | None = None,
) -> Params:
    """Run FedAvg rounds `start_round .. num_rounds-1`.

    After each round, `on_round_end(round, global_ref, sites, failures, seconds, improved, state_ref,
    updated_site_states)` gets the new global weights as one ObjectRef, the sites whose best local
    model improved, the algorithm's server state (an ObjectRef) and the sites whose state changed.
    `algorithm` (default FedAvg) moves the global model and `state` (its server state, from
    `algorithm.init` when None) from each round's fold; `site_states` (ObjectRefs by site, updated
    in place) hold each site's own state between its rounds, outside every actor.
    `ignore_result_error` is FLARE's: None ignores failed sites while `min_clients` can still
    answer, False stops at the first failure, True always goes on with whatever arrived.
    `best_local_models` is updated in place (ObjectRefs: the models stay in the object store);
    None: no local model is kept (nothing will evaluate them). A task whose worker died runs
    again up to `max_task_retries` times. An update with NaN or Inf is a failed site (`non_finite`).
    `sampling`: fixed (exactly `clients_per_round` sites) or poisson (each site with p = clients_per_round/N).
    `privacy` (central or local DP, fedray/privacy/server.py): each site's result has weight 1, the round's
    models are averaged by it, and `on_round_end` gets its round record as `privacy=`; the rounds stop before
    one whose release would pass its budget, `on_stop` told why.
    `clock` (fedray/system/schedule.py; None: no simulated time, fedray's path of before): each round's sites
    sampled among those online, over-selected, and those that will not count (late, over-selected, dropped)
    known from the profiles before anything trains: they never train, and are failures of their kind.
    `on_round_end` then gets the round's simulated seconds and the clock after it (`sim_seconds`, `sim_time`).
    `secure` (SecAgg+, fedray/server/workflows/secagg.py): the round's sites agree keys before they train, send
    masked vectors, and the controller averages the unmasked sum (each site weight 1); `on_round_end` gets its
    costs as `secure_aggregation=`.
    `he_context` (secure_aggregation=he, fedray/secure/he.py: the server's context, no secret key): sites send
    ciphertexts, folded by adding them; the encrypted average becomes the global model, which only the sites can
    read (FLARE's HE shape); `on_round_end` gets the round's costs as `secure_aggregation=`.
    """
    per_round = clients_per_round or len(sites)
    all_sent = min_clients is None  # FLARE's default: a round waits for every site sent the task
    min_clients = min_clients or per_round
    factors = aggregation_weights or {}
    excluded = re.compile(exclude_vars) if exclude_vars else None
    algorithm = algorithm or Algorithm()
    state = algorithm.init(global_params, len(sites)) if state is None else state
    site_states = {} if site_states is None else site_states

    # One copy of the global weights in the object store per round, shared by every site.
    global_ref = ray.put(global_params)
    for current_round in range(start_round, num_rounds):
        started = time.perf_counter()
        budget_spent = privacy.stop_before(current_round) if privacy else None
        if budget_spent:
            log.warning("%s", budget_spent)
            if on_stop is not None:
                on_stop(budget_spent)
            break
        if clock is None:
            chosen = sample_sites(sites, per_round, seed, current_round, sampling)
            target, training, spared = len(chosen), chosen, {}
        else:
            waited = clock.wait_for_online(sites)  # the clock moves to the first site online, if none is
            online = clock.online(sites)
            target = min(per_round, len(online))
            chosen = sample_sites(online, over_selected_count(target, clock.over_selection, len(online)), seed,
                                  current_round, sampling)
            plan = clock.plan(chosen, target if sampling == "fixed" else len(chosen), seed, current_round)
            target, training, spared = min(target, len(chosen)), plan.counted, plan.spared
            sim_seconds = {planned.site: planned.seconds for planned in plan.sites}
        # Poisson's cohort varies: a round needs the sites it drew (or min_clients of them, at most all).
        needed = target if all_sent else min(min_clients, target)
        if len(training) < needed and ignore_result_error is not True:
            raise RoundFailed(f"round {current_round}: only {len(training)} of {len(chosen)} sites can count on the "
                              f"clock, min_clients={needed} needed ({_describe(_spared(spared, clock))})")
        secure_failures: dict[str, dict] = {}
        if secure is not None:  # stages 0-1: the sites that did not share their keys leave the round
            try:
                training, secure_failures = secure.begin(training, current_round)
            except Unrecoverable as err:
                raise RoundFailed(f"round {current_round}: {err} ({_describe(secure_failures)})") from None
        message = {**algorithm.message(state), **(privacy.message() if privacy else {}),
                   **(secure.message() if secure else {})}
        message_ref = ray.put(message) if message else None  # one copy for every site, as the model
        if sites_per_task > 1:  # a task per batch of sites: a round of many small sites costs a few tasks
            batches = {f"batch-{k + 1}": members for k, members in enumerate(_batches(training, sites_per_task, per_round, sampling))}
            calls = [(label, partial(_train_batch, members, global_ref, current_round, num_rounds,
                                     [factors.get(site, 1.0) for site in members], message_ref,
                                     [site_states.get(site) for site in members]))
                     for label, members in batches.items()]
        else:
            batches = {}
            calls = [(site, partial(_train, site, global_ref, current_round, num_rounds, message_ref, site_states.get(site)))
                     for site in training]
        outcomes = gather(
            calls,
            pool,
            min_results=needed,
            wait_after_min=wait_time_after_min_received,
            timeout=train_timeout * max(1, sites_per_task),  # train_timeout is per site
            max_retries=max_task_retries,
            count=lambda outcome: _answered(outcome, batches),
        )
        site_metrics: dict[str, dict] = {}
        failures: dict[str, dict] = {**_spared(spared, clock), **secure_failures}
        improved: dict[str, LocalModel] = {}
        updated_site_states: dict[str, ray.ObjectRef] = {}
        extra_sums = {key: CompensatedSum() for key in algorithm.result_keys}
        unclipped: dict[str, bool] = {}  # under DP: each answering site's update was within the clip norm
        stop: list[str] = []

        def arriving_updates() -> Iterator[tuple[Params, float] | CompensatedSum]:
            for task_outcome in outcomes:
                for outcome in _site_outcomes(task_outcome, batches):
                    if on_site_done is not None:
                        on_site_done(current_round, outcome)
                    if not outcome.ok:
                        failures[outcome.site] = _failure(outcome)
                        log.warning("round %d: %s %s: %s", current_round, outcome.site, outcome.failure, outcome.message)
                        reason = _must_stop(ignore_result_error, outcome, len(chosen) - len(failures), needed)
                        if reason:
                            stop.append(reason)
                            outcomes.close()  # gives up the tasks still running
                            return
                        continue
                    update = take_result(outcome)
                    if update is not None:
                        yield update
                if secure is not None and task_outcome.site in batches and task_outcome.ok:
                    secure.take_batch(task_outcome.value)  # the batch's sum of masked vectors
                if task_outcome.site in batches and task_outcome.ok and _holds_sum(task_outcome.value["sum"]):
                    # The batch's sites, already weighted and summed by the worker that trained them.
                    yield _without(task_outcome.value["sum"], excluded)

        def take_result(outcome: Outcome) -> tuple[Params, float] | None:
            """Record a site's result; its (params, weight) to fold, or None when a batch's sum holds them."""
            result = outcome.value
            steps = result.meta[NUM_STEPS_CURRENT_ROUND]
            site_metrics[outcome.site] = {**result.metrics, "num_steps": steps}
            if clock is not None:
                site_metrics[outcome.site]["sim_seconds"] = sim_seconds[outcome.site]
            if best_local_models is not None and outcome.ref is not None:
                local_accuracy = result.metrics.get("local_val_accuracy", float("nan"))
                best = best_local_models.get(outcome.site)
                # Written so that NaN (no validation split, or a script site) keeps the latest model.
                if best is None or not local_accuracy <= best.accuracy:
                    # A copy owned and stored here, on the driver's node: the task's own result lives on
                    # the site's node, and a lost node must not take a site's best model with it.
                    kept = ray.put(local_model(result))
                    best_local_models[outcome.site] = improved[outcome.site] = LocalModel(local_accuracy, kept)
            # Under DP every site's clipped update counts the same (its steps would tell about its data).
            weight = 1.0 if privacy else factors.get(outcome.site, 1.0) * steps
            if privacy:
                unclipped[outcome.site] = result.meta[UNCLIPPED]
            for key, total in extra_sums.items():
                # each site once, in an order-independent sum
                total.add(result.meta[key], weight if algorithm.weighs_results else 1.0)
            if SITE_STATE in result.meta:
                # Kept in the object store, owned here, until the site's next round.
                updated_site_states[outcome.site] = ray.put(result.meta[SITE_STATE])
            if secure is not None:
                secure.take_site(outcome.site, result)  # its masked vector; its params are None
            if he.UPDATE in result.meta:  # a ciphertext: the site weighed its update itself
                return result.meta.pop(he.UPDATE)
            if result.params is None:
                return None
            params = {k: v for k, v in result.params.items() if not (excluded and excluded.search(k))}
            return params, weight

        updates = secure.unmasked(arriving_updates(), global_params) if secure else arriving_updates()
        try:
            if he_context is not None:
                aggregated, he_costs = _fold_encrypted(updates, he_context)
            elif privacy:  # central DP's noise is added to the unmasked sum, as the server would
                aggregated = privacy.aggregate(updates, global_params, private_names(global_params, exclude_vars),
                                               current_round)
            else:
                aggregated = _aggregate_any(aggregate, updates)
        except Unrecoverable as err:
            raise RoundFailed(f"round {current_round}: {err} ({_describe(failures)})") from None
        diverged = [site for site, failure in failures.items() if failure["kind"] == "non_finite"]
        if diverged and not site_metrics:
            raise RoundFailed(f"round {current_round}: training diverged: every update had NaN or Inf weights "
                              f"({', '.join(diverged)}); lower lr")
        if stop or (len(site_metrics) < needed and ignore_result_error is not True):
            reason = stop[0] if stop else f"{len(site_metrics)} of {len(chosen)} sites returned results, min_clients={needed} needed"
            raise RoundFailed(f"round {current_round}: {reason} ({_describe(failures)})")
        if aggregated:  # a round where no site answered (ignore_result_error=true) moves nothing
            sums = {key: total.result(total.total_weight if algorithm.weighs_results else 1.0)
                    for key, total in extra_sums.items()}
            aggregated, state = algorithm.apply(global_params, aggregated, {**sums, COUNT: len(site_metrics)}, state,
                                                current_round)
        site_states.update(updated_site_states)
        if he_context is not None:  # FLARE's HE: the encrypted average is the global model now (none: no site answered)
            global_params = aggregated or global_params
        elif not finite(global_params := {**global_params, **aggregated}):
            raise RoundFailed(f"round {current_round}: training diverged: the aggregated global model has NaN or Inf; lower lr")
        global_ref = ray.put(global_params)
        # A round that failed above released nothing and spends nothing; this one released its model.
        extra = {"privacy": privacy.close_round(current_round, unclipped)} if privacy else {}
        if secure is not None:
            extra["secure_aggregation"] = secure.record(site_metrics)
        server_state = {**state, PRIVACY_STATE: privacy.state()} if privacy else state
        if he_context is not None:
            extra["secure_aggregation"] = he_costs
        if clock is not None:
            clock.now += plan.seconds
            extra.update(sim_seconds=waited + plan.seconds, sim_time=clock.now)
        on_round_end(current_round, global_ref, site_metrics, failures, time.perf_counter() - started, improved,
                     ray.put(server_state), updated_site_states, **extra)
    return global_params


def sample_sites(sites: list[str], count: int, seed: int, current_round: int, sampling: str = "fixed") -> list[str]:
    """The sites that train in `current_round`: all of them, or a sample fixed by (seed, round): exactly
    `count` without replacement, or (poisson) each site with probability count/len(sites), maybe none."""
    if count >= len(sites):
        return list(sites)
    draw = np.random.default_rng([seed, current_round])
    if sampling == "poisson":
        return [site for site, joins in zip(sites, draw.random(len(sites)) < count / len(sites)) if joins]
    picked = draw.choice(len(sites), size=count, replace=False)
    return [sites[i] for i in sorted(picked)]


def _batches(chosen: list[str], sites_per_task: int, per_round: int, sampling: str) -> list[list[str]]:
    """The round's sites in tasks of `sites_per_task`; a Poisson cohort, whose size varies round to round, in
    as many tasks as the expected cohort makes (sized evenly), not in one more for the few sites over it."""
    if sampling == "poisson" and chosen:
        count = min(len(chosen), math.ceil(per_round / sites_per_task))
        return [list(part) for part in np.array_split(np.array(chosen, dtype=object), count)]
    return [chosen[start:start + sites_per_task] for start in range(0, len(chosen), sites_per_task)]


def _must_stop(ignore_result_error: Optional[bool], outcome: Outcome, still_possible: int, min_clients: int) -> str:
    """FLARE's ignore_result_error: why this failure ends the run, or "" to go on without the site."""
    if outcome.failure == "abandoned":
        return ""  # a late site after the round closed on time is no error, as in FLARE
    if ignore_result_error is False:
        return f"{outcome.site} {outcome.failure} and ignore_result_error=false"
    if ignore_result_error is None and still_possible < min_clients:
        return f"only {still_possible} sites can still answer, min_clients={min_clients} needed"
    return ""


def _site_outcomes(outcome: Outcome, batches: dict[str, list[str]]) -> list[Outcome]:
    """A task's outcome as its sites' outcomes: FLARE's rules (failures, min_clients) stay per site."""
    if outcome.site not in batches:
        if outcome.ok and DROPPED_OUT in outcome.value.meta:  # SecAgg+: it sent no masked vector
            failure, message = outcome.value.meta[DROPPED_OUT]
            return [Outcome(outcome.site, failure=failure, seconds=outcome.seconds, message=message)]
        if outcome.ok and outcome.value.params is not None and not finite(outcome.value.params):
            return [Outcome(outcome.site, failure="non_finite", seconds=outcome.seconds,
                            message=NON_FINITE)]
        return [outcome]
    members = batches[outcome.site]
    if not outcome.ok:  # the whole batch timed out, was abandoned, or its worker died too often
        return [Outcome(site, failure=outcome.failure, message=outcome.message, seconds=outcome.seconds,
                        retries=outcome.retries) for site in members]
    site_outcomes = []
    for site in members:
        result = outcome.value["results"][site]
        if isinstance(result, tuple):  # (kind, message): this site failed inside the batch
            site_outcomes.append(Outcome(site, failure=result[0], message=result[1], retries=outcome.retries))
        else:
            site_outcomes.append(Outcome(site, value=result, seconds=result.metrics.get("seconds", 0.0),
                                         retries=outcome.retries))
    return site_outcomes


def _answered(outcome: Outcome, batches: dict[str, list[str]]) -> int:
    """How many sites a task's outcome brought results for (what min_clients counts)."""
    if not outcome.ok:
        return 0
    if outcome.site not in batches:
        return 1
    return sum(not isinstance(result, tuple) for result in outcome.value["results"].values())


def _holds_sum(total: CompensatedSum | he.Encrypted | None) -> bool:
    """A batch's partial sum holds a site: plain (its compensated sum) or under HE (the members' ciphertexts)."""
    return isinstance(total, he.Encrypted) or bool(total is not None and total.sums)


def _fold_encrypted(updates: Iterator[he.Encrypted], context: bytes) -> tuple[he.Encrypted | None, dict]:
    """secure_aggregation=he: the round's ciphertexts added as they arrive, without the secret key (FLARE's
    HEInTimeAccumulateWeightedAggregator), the weight sum kept plain; and the round's costs at the server."""
    total, received = he.CipherSum(context), 0
    for update in updates:
        received += update.nbytes
        total.add(update)
    aggregate = total.result()
    return aggregate, {"mode": "he", "aggregate_seconds": round(total.seconds, 6), "bytes_received": received,
                       "global_bytes": aggregate.nbytes if aggregate else 0}


def _without(total: CompensatedSum, excluded: Optional[re.Pattern]) -> CompensatedSum:
    """A batch's sum without the variables that keep their global values (exclude_vars)."""
    if excluded is None:
        return total
    for name in [name for name in total.sums if excluded.search(name)]:
        del total.sums[name], total.errors[name], total.dtypes[name]
    return total


def _aggregate_any(aggregate: Callable, updates: Iterator[tuple[Params, float]]) -> Params:
    """`aggregate(updates)`, or nothing when no site answered (aggregators need one update at least)."""
    first = next(updates, None)
    return {} if first is None else aggregate(itertools.chain([first], updates))


def _train_batch(sites: list[str], global_ref: ray.ObjectRef, current_round: int, num_rounds: int, factors: list[float],
                 message_ref: ray.ObjectRef | None, site_state_refs: list, worker: ActorHandle, groups: list[int] | None = None):
    return worker.train_sites.remote(sites, global_ref, current_round, num_rounds, factors, message_ref, site_state_refs,
                                     groups)


def _train(site: str, global_ref: ray.ObjectRef, current_round: int, num_rounds: int,
           message_ref: ray.ObjectRef | None, site_state_ref: ray.ObjectRef | None, worker: ActorHandle):
    return worker.train.remote(site, global_ref, current_round, num_rounds, message_ref, site_state_ref)


def _spared(spared: dict[str, Planned], clock: SyncClock | None) -> dict[str, dict]:
    """The sites the clock left out, as failures of their kind (they never trained: no real seconds)."""
    failures = {}
    for site, planned in spared.items():
        if planned.kind == DROPPED and planned.offline_at is not None:
            message = (f"dropped out: offline at {planned.offline_at:.6g} simulated s, before it would finish at "
                       f"{clock.now + planned.seconds:.6g}")
        elif planned.kind == DROPPED:
            message = "dropped out (its seeded dropout draw, system.dropout)"
        elif planned.kind == LATE:
            message = f"would finish after {planned.seconds:.4g} simulated s, past round_deadline={clock.deadline:g}"
        else:
            message = f"over-selected: enough sites finished before its {planned.seconds:.4g} simulated s"
        failures[site] = {"kind": planned.kind, "message": message, "seconds": 0.0, "sim_seconds": planned.seconds}
    return failures


def _failure(outcome: Outcome) -> dict:
    return {"kind": outcome.failure, "message": outcome.message, "seconds": round(outcome.seconds, 3)}


def _describe(failures: dict[str, dict]) -> str:
    return "; ".join(f"{site}: {f['kind']}: {f['message']}" for site, f in failures.items()) or "no failures reported"
