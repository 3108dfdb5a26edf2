"""The server: a Ray actor that runs the job's workflows in order.

It holds the global model and decides; it does no I/O and imports no torch.
Each finished round becomes an event (metrics plus an ObjectRef of the new
global weights) that the driver polls and writes to the run dir.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from functools import partial
from typing import Any, Callable

import numpy as np
import ray
from hydra.utils import instantiate
from omegaconf import OmegaConf
from ray.actor import ActorHandle

from fedray import algorithms
from fedray.aggregation import Params, pool_metrics
from fedray.config import fedbuff_concurrency, runs_own_code
from fedray.fl_model import Point
from fedray.privacy import PRIVACY_STATE, update_privacy
from fedray.privacy.server import ServerPrivacy
from fedray.python_path import put_on_python_path
from fedray.secure import secure
from fedray.server.tasks import Outcome, WorkerPool, gather
from fedray.server.workflows import (
    SERVER_MODELS,
    LocalModel,
    cross_site_model_eval,
    fedbuff,
    initialize_global_weights,
    sample_sites,
    scatter_and_gather,
)
from fedray.server.workflows.secagg import SecureAggregation
from fedray.system.availability import safe_load, site_traces
from fedray.system.clock import dropped, task_seconds
from fedray.system.profiles import build_profiles
from fedray.system.schedule import SyncClock, clock_runs, samples_per_task

log = logging.getLogger(__name__)

EVALUATION_TIMEOUT = 600.0
CROSS_SITE_DRAW = 2**31 - 1  # the "round" seeding cross-site's sample, apart from every training round's


class Controller:
    def __init__(
        self,
        job: dict[str, Any],
        sites: list[str],
        shared_data: list[ray.ObjectRef],
        val_index: np.ndarray,
        num_test: int,
        resume: dict[str, Any] | None = None,
        server_app: ActorHandle | None = None,
    ) -> None:
        """`shared_data`: the dataset's ObjectRefs, handed to each site actor as it starts (and restarts).
        `server_app`: a FLARE job's server components (fedray/server/flare_components.py) when its own
        ModelLocator names the server's models for cross-site evaluation."""
        self.job = job
        self.sites = sites
        self.data = shared_data
        # The sites sent the task each round (clients_per_round samples them): what "8/8 sites" counts.
        self.sites_per_round = min(job["workflows"]["scatter_and_gather"]["clients_per_round"] or len(sites), len(sites))
        self.pool: WorkerPool | None = None
        self.max_task_retries = job["site"]["max_task_retries"]
        self.val_index = val_index
        self.num_test = num_test
        # ObjectRefs only: the models themselves stay in Ray's object store.
        self.global_ref: ray.ObjectRef | None = None
        self.best_global_ref: ray.ObjectRef | None = None
        self.best_val_accuracy = -math.inf
        self.best_local_models: dict[str, LocalModel] = {}
        # The algorithm's server state (None: from its init) and each site's own state, as ObjectRefs.
        self.algorithm_state: Any = None
        self.site_states: dict[str, ray.ObjectRef] = {}
        self.privacy: ServerPrivacy | None = None  # central or local DP's server side, while rounds run
        if update_privacy(job["privacy"]):  # the ledger's one slow step, done while the sites start
            threading.Thread(target=ServerPrivacy.prepare, args=(job,), daemon=True, name="fedray-privacy").start()
        self.resume = resume
        self.server_app = server_app
        if resume:  # a stopped run's last finished round: see fedray/records/checkpoint.py
            self.global_ref, self.best_global_ref = resume["global"], resume["best_global"]
            self.best_val_accuracy = resume["best_val_accuracy"]
            self.best_local_models = {site: LocalModel(*model) for site, model in resume["best_local"].items()}
            self.algorithm_state = resume["algorithm_state"]
            self.site_states = dict(resume["site_states"])
        # What the driver has not taken yet, and how much it took before (drain's counts): the events and the
        # sites' streamed training curves (fedray/site/metric_stream.py).
        self.events: list[dict[str, Any]] = []
        self.points: list[Point] = []
        self.events_taken = self.points_taken = 0
        self.lock = threading.Lock()
        self.news = threading.Condition(self.lock)  # an event came
        self.workflows: threading.Thread | None = None

    def shared_data(self) -> list[ray.ObjectRef]:
        return self.data

    def start(self, workers: list[ActorHandle], one_actor_per_site: bool, processes: list[str]) -> None:
        """Start the workflows on a thread of the controller's own and return. Asked again (the driver's call
        failed in Ray's RPC, and Ray cannot tell whether it ran), it starts nothing twice; how the workflows
        ended is the last event ("end"), which the driver takes with the others (`drain`)."""
        with self.lock:
            if self.workflows is None:
                self.workflows = threading.Thread(target=self._run_to_end, name="workflows", daemon=True,
                                                  args=(workers, one_actor_per_site, processes))
                self.workflows.start()

    def _run_to_end(self, workers: list[ActorHandle], one_actor_per_site: bool, processes: list[str]) -> None:
        error = None
        try:
            self.run(workers, one_actor_per_site, processes)
        except Exception as err:  # the job's failure, said in one line by the driver
            lines = str(err).strip().splitlines()
            error = f"{type(err).__name__}: {lines[0] if lines else ''}"
        self._emit({"type": "end", "error": error})

    def run(self, workers: list[ActorHandle], one_actor_per_site: bool, processes: list[str]) -> None:
        """Run the enabled workflows in config order on these site actors (`processes`: their worker process
        ids, as their first `ready()` said: a later answer from another process means a restart)."""
        site = self.job["site"]
        self.pool = WorkerPool(workers, dict(zip(self.sites, workers)) if one_actor_per_site else None,
                               max_restarts=site["max_restarts"], stop_timeout=site["stop_timeout"],
                               restart_timeout=site["start_timeout"], processes=processes)
        workflows = {
            "pre_train": self._pre_train,
            "scatter_and_gather": self._scatter_and_gather,
            "cross_site_validate": self._cross_site_validate,
        }
        params: Params | None = ray.get(self.global_ref, timeout=300) if self.resume else None
        for workflow_id, args in self.job["workflows"].items():
            if self.resume and workflow_id == "pre_train":
                continue  # the global model comes from the checkpoint
            if args.get("enabled", True) and workflow_id in workflows:
                self._emit({"type": "workflow", "id": workflow_id})
                params = workflows[workflow_id](params, args)

    def add_points(self, points: list[Point]) -> None:
        """Points the sites stream while they train: the controller is their mailbox to the driver
        (an actor of its own cost a process start and a call per point batch more)."""
        with self.lock:
            self.points.extend(points)

    def drain(self, events_taken: int, points_taken: int, wait: float = 0.0) -> tuple[list[dict[str, Any]], list[Point]]:
        """The events and streamed points the driver has not taken yet, together: a site sends its points
        before it answers, so a round's curves come with (or before) its round event. The driver says how
        many of each it has taken so far, and only those are dropped here: a call whose answer Ray's RPC lost
        is asked again and answers the same again, never losing a round or writing it twice. With `wait`,
        the call returns once there is an event, or after `wait` seconds."""
        with self.news:
            del self.events[: events_taken - self.events_taken], self.points[: points_taken - self.points_taken]
            self.events_taken, self.points_taken = events_taken, points_taken
            if not self.events and wait > 0:
                self.news.wait(timeout=wait)
            return list(self.events), list(self.points)

    def _pre_train(self, params: Params | None, args: dict[str, Any]) -> Params:
        return initialize_global_weights(
            self.sites, self.pool, args["weight_method"], args["weights_client_name"], args["timeout"], self.max_task_retries
        )

    def _scatter_and_gather(self, params: Params | None, args: dict[str, Any]) -> Params:
        put_on_python_path(self.job)  # FedOpt builds the job's model (a FLARE job's custom/net.py) for its names
        if params is None:  # pre_train disabled: a site's seeded init is still the starting point
            params = initialize_global_weights(self.sites, self.pool, "first", None, self.job["workflows"]["pre_train"]["timeout"],
                                               self.max_task_retries)
        state = None if self.algorithm_state is None else dict(ray.get(self.algorithm_state, timeout=300))
        # DP's own server state (clip norm, ledgers) rides in the algorithm's, which the checkpoint keeps.
        privacy_saved = state.pop(PRIVACY_STATE, None) if state is not None else None
        self.privacy = privacy = ServerPrivacy(self.job, privacy_saved) if update_privacy(self.job["privacy"]) else None
        if args["mode"] == "fedbuff":
            return self._fedbuff(params, args, state)
        return scatter_and_gather(
            self.sites,
            self.pool,
            params,
            aggregate=instantiate(OmegaConf.create(self.job["aggregator"])),
            on_round_end=self._round_end,
            on_site_done=self._site_done,
            num_rounds=args["num_rounds"],
            start_round=self.resume["next_round"] if self.resume else args["start_round"],
            min_clients=args["min_clients"],
            clients_per_round=args["clients_per_round"],
            seed=self.job["seed"],
            wait_time_after_min_received=args["wait_time_after_min_received"],
            train_timeout=args["train_timeout"],
            aggregation_weights=args["aggregation_weights"],
            exclude_vars=args["exclude_vars"],
            ignore_result_error=args["ignore_result_error"],
            max_task_retries=self.max_task_retries,
            sites_per_task=self._sites_per_task(),
            # Only cross-site evaluation reads the sites' best local models.
            best_local_models=self.best_local_models if self.job["workflows"]["cross_site_validate"]["enabled"] else None,
            algorithm=algorithms.build(self.job.get("algorithm")),
            state=state,
            site_states=self.site_states,
            sampling=args["sampling"],
            privacy=privacy,
            on_stop=lambda reason: self._emit({"type": "privacy_budget", "message": reason}),
            clock=self._clock(params, args),
            # SecAgg+: the controller gets masked vectors only (fedray/server/workflows/secagg.py)
            secure=SecureAggregation(self.job, self.pool, args["train_timeout"], self.max_task_retries) if secure(self.job) else None,
            # secure_aggregation=he: the server's context, without the secret key (the driver's split, driver/job.py)
            he_context=self.job["secure_aggregation"].get("context") if self.job["secure_aggregation"]["mode"] == "he" else None,
        )

    def _fedbuff(self, params: Params, args: dict[str, Any], state: dict | None) -> Params:
        """mode=fedbuff (fedray/server/workflows/fedbuff.py): the aggregations of its schedule on the simulated clock."""
        concurrency = fedbuff_concurrency(self.job)
        return fedbuff(
            self.sites, self.pool, params,
            on_round_end=self._round_end, on_site_done=self._site_done, num_rounds=args["num_rounds"],
            concurrency=concurrency, buffer_size=args["buffer_size"] or concurrency, duration=self._task_seconds(params),
            traces=self._traces(), lost=self._lost(),
            staleness=args["staleness"], staleness_a=args["staleness_a"], staleness_b=args["staleness_b"],
            server_lr=args["server_lr"], start_round=self.resume["next_round"] if self.resume else args["start_round"],
            seed=self.job["seed"], train_timeout=args["train_timeout"], aggregation_weights=args["aggregation_weights"],
            exclude_vars=args["exclude_vars"], ignore_result_error=args["ignore_result_error"],
            # `concurrency` sites in flight, from concurrency / buffer_size versions: a version's trainings go as one
            # task while the versions in flight keep every worker busy, else they are split over the workers.
            max_task_retries=self.max_task_retries, sites_per_task=self._sites_per_task(concurrency),
            best_local_models=self.best_local_models if self.job["workflows"]["cross_site_validate"]["enabled"] else None,
            algorithm=algorithms.build(self.job.get("algorithm")), state=state,
        )

    def _task_seconds(self, params: Params) -> Callable[[str], float]:
        """A site task's simulated seconds (fedray/system/clock.py), from its profile, samples and the model's size."""
        profiles, samples, model_bytes = self._site_costs(params)
        return lambda site: task_seconds(profiles[site], model_bytes, samples[site])

    def _lost(self) -> Callable[[str, int], bool] | None:
        """FedBuff's seeded dropout (`system.dropout`): whether a site's task of a round is lost, drawn per
        (seed, round, site) as in synchronous rounds (fedray/system/clock.py); None when no task can be."""
        if not self.job["system"]["dropout"]:
            return None
        profiles, seed = build_profiles(self.job["system"], self.sites, self.job["seed"]), self.job["seed"]
        return lambda site, task_round: dropped(profiles[site], seed, task_round, site)

    def _traces(self) -> dict[str, dict] | None:
        """The sites' availability traces (`system.availability`), or None: always online."""
        path = self.job["system"]["availability"]
        return site_traces(safe_load(path), self.sites) if path else None

    def _site_costs(self, params: Params) -> tuple[dict, dict[str, int], int]:
        """Each site's profile (from the seed) and samples per task (from its shard), and the model's bytes."""
        job = self.job
        shards = ray.get(self.data[0], timeout=300)  # {site: Shard}: the partition's indices
        samples = {site: samples_per_task(len(shards[site].train), job["local_epochs"], job["batch_size"])
                   for site in self.sites}
        model_bytes = sum(np.asarray(value).nbytes for value in params.values()
                          if np.issubdtype(np.asarray(value).dtype, np.floating))
        return build_profiles(job["system"], self.sites, job["seed"]), samples, int(model_bytes)

    def _clock(self, params: Params, args: dict[str, Any]) -> SyncClock | None:
        """The simulated clock (fedray/system/), or None for uniform, always-online sites without round policies.
        Built from the job alone (profiles from the seed, each site's samples from its shard): never from Ray's
        timing. A resumed run's clock goes on from its last round's."""
        if not clock_runs(self.job):
            return None
        profiles, samples, model_bytes = self._site_costs(params)
        traces = self._traces() or {}
        return SyncClock(profiles, traces, samples, model_bytes, args["round_deadline"], args["over_selection"],
                         now=self.resume.get("sim_time", 0.0) if self.resume else 0.0)

    def _sites_per_task(self, per_round: int | None = None) -> int:
        """Batch a round's sites when a pool serves many small ones: a Ray task, a result in the object
        store and a fold per site cost more than training 5 steps. One batch per worker and round: a
        second batch made each worker wait a round trip to the controller in the middle of every round
        (W2: 0.405 -> 0.390 s a round with one). Not with cross-site evaluation (it needs each site's
        model), one actor per site, or an aggregator other than FedAvg (it gets each site's update)."""
        chosen = self.job["site"]["sites_per_task"]
        if chosen is not None:
            return chosen
        if (self.pool.home or self.job["workflows"]["cross_site_validate"]["enabled"]
                or self.job["aggregator"]["_target_"] != "fedray.aggregation.fedavg"):
            return 1
        return max(1, math.ceil((per_round or self.sites_per_round) / len(self.pool.workers)))

    def _cross_site_validate(self, params: Params | None, args: dict[str, Any]) -> Params | None:
        if self.global_ref is None:  # no FedAvg round ran: the server's model is the initial one
            self.global_ref = self.best_global_ref = ray.put(params)
        participating = args["participating_clients"] or self.sites
        if not args["participating_clients"] and len(self.sites) > args["max_participants"]:
            # Sites that never trained (clients_per_round) have no local model: sample among those that did.
            trained = [site for site in self.sites if site in self.best_local_models]
            pool = trained if len(trained) >= args["max_participants"] else self.sites
            participating = sample_sites(pool, args["max_participants"], self.job["seed"], CROSS_SITE_DRAW)
            log.warning("cross_site_validate: %d sites would make a %d x %d matrix; validating a seeded sample of %d "
                        "(set workflows.cross_site_validate.participating_clients or max_participants to choose)",
                        len(self.sites), len(self.sites), len(self.sites) + 2, len(participating))
        outcome = cross_site_model_eval(
            participating,
            self.pool,
            {site: model.result for site, model in self.best_local_models.items()},
            self._server_models(),
            submit_model_timeout=args["submit_model_timeout"],
            validation_timeout=args["validation_timeout"],
            max_task_retries=self.max_task_retries,
            # A site whose actor is still stuck in an abandoned task is skipped, not waited for.
            unavailable_after=self.job["site"]["stop_timeout"],
        )
        self._emit({"type": "cross_site", **outcome})
        return params

    def _server_models(self) -> dict[str, ray.ObjectRef]:
        """The last and the best global model, or what the FLARE job's own ModelLocator finds."""
        if self.server_app is None:
            return dict(zip(SERVER_MODELS, (self.global_ref, self.best_global_ref)))
        return ray.get(self.server_app.server_models.remote(self.global_ref, self.best_global_ref),
                       timeout=EVALUATION_TIMEOUT)

    def _site_done(self, current_round: int, outcome: Outcome) -> None:
        self._emit({
            "type": "site_done",
            "round": current_round,
            "num_rounds": self.job["workflows"]["scatter_and_gather"]["num_rounds"],
            "num_sites": self.sites_per_round,
            "site": outcome.site,
            "ok": outcome.ok,
        })

    def _round_end(self, current_round: int, params_ref: ray.ObjectRef, sites: dict, failures: dict, seconds: float,
                   improved: dict[str, LocalModel], state_ref: ray.ObjectRef, site_states: dict[str, ray.ObjectRef],
                   privacy: dict[str, Any] | None = None, sim_seconds: float = 0.0, sim_time: float = 0.0,
                   secure_aggregation: dict[str, Any] | None = None) -> None:
        started = time.perf_counter()
        num_rounds = self.job["workflows"]["scatter_and_gather"]["num_rounds"]
        metrics: dict[str, float] = {}
        if (current_round + 1) % self.job["eval_every"] == 0 or current_round + 1 == num_rounds:
            val, test = self._evaluate(params_ref, [("train", self.val_index), ("test", np.arange(self.num_test))])
            metrics = {"val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"], "test_loss": test["loss"]}
        evaluation_seconds = time.perf_counter() - started
        score = metrics.get("val_accuracy", -math.inf)  # an unscored round is never the best
        is_best = score > self.best_val_accuracy
        self.best_val_accuracy = max(self.best_val_accuracy, score)
        self.global_ref = params_ref
        if is_best or self.best_global_ref is None:
            self.best_global_ref = params_ref
        self._emit({
            "type": "round",
            "round": current_round,
            "num_rounds": num_rounds,
            "num_sites": self.sites_per_round,
            "global": metrics,  # empty in a round that eval_every skips
            "sites": sites,
            "failures": failures,
            "seconds": seconds + evaluation_seconds,
            "train_seconds": seconds,
            "evaluation_seconds": evaluation_seconds,
            "sim_seconds": sim_seconds,  # the round on the simulated clock (fedray/system/), and the clock after it
            "sim_time": sim_time,
            "is_best": is_best,
            "best_val_accuracy": self.best_val_accuracy,
            "params": params_ref,
            # For the checkpoint; a script or executor site answers submit_model itself, from its own state.
            "improved_local_models": {} if runs_own_code(self.job["site"]) else {site: tuple(m) for site, m in improved.items()},
            "algorithm_state": state_ref,  # the algorithm's server state after this round
            "site_states": site_states,  # the sites whose own state this round changed
            # DP: this round's record (epsilon so far, the clip norm it used) and the whole run's so far
            **({"privacy": privacy, "privacy_totals": self.privacy.totals()} if privacy is not None else {}),
            # SecAgg+: this round's bytes per site, seconds in key agreement, masking and unmasking, dropouts;
            # HE: the server's seconds adding ciphertexts, the bytes it received and sends each site
            **({"secure_aggregation": secure_aggregation} if secure_aggregation is not None else {}),
        })

    def _evaluate(self, params_ref: ray.ObjectRef, splits: list[tuple[str, np.ndarray]]) -> list[dict[str, float]]:
        """The global model on each (split, indices), cut over the free workers so they score it in
        parallel, every split in one wave; a part whose worker died runs again elsewhere."""
        workers = self.pool.free() or self.pool.workers
        calls = [
            (f"{split}-part-{k}", partial(_evaluate_part, params_ref, split, part))
            for split, indices in splits
            for k, part in enumerate(np.array_split(indices, len(workers)))
            if len(part)
        ]
        sums: dict[str, dict[str, float]] = {}
        for outcome in gather(calls, self.pool, timeout=EVALUATION_TIMEOUT, max_retries=self.max_task_retries):
            if outcome.ok:
                sums[outcome.site] = outcome.value
            else:  # score on the rest, and say so
                log.warning("global evaluation: %s %s: %s", outcome.site, outcome.failure, outcome.message)
        # Pooled in call order, not arrival order: the same bits whichever worker answered first.
        return [pool_metrics(*(sums[label] for label, _ in calls if label in sums and label.startswith(f"{split}-")))
                for split, _ in splits]

    def _emit(self, event: dict[str, Any]) -> None:
        with self.news:
            self.events.append(event)
            self.news.notify_all()


def _evaluate_part(params_ref: ray.ObjectRef, split: str, part: np.ndarray, worker: ActorHandle) -> ray.ObjectRef:
    return worker.evaluate_part.remote(params_ref, split, part)


# The workflows run on a thread of their own (start); these answer the driver's polls, the sites' points and
# starting sites' calls.
ControllerActor = ray.remote(num_cpus=0, max_concurrency=4)(Controller)
