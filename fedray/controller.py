"""The server: a Ray actor that runs the job's workflows in order and records each round.

It runs on the driver's node, so it writes the run dir directly; the driver
only polls it for progress events.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from ray.actor import ActorHandle

from fedray.aggregation import Params
from fedray.outputs import BEST_GLOBAL_MODEL, GLOBAL_MODEL, save_model, write_json
from fedray.training import evaluate, get_params, load_params, to_tensors
from fedray.workflows import initialize_global_weights, scatter_and_gather

log = logging.getLogger(__name__)


class Controller:
    def __init__(
        self,
        job: dict[str, Any],
        run_dir: str,
        sites: dict[str, ActorHandle],
        train_images: np.ndarray,
        train_labels: np.ndarray,
        val_index: np.ndarray,
        test_images: np.ndarray,
        test_labels: np.ndarray,
        max_in_flight: int,
        num_threads: int,
    ) -> None:
        self.job = job
        self.run_dir = Path(run_dir)
        self.sites = sites
        self.max_in_flight = max_in_flight
        torch.set_num_threads(num_threads)
        torch.manual_seed(job["seed"])
        self.model = instantiate(OmegaConf.create(job["model"]))
        # The global model is scored on the union of the sites' validation splits and on the test set.
        self.val_x, self.val_y = to_tensors(train_images[val_index], train_labels[val_index], torch.device("cpu"))
        self.test_x, self.test_y = to_tensors(test_images, test_labels, torch.device("cpu"))
        self.summary: dict[str, Any] = {"config": job, "rounds": [], "best_round": None, "wall_seconds": None}
        self.best_val_accuracy = -math.inf
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.started = time.perf_counter()

    def run(self) -> dict[str, Any]:
        """Run the enabled workflows in config order; return the summary."""
        workflows = {
            "pre_train": self._pre_train,
            "scatter_and_gather": self._scatter_and_gather,
        }
        params = get_params(self.model)
        for workflow_id, args in self.job["workflows"].items():
            if args.get("enabled", True) and workflow_id in workflows:
                self._emit({"type": "workflow", "id": workflow_id})
                params = workflows[workflow_id](params, args)
        self.summary["wall_seconds"] = time.perf_counter() - self.started
        self._write_summary()
        return self.summary

    def drain_events(self) -> list[dict[str, Any]]:
        with self.lock:
            events, self.events = self.events, []
        return events

    def _pre_train(self, params: Params, args: dict[str, Any]) -> Params:
        return initialize_global_weights(
            self.sites, args["weight_method"], args["weights_client_name"], args["timeout"]
        )

    def _scatter_and_gather(self, params: Params, args: dict[str, Any]) -> Params:
        return scatter_and_gather(
            self.sites,
            params,
            aggregate=instantiate(OmegaConf.create(self.job["aggregator"])),
            on_round_end=self._record_round,
            num_rounds=args["num_rounds"],
            start_round=args["start_round"],
            min_clients=args["min_clients"],
            wait_time_after_min_received=args["wait_time_after_min_received"],
            train_timeout=args["train_timeout"],
            aggregation_weights=args["aggregation_weights"],
            exclude_vars=args["exclude_vars"],
            max_in_flight=self.max_in_flight,
        )

    def _record_round(self, current_round: int, params: Params, sites: dict, failures: dict, seconds: float) -> None:
        started = time.perf_counter()
        load_params(self.model, params)
        batch = self.job["eval_batch_size"]
        val = evaluate(self.model, self.val_x, self.val_y, batch)
        test = evaluate(self.model, self.test_x, self.test_y, batch)
        global_metrics = {"val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"], "test_loss": test["loss"]}
        evaluation_seconds = time.perf_counter() - started

        models = self.run_dir / "models"
        save_model(models / GLOBAL_MODEL, params, round=current_round)
        if val["accuracy"] > self.best_val_accuracy:
            self.best_val_accuracy = val["accuracy"]
            self.summary["best_round"] = current_round
            save_model(models / BEST_GLOBAL_MODEL, params, round=current_round)
        entry = {
            "round": current_round,
            "global": global_metrics,
            "sites": sites,
            "failures": failures,
            "seconds": seconds + (time.perf_counter() - started),
            "train_seconds": seconds,
            "evaluation_seconds": evaluation_seconds,
        }
        self.summary["rounds"].append(entry)
        self.summary["wall_seconds"] = time.perf_counter() - self.started
        self._write_summary()
        self._emit({"type": "round", "num_rounds": self.job["workflows"]["scatter_and_gather"]["num_rounds"],
                    "num_sites": len(self.sites), **entry})

    def _write_summary(self) -> None:
        write_json(self.run_dir / "summary.json", self.summary)

    def _emit(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.events.append(event)


ControllerActor = ray.remote(num_cpus=0, max_concurrency=2)(Controller)
