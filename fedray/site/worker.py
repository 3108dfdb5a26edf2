"""The torch side of a site worker: FLARE's client tasks for any site, in the site actor's process.

`fedray/site/actor.py` is the Ray actor and builds a `TorchWorker` when it starts; this module is
imported there only (never by the controller, which holds the actors' handles).

A worker hosts any site: the whole dataset sits once in Ray's object store and each worker reads
it zero-copy (moved once to the GPU when it has one), so a site is just its shard's indices. Batches are drawn by indexing and normalized
on the fly; no per-sample decoding, no per-site copies of the data.

Tasks: `get_weights` (client-side model init), `train` (a FedAvg local
update), `submit_model` (a site's best local model), `validate_models` (models
on a site's validation split, for cross-site evaluation), `evaluate_part` (a
model on given indices, for the server's global metrics).
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import ray
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from ray.actor import ActorHandle
from ray.exceptions import ActorUnavailableError

from fedray import algorithms
from fedray.aggregation import NON_FINITE, CompensatedSum, finite, pool_metrics
from fedray.algorithms import SITE_STATE
from fedray.config import per_site_curves
from fedray.data.partition import Shard
from fedray.fl_model import ACCURACY_KEYS, LOCAL_MODEL, NUM_STEPS_CURRENT_ROUND, FLModel, ParamsType, accuracy_of
from fedray.privacy.flare_filters import WEIGHT_DIFF, WEIGHTS, sent_weights, train_filters
from fedray.privacy import update_privacy
from fedray.privacy.mechanisms import private_names
from fedray.privacy.site import release
from fedray.python_path import put_on_python_path
from fedray.secure import site as secure_site
from fedray.secure import BEFORE_MASKING, DROPPED_OUT, MASKED, SECAGG, SECONDS, secure
from fedray.secure.quantize import flat_update
from fedray.secure import he
from fedray.site import memory_watch
from fedray.site import metric_stream as tracking  # FLARE calls it tracking
from fedray.site.batched_training import train_sites_batched
from fedray.site.encryption import SiteEncryption
from fedray.site.executor_runner import ExecutorSite
from fedray.site.script_runner import ScriptError, ScriptSite
from fedray.site.training import (
    TrainingStopped,
    evaluate,
    get_params,
    load_params,
    local_optimizer,
    plain_sgd,
    reloader,
    to_device,
    train_epochs,
)

# Training-loss points each site streams per round, whatever its shard size: a curve in
# TensorBoard, and a host sync only every few steps on a GPU.
LOSS_POINTS_PER_ROUND = 20
DATA_TIMEOUT = 600.0  # seconds to fetch the dataset from the object store (another node's, on a cluster)
LOOKUP_TIMEOUT = 60.0  # seconds for the job's named actors to be registered
FILTER_STREAM = 1  # the result filters' random stream beside the batch order's (seed, round, site)
DP_NOISE_STREAM = 2  # dp_sgd's noise, likewise


class TorchWorker:
    def __init__(
        self,
        job: dict[str, Any],
        num_threads: int,
        home_site: str | None = None,
        namespace: str | None = None,
        data_holder: str = "controller",
        metric_stream: str | None = "controller",
    ) -> None:
        """`data_holder`, `metric_stream`: names of actors in `namespace` (default: the job id's). The holder's
        `shared_data()` gives the ObjectRefs of (shards by site, train images, train labels, test
        images, test labels), which the actor reads zero-copy. Names, not handles or refs: Ray
        restarts a dead site actor by calling this again, and constructor arguments that live in
        the object store could be gone by then (Ray logs an error line for each such actor)."""
        self.job = job
        namespace = namespace or job["job_id"]
        # Why this actor's predecessor died, if Ray restarted it after its memory monitor killed it.
        memory_note = memory_watch.note_path(namespace, ray.get_runtime_context().get_actor_name() or str(os.getpid()))
        self.predecessor_died_of = memory_watch.death_cause(memory_watch.predecessor(memory_note))
        memory_watch.start(memory_note)
        # torch and the model first: these seconds overlap the driver's reading of the data.
        use_gpu = torch.cuda.is_available() and len(ray.get_gpu_ids()) > 0
        self.device = torch.device("cuda" if use_gpu else "cpu")
        torch.set_num_threads(num_threads)
        # Every site starts from the same seeded weights, so `first` in pre_train is deterministic.
        torch.manual_seed(job["seed"])
        put_on_python_path(job, job["site"]["script"])  # the job's own model module (a FLARE job's custom/)
        self.model = instantiate(OmegaConf.create(job["model"])).to(self.device)
        if not plain_sgd(job):
            # The first torch optimizer in a process imports torch._dynamo (~1.5 s of CPU): pay it while
            # the actor starts, not inside the first round's train_timeout.
            torch.optim.SGD(self.model.parameters(), lr=job["lr"])
        # The driver starts the controller once the data is read, which may be after this actor is up.
        holder = _named_actor(data_holder, namespace, timeout=DATA_TIMEOUT)
        shards, train_images, train_labels, test_images, test_labels = ray.get(
            _asked_again(holder.shared_data, DATA_TIMEOUT), timeout=DATA_TIMEOUT)
        self.shards: dict[str, Shard] = shards
        self.train_images, self.train_labels = to_device(train_images, train_labels, self.device)
        self.test_images, self.test_labels = to_device(test_images, test_labels, self.device)
        self.algorithm = algorithms.build(job.get("algorithm"))
        self.process = ray.get_runtime_context().get_worker_id()
        # Central or local DP: each site's update is clipped (and, local, noised) here, before it leaves the site.
        self.private = update_privacy(job["privacy"])
        # FLARE's result filters of a train result (flare.task_result_filters; flare_job= sets them).
        self.result_filters = train_filters((job.get("flare") or {}).get("task_result_filters") or [])
        # SecAgg+ (fedray/secure/): each site's update leaves it quantized and masked, never in the clear.
        self.secure = secure_site.Settings.of(job) if secure(job) else None
        self.privacy = job.get("privacy") or {}
        # secure_aggregation=he: global models arrive encrypted, updates leave encrypted (fedray/site/encryption.py).
        # The secret key from the job's key holder, by name as the data (FLARE's client startup kit's context).
        self.he = SiteEncryption(job, ray.get(_named_actor(he.KEY_HOLDER, namespace).site_context.remote(),
                                              timeout=DATA_TIMEOUT)) if job["secure_aggregation"]["mode"] == "he" else None
        self.noise_multipliers: dict[tuple[int, int], float] = {}  # dp_sgd's, by (records, rounds): calibrated once
        # Without per-site curves (a cross-device run's hundreds of sites) nothing is streamed at all.
        self.streams = bool(metric_stream) and per_site_curves(job)
        tracking.connect(_named_actor(metric_stream, namespace) if self.streams else None)
        # The site's own code, a Client API script or FLARE executors, runs in the actor of its own site
        # (one actor per site, see resources.py) and answers the tasks fedray sends it.
        self.app: ScriptSite | ExecutorSite | None = None
        self.last_global: Mapping[str, np.ndarray] | None = None
        if job["site"]["flare_app"]:
            self.app = ExecutorSite(home_site, job["site"]["flare_app"], job,
                                    is_cancelled=ray.get_runtime_context().is_canceled)
        elif job["site"]["script"]:
            self.app = ScriptSite(home_site, job["site"]["script"], job["site"]["script_args"], job,
                                  stream=tracking.stream)
            self.app.start()

    def ready(self) -> dict[str, Any]:
        # "process": which incarnation answers (a new one after a restart; the same after a lost call).
        return {"device": str(self.device), "threads": torch.get_num_threads(), "process": self.process,
                "predecessor_died_of": self.predecessor_died_of}

    def get_weights(self, site: str) -> FLModel:
        """The initial weights (pre_train): the site's executor's, if it serves get_weights (FLARE's
        InitializeGlobalWeights asks it), else fedray's model built with the job's seed."""
        if isinstance(self.app, ExecutorSite) and self.app.serves("get_weights"):
            return FLModel(params=self._checked_params(self.app.ask("get_weights", FLModel())))
        torch.manual_seed(self.job["seed"])
        fresh = instantiate(OmegaConf.create(self.job["model"]))
        return FLModel(params=get_params(fresh))

    def train(self, site: str, global_params: Mapping[str, np.ndarray], current_round: int, total_rounds: int,
              message: Optional[Mapping[str, Any]] = None, site_state: Optional[Mapping[str, np.ndarray]] = None) -> FLModel:
        """A local update from `global_params`. `message` is what the algorithm's server part sends
        each site this round (meta keys to arrays, e.g. SCAFFOLD's global control variate),
        `site_state` this site's own state from its last round (None at first)."""
        global_params = self._plain(global_params)
        if self.app:
            result = self._train_script(global_params, current_round, total_rounds, message or {})
            return self._sealed(site, self._released(site, result, global_params, message, current_round))

        result = self._local_update(site, global_params, lambda: load_params(self.model, global_params), current_round,
                                    total_rounds, message, site_state)
        tracking.flush()  # the driver's mailbox has this site's streamed points before its result
        return self._sealed(site, self._released(site, result, global_params, message, current_round))

    def _plain(self, params: Any) -> Any:
        """The global model a task brings, decrypted under secure_aggregation=he."""
        return self.he.plain(params) if self.he else params

    def _sealed(self, site: str, result: FLModel) -> FLModel:
        """Under secure_aggregation=he the result's update encrypted, weighed by its steps (fedray/site/encryption.py)."""
        return self.he.seal(site, result, result.meta[NUM_STEPS_CURRENT_ROUND]) if self.he else result

    def _released(self, site: str, result: FLModel, global_params: Mapping[str, np.ndarray],
                  message: Optional[Mapping[str, Any]], current_round: int) -> FLModel:
        """The result as it may leave the site: under DP its update clipped (local: and noised), and in its
        meta whether the update was within the clip norm (fedray/privacy/site.py)."""
        if self.private and result.params is not None:
            result.params, extra = release(result.params, global_params, self.job, message or {}, current_round,
                                           _site_number(site))
            result.meta.update(extra)
        if self.secure is not None and result.params is not None:
            self._mask(site, result, global_params, message or {}, current_round)
        return result

    def _mask(self, site: str, result: FLModel, global_params: Mapping[str, np.ndarray], message: Mapping[str, Any],
              current_round: int) -> None:
        """SecAgg+'s stage 2 (fedray/secure/site.py), in place: the result's params become the site's masked, quantized
        update (meta[MASKED]); or, for a site that drops out here (its seeded draw) or diverged, nothing but why."""
        started, number, params = time.perf_counter(), _site_number(site), result.params
        result.params = None
        if secure_site.drops(self.secure, current_round, number, BEFORE_MASKING):
            result.meta[DROPPED_OUT] = ("dropped", "dropped out before sending its masked vector "
                                                   "(secure_aggregation.dropout_at=before_masking)")
        elif not finite(params):
            result.meta[DROPPED_OUT] = ("non_finite", NON_FINITE)
        else:
            names = private_names(global_params, self.job["workflows"]["scatter_and_gather"]["exclude_vars"])
            update = flat_update(params, global_params, names)
            result.meta[MASKED] = secure_site.masked_input(self.secure, current_round, number, update,
                                                           message[SECAGG][number])
        result.metrics[SECONDS] = time.perf_counter() - started

    def secagg_stage(self, stage: str, sites: Sequence[str], current_round: int,
                     requests: Mapping[str, Any]) -> dict[str, Any]:
        """A key stage of SecAgg+ for several sites (fedray/secure/site.py `answer`): {"answers": site -> answer,
        "seconds": the stage's seconds here}."""
        started = time.perf_counter()
        answers = {site: secure_site.answer(stage, self.secure, current_round, _site_number(site), requests.get(site))
                   for site in sites}
        return {"answers": answers, "seconds": time.perf_counter() - started}

    def _weight(self, factor: float, steps: int) -> float:
        """A site's weight in a batch's sum: FedAvg's factor x steps; under DP every site's the same, 1."""
        return 1.0 if self.private else factor * steps

    def _local_update(self, site: str, global_params: Mapping[str, np.ndarray], load: Callable[[], None],
                      current_round: int, total_rounds: int, message: Optional[Mapping[str, Any]],
                      site_state: Optional[Mapping[str, np.ndarray]], copy: bool = True) -> FLModel:
        """`train` of a built-in site, the global weights put into the model by `load()`; `copy=False`:
        the result's params are views of the model, valid until it trains again (a batch folds them first)."""

        started = time.perf_counter()
        shard = self.shards[site]
        load()
        received = self._score(site)
        dp_round = None
        if self.privacy.get("mode") == "dp_sgd":
            from fedray.site import dp_sgd  # here: Opacus's import costs seconds, and only dp_sgd needs it

            history, site_state = dp_sgd.split_state(site_state)  # Opacus's accountant's, and the algorithm's
        client = self.algorithm.client(self.model, global_params, message or {}, site_state)
        optimizer, scheduler = local_optimizer(self.model, self.job, current_round)
        generator = self._shuffle(site, current_round)
        if self.privacy.get("mode") == "dp_sgd":
            dp_round = self._dp_sgd(site, optimizer, generator, history, current_round, total_rounds)
        # Every round of a site takes the same steps, so its loss curve continues across rounds.
        steps_per_round = self.job["local_epochs"] * math.ceil(len(shard.train) / self.job["batch_size"])
        first_step = current_round * steps_per_round
        try:
            train_loss, steps = train_epochs(
                self.model,
                self.train_images,
                self.train_labels,
                shard.train,
                epochs=self.job["local_epochs"],
                batch_size=self.job["batch_size"],
                lr=self.job["lr"],
                momentum=self.job["momentum"],
                generator=generator,
                on_loss=(lambda step, loss: tracking.stream(site, "train_loss", loss, first_step + step)) if self.streams else None,
                loss_every=max(1, steps_per_round // LOSS_POINTS_PER_ROUND),
                optimizer=dp_round.optimizer if dp_round else optimizer,
                scheduler=scheduler,
                client=client,
                # A task the server gave up on (late at a round's close, or timed out) stops within a batch.
                should_stop=ray.get_runtime_context().is_canceled,
                forward=dp_round.module if dp_round else None,
                batches=dp_round.batches if dp_round else None,
            )
        finally:
            if dp_round:
                dp_round.close()  # Opacus's hooks off the model, which this worker's other sites share
        extra, new_site_state = client.results(self.model)
        dp_metrics = {}
        if dp_round:
            new_site_state = dp_sgd.joined_state(dp_round.history, new_site_state)
            dp_metrics = {"dp_epsilon": dp_sgd.epsilon(dp_round.history, self.privacy["delta"]),
                          "dp_noise_multiplier": dp_round.optimizer.noise_multiplier,
                          "dp_steps": sum(entry[2] for entry in dp_round.history)}
        if new_site_state is not None:
            extra[SITE_STATE] = new_site_state
        # The trained model on the same split: the server keeps each site's best one for cross-site evaluation.
        local = self._score(site)
        params = get_params(self.model, copy=copy)
        sent = self._filtered(site, params, global_params, steps, current_round)
        if sent is not params and self.job["workflows"]["cross_site_validate"]["enabled"]:
            # What FLARE's learner submits for cross-site evaluation is its own model, not what it sent.
            extra[LOCAL_MODEL] = params
        return FLModel(
            params=sent,
            metrics={
                "train_loss": train_loss,
                "val_accuracy": received["accuracy"],  # of the global model this round started from
                "val_loss": received["loss"],
                "local_val_accuracy": local["accuracy"],
                "local_val_loss": local["loss"],
                "seconds": time.perf_counter() - started,
                **dp_metrics,
            },
            meta={NUM_STEPS_CURRENT_ROUND: steps, **extra},
            current_round=current_round,
            total_rounds=total_rounds,
        )

    def train_sites(self, sites: Sequence[str], global_params: Mapping[str, np.ndarray], current_round: int,
                    total_rounds: int, factors: Sequence[float], message: Optional[Mapping[str, Any]] = None,
                    site_states: Optional[Sequence[Any]] = None, groups: Optional[Sequence[int]] = None) -> dict[str, Any]:
        """Several sites' `train`, one after another, from one fetch of the global weights (a
        cross-device round's many small sites). Returns {"sum": the compensated sum of their weights,
        each times factor x steps, "results": site -> FLModel without params, or (kind, message)
        for a site that failed}. The sum is exact enough that any batching gives the same bits.
        `groups`: the sum each site goes to (FedBuff: the buffer it lands in); then {"sums": group -> sum, ...}."""

        global_params = self._plain(global_params)
        if self.job["site"].get("batched_training"):
            return self._train_sites_at_once(sites, global_params, current_round, total_rounds, factors, message, groups)
        totals = _Sums(groups, len(sites))
        masked: list[np.ndarray] = []  # SecAgg+: the batch's sum of masked vectors, once there is one
        ciphers: list[he.CipherSum] = []  # HE: each site encrypts its own update; the batch adds the ciphertexts
        results: dict[str, Any] = {}
        states = site_states or [None] * len(sites)
        reload = reloader(self.model, global_params)  # the global weights as tensors once, for every site
        # ObjectRefs of site states are resolved here, one site at a time (Ray resolves only top-level refs).
        for site, factor, state, total in zip(sites, factors, states, totals.each):
            try:
                state = ray.get(state, timeout=DATA_TIMEOUT) if isinstance(state, ray.ObjectRef) else state
                # Folded before the next site trains: its params can be views of the model, not copies.
                result = self._local_update(site, global_params, reload, current_round, total_rounds, message, state,
                                            copy=False)
                result = self._released(site, result, global_params, message, current_round)
                if self.secure is not None:  # the batch adds its sites' masked vectors, modulo 2^modulus_bits
                    results[site] = _masked_into(masked, result)
                elif self.he:
                    results[site] = self._encrypted_into(ciphers, site, result)
                else:
                    results[site] = _summed(total, result.params, self._weight(factor, result.meta[NUM_STEPS_CURRENT_ROUND])) or result
            except TrainingStopped:
                raise  # the whole batch was given up on
            except FloatingPointError:  # HE: an update with NaN or Inf cannot be encoded
                results[site] = ("non_finite", NON_FINITE)
                continue
            except Exception as err:  # this site's own failure; the batch's other sites go on
                results[site] = ("error", f"{type(err).__name__}: {err}".splitlines()[0])
                continue
            result.params = None
        tracking.flush()
        if self.he:  # {"sum": the members' ciphertexts added (he.Encrypted), or None}
            return {"sum": ciphers[0].result() if ciphers else None, "results": results}
        return {**totals.returned(), "results": results, **({"masked": masked[0] if masked else None} if self.secure else {})}

    def _encrypted_into(self, ciphers: list[he.CipherSum], site: str, result: FLModel) -> FLModel:
        """HE: a batch's site's update encrypted, as it would leave the site alone, and added into the batch's
        ciphertext sum (`ciphers`: empty, or the sum so far)."""
        result = self._sealed(site, result)
        if not ciphers:
            ciphers.append(he.CipherSum(self.he.context))
        ciphers[0].add(result.meta.pop(he.UPDATE))
        return result

    def _train_sites_at_once(self, sites: Sequence[str], global_params: Mapping[str, np.ndarray], current_round: int,
                             total_rounds: int, factors: Sequence[float], message: Optional[Mapping[str, Any]] = None,
                             groups: Optional[Sequence[int]] = None) -> dict[str, Any]:
        """`train_sites` with `site.batched_training`: the sites trained together (fedray/site/batched_training.py),
        each with the shuffle its own `train` would draw; the same weights to float32 rounding, not the
        same bits. FedAvg and plain SGD only (driver.preflight refuses the rest); no streamed curve, and
        a given-up task stops only when the batch ends."""
        started = time.perf_counter()
        load_params(self.model, global_params)
        received = {site: self._score(site) for site in sites}
        lr, momentum = plain_sgd(self.job)
        generators = [self._shuffle(site, current_round) for site in sites]
        trained = train_sites_batched(self.model, self.train_images, self.train_labels,
                                      [self.shards[site].train for site in sites], generators=generators,
                                      epochs=self.job["local_epochs"], batch_size=self.job["batch_size"], lr=lr,
                                      momentum=momentum)
        seconds = (time.perf_counter() - started) / max(1, len(sites))
        totals = _Sums(groups, len(sites))
        results: dict[str, Any] = {}
        for site, factor, outcome, total in zip(sites, factors, trained, totals.each):
            sent = self._filtered(site, outcome.params, global_params, outcome.steps, current_round)
            released = self._released(site, FLModel(params=sent, meta={}), global_params, message, current_round)
            failure = _summed(total, released.params, self._weight(factor, outcome.steps))
            if failure:
                results[site] = failure
                continue
            if len(self.shards[site].val):
                load_params(self.model, outcome.params)
            local = self._score(site)
            results[site] = FLModel(
                metrics={"train_loss": outcome.train_loss, "val_accuracy": received[site]["accuracy"],
                         "val_loss": received[site]["loss"], "local_val_accuracy": local["accuracy"],
                         "local_val_loss": local["loss"], "seconds": seconds},
                meta={NUM_STEPS_CURRENT_ROUND: outcome.steps, **released.meta}, current_round=current_round,
                total_rounds=total_rounds)
        return {**totals.returned(), "results": results}

    def _dp_sgd(self, site: str, optimizer: Any, generator: torch.Generator, history: list, current_round: int,
                total_rounds: int) -> Any:
        """This round's DP-SGD for `site` (fedray/site/dp_sgd.py): Poisson batches drawn from the site's own
        batch-order generator, noise from a generator seeded by (seed, round, site), the accountant going on
        from `history`, the noise multiplier calibrated once per shard size when target_epsilon sets it."""
        from fedray.site import dp_sgd

        records = len(self.shards[site].train)
        key = (records, total_rounds)
        if key not in self.noise_multipliers:
            self.noise_multipliers[key] = dp_sgd.noise_multiplier(self.privacy, records, self.job["batch_size"],
                                                                  self.job["local_epochs"], total_rounds)
        noise = torch.Generator(device=self.device)
        noise.manual_seed(_seed(self.job["seed"], current_round, _site_number(site), DP_NOISE_STREAM))
        return dp_sgd.SiteDPSGD(self.model, optimizer, sigma=self.noise_multipliers[key], clip=float(self.privacy["clip"]),
                                records=records, batch_size=self.job["batch_size"], batch_generator=generator,
                                noise_generator=noise, history=history)

    def _filtered(self, site: str, params: Mapping[str, np.ndarray], global_params: Mapping[str, np.ndarray],
                  steps: int, current_round: int) -> Mapping[str, np.ndarray]:
        """A built-in site's trained weights as the server receives them through FLARE's result filters:
        `params` itself without filters (or for diverged weights, which the server refuses anyway; SVT
        would never finish on NaN). The filters see a WEIGHT_DIFF, local minus global in float32, as the
        learners of FLARE's examples send (cifar10's CIFAR10ModelLearner, BraTS's)."""
        if not self.result_filters or not finite(params):
            return params
        diff = {name: np.subtract(value, global_params[name], dtype=np.float32) for name, value in params.items()}
        return sent_weights(self.result_filters, diff, WEIGHT_DIFF, global_params, steps,
                            _filter_seed(self.job["seed"], current_round, site))

    def _shuffle(self, site: str, current_round: int) -> Any:
        """The generator of `site`'s batch order in `current_round`: the same on any worker, in any batch."""
        return torch.Generator().manual_seed(_seed(self.job["seed"], current_round, _site_number(site)))

    def submit_model(self, site: str, best_local: FLModel | None) -> FLModel:
        """The site's best local model; `best_local` is the train result it came from (resolved by Ray)."""
        if self.app:
            asked = FLModel(params=self._for_app(self.last_global), meta={"submit_model_name": "best_model"})
            answer = self.app.ask("submit_model", asked)
            return FLModel(params=self._checked_params(answer), meta={"submit_model_name": "best_model"})
        if best_local is None:
            raise RuntimeError(f"{site} has no local model: it finished no train task")
        return FLModel(params=best_local.params, meta={"submit_model_name": "best_model"})

    def validate_models(self, site: str, models: dict[str, ray.ObjectRef]) -> dict[str, dict[str, float]]:
        """Each model (an FLModel, or server weights) on this site's validation split."""
        results = {}
        cancelled = ray.get_runtime_context().is_canceled
        for owner, model in zip(models, ray.get(list(models.values()), timeout=300)):
            if cancelled():  # given up on: stop between models
                raise TrainingStopped(f"{site}: validation stopped: the server gave up on this task")
            params = self._plain(model.params if isinstance(model, FLModel) else model)
            if self.app:
                asked = FLModel(params=self._for_app(params), meta={"model_owner": owner})
                results[owner] = _validation_metrics(self.app.ask("validate", asked).metrics, self.app)
                continue
            load_params(self.model, params)
            metrics = self._score(site)
            results[owner] = {"val_accuracy": metrics["accuracy"], "val_loss": metrics["loss"]}
        return results

    def _score(self, site: str) -> dict[str, float]:
        """The model as it stands on `site`'s validation split: accuracy and loss (NaN without a split)."""
        if not len(self.shards[site].val):  # data.val_fraction=0: nothing to score, and no mode switches
            return pool_metrics()
        return pool_metrics(evaluate(self.model, self.train_images, self.train_labels, self.shards[site].val,
                                     self.job["eval_batch_size"]))

    def evaluate_part(self, params: Mapping[str, np.ndarray], split: str, indices: np.ndarray) -> dict[str, float]:
        """Sums (not means) over `indices` of `split`, so the server can pool several workers' parts."""
        load_params(self.model, self._plain(params))
        images, labels = (self.test_images, self.test_labels) if split == "test" else (self.train_images, self.train_labels)
        return evaluate(self.model, images, labels, indices, self.job["eval_batch_size"])


    def shutdown(self, timeout: float = 30.0) -> None:
        """The job is over: let a script leave its loop and run what follows it."""
        if self.app:
            self.app.stop(timeout)

    def _train_script(self, global_params: Mapping[str, np.ndarray], current_round: int, total_rounds: int,
                      message: Mapping[str, Any]) -> FLModel:
        started = time.perf_counter()
        self.last_global = global_params
        # The algorithm's message as FLARE sends it: writable numpy arrays (or a number: FedProx's mu)
        # in the model's meta.
        sent = {key: {name: np.array(value) for name, value in params.items()} if isinstance(params, Mapping)
                else params for key, params in message.items()}
        asked = FLModel(params=self._for_app(global_params), current_round=current_round, total_rounds=total_rounds,
                        start_round=self.job["workflows"]["scatter_and_gather"]["start_round"],
                        meta={"job_id": self.job["job_id"], **sent})
        answer = self.app.ask("train", asked)
        tracking.flush()  # the script's SummaryWriter points reach the driver before its result
        params = self._checked_params(answer)
        steps = answer.meta.get(NUM_STEPS_CURRENT_ROUND)
        if steps is None:
            print(f"[{self.app.site}] result has no meta['{NUM_STEPS_CURRENT_ROUND}']: aggregated with weight 1",
                  file=sys.stderr)
            steps = 1
        kind = WEIGHT_DIFF if answer.params_type == ParamsType.DIFF else WEIGHTS
        if (kind == WEIGHTS and isinstance(self.app, ScriptSite)
                and self.job["flare"]["params_transfer_type"] == ParamsType.DIFF):
            # FLARE's Client API sends a FULL answer as its difference when the executor says DIFF.
            params, kind = {name: value - global_params[name] for name, value in params.items()}, WEIGHT_DIFF
        if self.result_filters and finite(params):
            params = sent_weights(self.result_filters, params, kind, global_params, steps,
                                  _filter_seed(self.job["seed"], current_round, self.app.site))
        elif kind == WEIGHT_DIFF:
            params = {name: (global_params[name] + diff).astype(global_params[name].dtype) for name, diff in params.items()}
        metrics = {name: float(value) for name, value in answer.metrics.items() if np.isscalar(value)}
        extra = {}
        for key in self.algorithm.result_keys:
            if key not in answer.meta:
                raise ScriptError(f"{self.app.site}: {self.app.name} sent no meta['{key}'], which "
                                  f"algorithm={type(self.algorithm).__name__} needs")
            extra[key] = {name: _to_numpy(value) for name, value in answer.meta[key].items()}
        return FLModel(params=params, metrics={**metrics, "seconds": time.perf_counter() - started},
                       meta={NUM_STEPS_CURRENT_ROUND: steps, **extra}, current_round=current_round,
                       total_rounds=total_rounds)

    def _for_app(self, params: Mapping[str, np.ndarray] | None) -> Any:
        """The weights as the site's code takes them: tensors for a Client API script (FLARE's pytorch
        exchange format), numpy for executors (their DXO's, copied writable by the executor site)."""
        return _torch_copy(params) if isinstance(self.app, ScriptSite) else params

    def _checked_params(self, answer: FLModel) -> dict[str, np.ndarray]:
        """The script's params as numpy, with exactly the model's variables."""
        if not answer.params:
            raise ScriptError(f"{self.app.site}: {self.app.name} sent no params for "
                              f"'{self.app.task_name}'")
        params = {name: _to_numpy(value) for name, value in answer.params.items()}
        expected_keys = set(self.model.state_dict())  # the global model's too: it loads with strict=True
        if set(params) != expected_keys:
            missing, extra = sorted(expected_keys - set(params)), sorted(set(params) - expected_keys)
            raise ScriptError(f"{self.app.site}: {self.app.name} sent params that do not match the "
                              f"model (missing: {missing[:5]}, unexpected: {extra[:5]})")
        return params


def _torch_copy(params: Mapping[str, np.ndarray] | None) -> dict[str, Any] | None:
    """Writable tensors for a script (the object store's arrays are read-only)."""

    return None if params is None else {name: torch.tensor(np.array(value)) for name, value in params.items()}


def _to_numpy(value: Any) -> np.ndarray:

    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _validation_metrics(metrics: Mapping[str, Any], app: ScriptSite | ExecutorSite) -> dict[str, float]:
    """A script's or executor's `validate` answer as its cross-site cell: its own numbers under its own
    names, as FLARE's ValidationJsonGenerator writes them (hello-pt's validator sends val_acc)."""
    if accuracy_of(metrics) is None:
        raise ScriptError(f"{app.site}: {app.name} sent no accuracy metric for 'validate' (one of {', '.join(ACCURACY_KEYS)})")
    return {name: float(value) for name, value in metrics.items() if np.isscalar(value)}


def _asked_again(method: Any, timeout: float) -> Any:
    """An actor's answer, asked again while the actor is "temporarily unavailable" (a failed RPC: Ray's
    own fault injection, or a network blip), until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ray.get(method.remote(), timeout=max(1.0, deadline - time.monotonic()))
        except ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _named_actor(name: str, namespace: str, timeout: float = LOOKUP_TIMEOUT) -> ActorHandle:
    """An actor of this job by name; just created ones register within moments."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ray.get_actor(name, namespace=namespace)
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class _Sums:
    """A batch's sums: one for all its sites, or one per group (`groups`: each site's, in the batch's order)."""

    def __init__(self, groups: Optional[Sequence[int]], count: int) -> None:
        self.groups = groups
        self.sums: dict[Optional[int], CompensatedSum] = {}
        keys = groups if groups is not None else [None] * count
        self.each = [self.sums.setdefault(key, CompensatedSum()) for key in keys]  # each site's sum, in order

    def returned(self) -> dict[str, Any]:
        return {"sum": self.sums.get(None) or CompensatedSum()} if self.groups is None else {"sums": self.sums}


def _summed(total: CompensatedSum, params: Mapping[str, np.ndarray], weight: float) -> tuple[str, str] | None:
    """A batch's site folded into the batch's sum; or, for a diverged one, its failure (kind, message)."""
    if not finite(params):
        return "non_finite", NON_FINITE
    total.add(params, weight)
    return None


def _masked_into(masked: list[np.ndarray], result: FLModel) -> tuple[str, str] | FLModel:
    """A batch's site's masked vector added into the batch's (`masked`: empty, or the sum so far); or its failure.
    The batch simulates its sites' devices, which held their plain updates anyway: their masked sum tells the
    controller no more than their masked vectors one by one (each keeps its self mask until the unmasking)."""
    if DROPPED_OUT in result.meta:
        return result.meta.pop(DROPPED_OUT)
    vector = result.meta.pop(MASKED)
    if masked:
        masked[0] += vector  # unsigned wrap-around: modulo 2^32 (2^64), a multiple of the modulus
    else:
        masked.append(vector)
    return result


def _filter_seed(seed: int, current_round: int, site: str) -> tuple[int, ...]:
    """The seed of a site's result filters in a round (SVT's noise): what it computes, never when or where."""
    return (seed, current_round, _site_number(site), FILTER_STREAM)


def _site_number(site: str) -> int:
    return int(site.rsplit("-", 1)[1])


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])

