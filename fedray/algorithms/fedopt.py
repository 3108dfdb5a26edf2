"""FedOpt (Reddi et al., 2021): the round's average update is a pseudo-gradient for a server optimizer.

g = global - averaged goes to the optimizer named by `server_optimizer._target_` (any torch
optimizer, or fedray's FedAdam / FedAdagrad / FedYogi in server_optimizers.py), stepped once a
round, then `server_lr_scheduler` (optional, by `_target_`) once. FLARE's defaults: SGD lr 1.0
momentum 0.6 (FedAvgM), cosine from 1.0 to 0.9 over the rounds. As in FLARE's
PTFedOptModelShareableGenerator, only the model's parameters are optimized; buffers (batch-norm
statistics) and integer counters take the FedAvg value. Site training is FedAvg's.

The optimizer and scheduler are rebuilt each round from the state (their state_dicts), which
`apply` returns: nothing lives between rounds but the explicit state, which the checkpoint saves.
The controller imports torch only for this algorithm.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Optional

import numpy as np
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fedray.algorithms import Algorithm, Params, State

FLARE_OPTIMIZER = {"_target_": "torch.optim.SGD", "lr": 1.0, "momentum": 0.6}


class FedOpt(Algorithm):
    def __init__(self, server_optimizer: Optional[Mapping[str, Any]] = None,
                 server_lr_scheduler: Optional[Mapping[str, Any]] = None,
                 model: Optional[Mapping[str, Any]] = None) -> None:
        self.server_optimizer = _plain(server_optimizer) or dict(FLARE_OPTIMIZER)
        self.server_lr_scheduler = _plain(server_lr_scheduler)
        self.model = _plain(model)  # the job's model: which variables are parameters

    def init(self, params: Mapping[str, np.ndarray], num_sites: int) -> State:
        return {"parameters": self._parameters(params), "optimizer": None, "scheduler": None}

    def apply(self, params: Mapping[str, np.ndarray], averaged: Params, sums: Mapping[str, Any], state: State,
              current_round: int) -> tuple[Params, State]:
        import torch

        names = [name for name in state["parameters"] if name in averaged]
        weights = [torch.nn.Parameter(torch.tensor(np.array(params[name], dtype=np.float32))) for name in names]
        optimizer = instantiate(OmegaConf.create(self.server_optimizer), weights)
        scheduler = (instantiate(OmegaConf.create(self.server_lr_scheduler), optimizer)
                     if self.server_lr_scheduler else None)
        if state["optimizer"] is not None:
            # A copy: loading shares the saved tensors, which the step would change in place.
            optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
            if scheduler is not None:
                scheduler.load_state_dict(copy.deepcopy(state["scheduler"]))
        for weight, name in zip(weights, names):
            # Minus the average update: a gradient for the optimizer to descend.
            weight.grad = weight.detach() - torch.from_numpy(np.asarray(averaged[name], dtype=np.float32))
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        updated = dict(averaged)
        for weight, name in zip(weights, names):
            updated[name] = weight.detach().numpy().astype(np.asarray(params[name]).dtype)
        return updated, {
            "parameters": state["parameters"],
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "server_lr": lr,  # the one this round's step used
        }

    def _parameters(self, params: Mapping[str, np.ndarray]) -> list[str]:
        floating = [name for name, value in params.items() if np.issubdtype(np.asarray(value).dtype, np.floating)]
        if not self.model:
            return floating
        import torch

        with torch.random.fork_rng():
            names = {name for name, _ in instantiate(OmegaConf.create(self.model)).named_parameters()}
        return [name for name in floating if name in names]


def _plain(node: Any) -> Optional[dict[str, Any]]:
    if node is None:
        return None
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
