"""FLARE's PyTorch algorithm helpers for Client API scripts: `from fedray.client import PTFedProxLoss,
PTScaffoldHelper, AlgorithmConstants` in place of nvflare.app_opt.pt.fedproxloss,
nvflare.app_opt.pt.scaffold and nvflare.app_common.app_constant, with FLARE's methods and meta keys.
Inside a site, FLARE's own imports of those modules are served from here (fedray/flare/nvflare_alias.py).

With `algorithm=scaffold` the server sends its control variate in
`input_model.meta[AlgorithmConstants.SCAFFOLD_CTRL_GLOBAL]` and reads the script's
`meta[AlgorithmConstants.SCAFFOLD_CTRL_DIFF]`; the script keeps its own c_i in the helper, as in FLARE.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from fedray.fl_model import AlgorithmConstants, FLModel


def get_lr_values(optimizer: torch.optim.Optimizer) -> list[float]:
    """Each parameter group's learning rate (FLARE's nvflare.app_opt.pt.scaffold.get_lr_values)."""
    return [group["lr"] for group in optimizer.state_dict()["param_groups"]]


def get_fedprox_mu(model: FLModel) -> float:
    """The mu that `algorithm=fedprox` sends in meta["fedprox_mu"] (FLARE's
    nvflare.app_common.utils.fedprox_utils.get_fedprox_mu, for FLARE's FedAvg(fedprox_mu=...))."""
    mu = (model.meta or {}).get(AlgorithmConstants.FEDPROX_MU)
    if mu is None:
        raise ValueError(f"FedProx client requires positive '{AlgorithmConstants.FEDPROX_MU}' metadata on every "
                         "training round: run the job with algorithm=fedprox algorithm.mu=...")
    return float(mu)


class PTFedProxLoss(nn.Module):
    """mu/2 * ||w - w_global||^2 over the parameters: `loss += PTFedProxLoss(mu)(model, global_model)`."""

    def __init__(self, mu: float = 0.01) -> None:
        super().__init__()
        if mu < 0.0:
            raise ValueError("mu should be no less than 0.0")
        self.mu = mu

    def forward(self, input: nn.Module, target: nn.Module) -> torch.Tensor:
        from fedray.algorithms.fedprox import proximal_term

        return proximal_term(input, {name: param.detach() for name, param in target.named_parameters()}, self.mu)


class PTScaffoldHelper:
    """SCAFFOLD's client side (option II) for a script's own training loop, as FLARE's helper:

        helper.init(model)                                  once
        helper.load_global_controls(meta[SCAFFOLD_CTRL_GLOBAL])
        c_global, c_local = helper.get_params()             each round
        ... optimizer.step(); helper.model_update(model, lr, c_global, c_local)   each step
        helper.terms_update(model, lr, c_global, c_local, global_model)
        meta[SCAFFOLD_CTRL_DIFF] = helper.get_delta_controls()
    """

    def __init__(self) -> None:
        self.cnt = 0
        self.c_global: dict[str, torch.Tensor] | None = None
        self.c_local: dict[str, torch.Tensor] | None = None
        self.c_delta_para: dict[str, np.ndarray] | None = None

    def init(self, model: nn.Module) -> None:
        self.c_global = {name: torch.zeros_like(value) for name, value in model.state_dict().items()}
        self.c_local = {name: torch.zeros_like(value) for name, value in model.state_dict().items()}

    def get_params(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        self.cnt = 0
        return dict(self.c_global), dict(self.c_local)

    @torch.no_grad()
    def model_update(self, model: nn.Module, curr_lr: float, c_global_para: Mapping[str, torch.Tensor],
                     c_local_para: Mapping[str, torch.Tensor]) -> None:
        """After an optimizer step: w <- w - lr * (c - c_i)."""
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                value.sub_(curr_lr * (c_global_para[name] - c_local_para[name]))
        self.cnt += 1

    @torch.no_grad()
    def terms_update(self, model: nn.Module, curr_lr: float, c_global_para: Mapping[str, torch.Tensor],
                     c_local_para: Mapping[str, torch.Tensor], model_global: nn.Module) -> None:
        """c_i+ = c_i - c + (x - y) / (steps * lr); keeps c_i+ - c_i for get_delta_controls()."""
        local, start = model.state_dict(), model_global.state_dict()
        new_local, delta = {}, {}
        for name, c_local in self.c_local.items():
            if local[name].is_floating_point() and self.cnt:
                new_local[name] = c_local - c_global_para[name] + (start[name] - local[name]) / (self.cnt * curr_lr)
            else:
                new_local[name] = c_local.clone()
            delta[name] = (new_local[name] - c_local_para[name]).cpu().numpy()
        self.c_local, self.c_delta_para = new_local, delta

    def load_global_controls(self, weights: Mapping[str, object]) -> None:
        device = next(iter(self.c_global.values())).device
        self.c_global = {name: torch.as_tensor(value).to(device) for name, value in weights.items()}

    def get_delta_controls(self) -> dict[str, np.ndarray]:
        if self.c_delta_para is None:
            raise ValueError("c_delta_para hasn't been computed yet!")
        return self.c_delta_para
