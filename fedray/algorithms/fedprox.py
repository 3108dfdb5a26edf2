"""FedProx (Li et al., 2020): local training minimizes loss + mu/2 * ||w - w_global||^2.

The server part is FedAvg's. `mu` is FLARE's `fedproxloss_mu`; mu=0 is FedAvg bit for bit
(the term adds exact zeros to the gradients).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from fedray.algorithms import Algorithm, ClientPart, Params


def proximal_term(model: Any, reference: Mapping[str, Any], mu: float) -> Any:
    """mu/2 * sum over the model's parameters of ||w - w_ref||^2 (FLARE's PTFedProxLoss)."""
    term = 0.0
    for name, param in model.named_parameters():
        term = term + (mu / 2) * ((param - reference[name]) ** 2).sum()
    return term


class FedProx(Algorithm):
    def __init__(self, mu: float = 0.01) -> None:
        if mu < 0:
            raise ValueError(f"algorithm.mu={mu}: must be >= 0")
        self.mu = mu

    def client(self, model: Any, global_params: Mapping[str, np.ndarray], message: Mapping[str, Params],
               site_state: Optional[Params]) -> ClientPart:
        return _Proximal(model, global_params, self.mu)


class _Proximal(ClientPart):
    """Runs in the site actor (torch is imported there only: the controller stays without it)."""

    def __init__(self, model: Any, global_params: Mapping[str, np.ndarray], mu: float) -> None:
        import torch

        device = next(model.parameters()).device
        # The received global weights, as constants on the model's device.
        self.reference = {name: torch.tensor(np.array(global_params[name])).to(device)
                          for name, _ in model.named_parameters()}
        self.mu = mu

    def loss_term(self, model: Any) -> Any:
        return proximal_term(model, self.reference, self.mu)
