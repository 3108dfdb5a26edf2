"""The adaptive server optimizers of Reddi et al., "Adaptive Federated Optimization" (ICLR 2021).

Algorithm 2 of the paper, as torch optimizers (so FedOpt builds them by `_target_` like
torch.optim.SGD): with the pseudo-gradient g = -(averaged - global),

    m <- beta1 * m + (1 - beta1) * g
    v <- v + g^2                                   FedAdagrad
    v <- v - (1 - beta2) * g^2 * sign(v - g^2)     FedYogi
    v <- beta2 * v + (1 - beta2) * g^2             FedAdam
    x <- x - lr * m / (sqrt(v) + tau)

from m = 0 and v = tau^2 (the paper's v_{-1} >= tau^2), without Adam's bias correction.
`lr` is the paper's eta, `tau` its adaptivity.
"""

from __future__ import annotations

from typing import Iterable

import torch


class _ReddiAdaptive(torch.optim.Optimizer):
    def __init__(self, params: Iterable[torch.Tensor], lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99,
                 tau: float = 1e-3) -> None:
        if lr <= 0 or tau <= 0 or not 0 <= beta1 < 1 or not 0 <= beta2 < 1:
            raise ValueError(f"{type(self).__name__}: needs lr > 0, tau > 0 and beta1, beta2 in [0, 1) "
                             f"(got lr={lr}, tau={tau}, beta1={beta1}, beta2={beta2})")
        super().__init__(params, {"lr": lr, "beta1": beta1, "beta2": beta2, "tau": tau})

    def second_moment(self, v: torch.Tensor, g2: torch.Tensor, beta2: float) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                g = param.grad
                state = self.state[param]
                if not state:
                    state["m"] = torch.zeros_like(param)
                    state["v"] = torch.full_like(param, group["tau"] ** 2)
                m, v = state["m"], state["v"]
                m.mul_(group["beta1"]).add_(g, alpha=1 - group["beta1"])
                v.copy_(self.second_moment(v, g * g, group["beta2"]))
                param.sub_(group["lr"] * m / (v.sqrt() + group["tau"]))
        return None


class FedAdagrad(_ReddiAdaptive):
    def second_moment(self, v: torch.Tensor, g2: torch.Tensor, beta2: float) -> torch.Tensor:
        return v + g2


class FedYogi(_ReddiAdaptive):
    def second_moment(self, v: torch.Tensor, g2: torch.Tensor, beta2: float) -> torch.Tensor:
        return v - (1 - beta2) * g2 * torch.sign(v - g2)


class FedAdam(_ReddiAdaptive):
    def second_moment(self, v: torch.Tensor, g2: torch.Tensor, beta2: float) -> torch.Tensor:
        return beta2 * v + (1 - beta2) * g2
