"""The site actor: the Ray actor class that every site task is sent to.

Thin on purpose. Ray imports the module of an actor class in every process that receives one of
its handles, and the controller holds them all; the controller has no use for torch (its import is
1.2 s of CPU there, on the path from the sites' start to the first round). So this module imports
no torch and no training code: the torch side (`fedray.site.worker.TorchWorker`) is imported when
the actor starts, in the actor's own process. An import contract (pyproject.toml) keeps it so, and
tests/test_layout.py checks a live controller's process.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import ray

from fedray.fl_model import FLModel


class SiteWorker:
    """Serves any site's tasks (see `TorchWorker` for what each does); one per pool slot, or one
    per site (named `site-k`) when a site runs a Client API script."""

    def __init__(self, job: dict[str, Any], num_threads: int, home_site: Optional[str] = None,
                 namespace: Optional[str] = None, data_holder: str = "controller",
                 metric_stream: Optional[str] = "controller") -> None:
        # The one import of the torch side, in this actor's process only (the contract's one exception).
        from fedray.site.worker import TorchWorker

        self.worker = TorchWorker(job, num_threads, home_site, namespace, data_holder, metric_stream)

    def ready(self) -> dict[str, Any]:
        return self.worker.ready()

    def get_weights(self, site: str) -> FLModel:
        return self.worker.get_weights(site)

    def train(self, site: str, global_params: Mapping[str, np.ndarray], current_round: int, total_rounds: int,
              message: Optional[Mapping[str, Any]] = None, site_state: Optional[Mapping[str, np.ndarray]] = None) -> FLModel:
        return self.worker.train(site, global_params, current_round, total_rounds, message, site_state)

    def train_sites(self, sites: Sequence[str], global_params: Mapping[str, np.ndarray], current_round: int,
                    total_rounds: int, factors: Sequence[float], message: Optional[Mapping[str, Any]] = None,
                    site_states: Optional[Sequence[Any]] = None, groups: Optional[Sequence[int]] = None) -> dict[str, Any]:
        return self.worker.train_sites(sites, global_params, current_round, total_rounds, factors, message, site_states,
                                       groups)

    def secagg_stage(self, stage: str, sites: Sequence[str], current_round: int, requests: Mapping[str, Any]) -> dict[str, Any]:
        return self.worker.secagg_stage(stage, sites, current_round, requests)

    def submit_model(self, site: str, best_local: Optional[FLModel]) -> FLModel:
        return self.worker.submit_model(site, best_local)

    def validate_models(self, site: str, models: dict[str, ray.ObjectRef]) -> dict[str, dict[str, float]]:
        return self.worker.validate_models(site, models)

    def evaluate_part(self, params: Mapping[str, np.ndarray], split: str, indices: np.ndarray) -> dict[str, float]:
        return self.worker.evaluate_part(params, split, indices)

    def shutdown(self, timeout: float = 30.0) -> None:
        self.worker.shutdown(timeout)


SiteWorkerActor = ray.remote(SiteWorker)
