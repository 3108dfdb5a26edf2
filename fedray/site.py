"""A federated site: a Ray actor holding its shard as tensors and answering FLARE's tasks.

Tasks: `get_weights` (client-side model init), `train` (FedAvg local update),
`validate` (a model on this site's validation split), `submit_model` (this
site's local model, for cross-site evaluation).
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np
import ray
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fedray.fl_model import NUM_STEPS_CURRENT_ROUND, FLModel
from fedray.partition import Shard
from fedray.training import evaluate, get_params, load_params, to_tensors, train_epochs


class Site:
    def __init__(self, name: str, index: int, job: dict[str, Any], num_threads: int) -> None:
        self.name = name
        self.index = index
        self.job = job
        use_gpu = torch.cuda.is_available() and len(ray.get_gpu_ids()) > 0
        self.device = torch.device("cuda" if use_gpu else "cpu")
        torch.set_num_threads(num_threads)
        # Every site starts from the same seeded weights, so `first` in pre_train is deterministic.
        torch.manual_seed(job["seed"])
        self.model = instantiate(OmegaConf.create(job["model"])).to(self.device)
        self.local_params: dict[str, np.ndarray] | None = None
        # The first torch optimizer in a process imports torch._dynamo (~1.5 s of CPU): pay it while
        # the actor starts, not inside the first round's train_timeout.
        torch.optim.SGD(self.model.parameters(), lr=job["lr"])

    def ready(self) -> dict[str, Any]:
        return {"site": self.name, "device": str(self.device), "threads": torch.get_num_threads()}

    def load_data(self, images: np.ndarray, labels: np.ndarray, shard: Shard) -> dict[str, int]:
        """Build this site's train and validation tensors once, from the shared dataset."""
        self.train_x, self.train_y = to_tensors(images[shard.train], labels[shard.train], self.device)
        self.val_x, self.val_y = to_tensors(images[shard.val], labels[shard.val], self.device)
        return {"train": len(shard.train), "val": len(shard.val)}

    def get_weights(self) -> FLModel:
        return FLModel(params=get_params(self.model))

    def train(self, global_params: Mapping[str, np.ndarray], current_round: int, total_rounds: int) -> FLModel:
        started = time.perf_counter()
        load_params(self.model, global_params)
        received = evaluate(self.model, self.val_x, self.val_y, self.job["eval_batch_size"])
        generator = torch.Generator().manual_seed(_seed(self.job["seed"], current_round, self.index))
        train_loss, steps = train_epochs(
            self.model,
            self.train_x,
            self.train_y,
            epochs=self.job["local_epochs"],
            batch_size=self.job["batch_size"],
            lr=self.job["lr"],
            momentum=self.job["momentum"],
            generator=generator,
        )
        self.local_params = get_params(self.model)
        return FLModel(
            params=self.local_params,
            metrics={
                "train_loss": train_loss,
                "val_accuracy": received["accuracy"],  # of the global model this round started from
                "val_loss": received["loss"],
                "seconds": time.perf_counter() - started,
            },
            meta={NUM_STEPS_CURRENT_ROUND: steps},
            current_round=current_round,
            total_rounds=total_rounds,
        )

    def validate(self, params: Mapping[str, np.ndarray]) -> dict[str, float]:
        load_params(self.model, params)
        result = evaluate(self.model, self.val_x, self.val_y, self.job["eval_batch_size"])
        return {"val_accuracy": result["accuracy"], "val_loss": result["loss"]}

    def submit_model(self) -> FLModel:
        params = self.local_params if self.local_params is not None else get_params(self.model)
        return FLModel(params=params, meta={"submit_model_name": "best_model"})


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


SiteActor = ray.remote(Site)
