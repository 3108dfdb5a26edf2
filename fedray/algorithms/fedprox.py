"""FedProx (Li et al., 2020): local training minimizes loss + mu/2 * ||w - w_global||^2.

The server part is FedAvg's. `mu` is FLARE's `fedproxloss_mu`; mu=0 is FedAvg bit for bit
(the term adds exact zeros to the gradients). As FLARE's FedAvg(fedprox_mu=...) does, mu travels
with the model in meta["fedprox_mu"] (none for mu=0), for a Client API script that reads it
(`get_fedprox_mu(input_model)`) and adds PTFedProxLoss itself.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from fedray.algorithms import Algorithm, ClientPart, Params, State
from fedray.fl_model import AlgorithmConstants


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

    def message(self, state: State) -> dict[str, Any]:
        return {AlgorithmConstants.FEDPROX_MU: self.mu} if self.mu > 0 else {}

    def client(self, model: Any, global_params: Mapping[str, np.ndarray], message: Mapping[str, Params],
               site_state: Optional[Params]) -> ClientPart:
        return _Proximal(model, global_params, self.mu)


class _Proximal(ClientPart):
    """Runs in the site actor, on the model's own tensors: this module imports no torch (the
    controller builds the algorithm too, and stays without torch; an import contract checks it)."""

    def __init__(self, model: Any, global_params: Mapping[str, np.ndarray], mu: float) -> None:
        # The received global weights, as constants on the model's device (and in its dtype).
        self.reference = {name: param.detach().new_tensor(np.array(global_params[name]))
                          for name, param in model.named_parameters()}
        self.mu = mu

    def loss_term(self, model: Any) -> Any:
        return proximal_term(model, self.reference, self.mu)
