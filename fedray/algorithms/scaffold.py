"""SCAFFOLD (Karimireddy et al., 2020), option II: control variates correct each site's drift.

Server state: the global control variate c. Each site i keeps its own c_i (zeros at first),
which the controller holds as an ObjectRef between the rounds the site takes part in (never
in an actor; the checkpoint writes it when it changes); a site not sampled keeps its c_i.

In a round, site i trains from the global model x with, after every optimizer step,
    y <- y - lr * (c - c_i)
then sets c_i+ = c_i - c + (x - y) / (sum of the step lrs)   (K * lr at a constant lr)
and sends y (averaged by steps, as FedAvg) and dc_i = c_i+ - c_i under FLARE's meta key
`scaffold_c_diff`. The server: x <- FedAvg(y), c <- c + (1/N) * sum over the round's sites of
dc_i, N all sites (the paper's |S|/N * mean), so c stays the mean of every site's c_i.
`control_weights=steps` is FLARE's update instead (ScatterAndGatherScaffold and its Scaffold
controller): c <- c + the round's dc_i averaged with FedAvg's weights (NUM_STEPS_CURRENT_ROUND,
times aggregation_weights), which equals the paper's when every site answers with equal steps.
Client API scripts get c under `scaffold_c_global` and keep c_i themselves (FLARE's
PTScaffoldHelper, `fedray.client.PTScaffoldHelper`).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from fedray.algorithms import Algorithm, ClientPart, Params, State, floating
from fedray.fl_model import AlgorithmConstants

CTRL_GLOBAL = AlgorithmConstants.SCAFFOLD_CTRL_GLOBAL
CTRL_DIFF = AlgorithmConstants.SCAFFOLD_CTRL_DIFF


class Scaffold(Algorithm):
    result_keys = (CTRL_DIFF,)
    keeps_site_state = True

    def __init__(self, control_weights: str = "sites") -> None:
        if control_weights not in ("sites", "steps"):
            raise ValueError(f"algorithm.control_weights={control_weights}: 'sites' (the paper's 1/N) or 'steps' "
                             "(FLARE's average weighted by NUM_STEPS_CURRENT_ROUND)")
        self.weighs_results = control_weights == "steps"

    def init(self, params: Mapping[str, np.ndarray], num_sites: int) -> State:
        return {"c": {name: np.zeros_like(params[name], dtype=np.float32) for name in floating(params)},
                "num_sites": num_sites}

    def message(self, state: State) -> dict[str, Params]:
        return {CTRL_GLOBAL: state["c"]}

    def apply(self, params: Mapping[str, np.ndarray], averaged: Params, sums: Mapping[str, Any], state: State,
              current_round: int) -> tuple[Params, State]:
        diff = sums[CTRL_DIFF]  # the round's weighted average (control_weights=steps), else their sum
        divisor = 1.0 if self.weighs_results else state["num_sites"]
        c = {name: (value + diff[name] / divisor).astype(np.float32) if name in diff else value
             for name, value in state["c"].items()}
        return averaged, {**state, "c": c}

    def client(self, model: Any, global_params: Mapping[str, np.ndarray], message: Mapping[str, Params],
               site_state: Optional[Params]) -> ClientPart:
        return _Controlled(model, global_params, message[CTRL_GLOBAL], site_state)


class _Controlled(ClientPart):
    """Runs in the site actor, on the model's own tensors: this module imports no torch (the
    controller builds the algorithm too, and stays without torch; an import contract checks it)."""

    def __init__(self, model: Any, global_params: Mapping[str, np.ndarray], c: Params,
                 c_local: Optional[Params]) -> None:
        # Arrays become tensors like the model's variable of the same name: its device and dtype.
        variables = {name: value.detach() for name, value in model.state_dict().items()}
        self.names = [name for name, _ in model.named_parameters() if name in c]
        self.c = {name: variables[name].new_tensor(np.array(c[name])) for name in c}
        self.c_local = {name: value.new_zeros(value.shape) if c_local is None
                        else value.new_tensor(np.array(c_local[name])) for name, value in self.c.items()}
        self.correction = {name: self.c[name] - self.c_local[name] for name in self.names}
        self.start = {name: variables[name].new_tensor(np.array(global_params[name])) for name in self.names}
        self.lr_sum = 0.0

    def after_step(self, model: Any, lr: float) -> None:
        for name, param in model.named_parameters():
            if name in self.correction:
                param.data.sub_(lr * self.correction[name])
        self.lr_sum += lr

    def results(self, model: Any) -> tuple[dict[str, Params], Optional[Params]]:
        params = {name: param.detach() for name, param in model.named_parameters()}
        new_local, diff = {}, {}
        for name, c_local in self.c_local.items():
            if name in self.names and self.lr_sum > 0:
                updated = c_local - self.c[name] + (self.start[name] - params[name]) / self.lr_sum
            else:  # buffers, or no step taken: nothing to correct
                updated = c_local
            new_local[name] = updated.cpu().numpy()
            diff[name] = (updated - c_local).cpu().numpy()
        return {CTRL_DIFF: diff}, new_local
