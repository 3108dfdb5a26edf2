"""Federated algorithms: a client part (what local training adds) and a server part (how the
global model and the server's state move from the aggregated results).

An algorithm is one class in one file here and one YAML in conf/algorithm/ naming it by
`_target_`. FedAvg (`fedavg.py`) is the trivial case; the others override what they need:

    server part (in the controller, no I/O):
        init(params, num_sites) -> state           # explicit server state, saved by the checkpoint
        message(state) -> {meta key: params or number}  # sent with the global model each round
        apply(params, averaged, sums, state, round) -> (params, state)
    client part (in a site actor, built each round):
        client(model, global_params, message, site_state) -> ClientPart
            .loss_term(model)      a term added to each batch's loss (FedProx)
            .after_step(model, lr) after each optimizer step (SCAFFOLD's correction)
            .results(model)        -> ({meta key: params}, new site state or None)

`averaged` is FedAvg's fold of the sites' models (the same compensated, order-independent sum);
`sums[key]` is the order-independent sum over the round's results of the extra result `key`
(each result counted once; or, for an algorithm whose `weighs_results` is true, their average with
FedAvg's weights, as FLARE's aggregator folds every data kind), with `sums[COUNT]` the number of results. A site state (SCAFFOLD's
control variate) is kept by the controller as an ObjectRef per site, never in an actor, and
written to the checkpoint when it changes; a site not sampled keeps its own.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

Params = dict[str, np.ndarray]
State = dict[str, Any]  # plain data (numbers, strings, lists, tuples, dicts, numpy arrays, torch tensors and state_dicts): the checkpoint saves it as weights_only loading reads it

COUNT = "count"  # in `sums`: how many results the round folded
SITE_STATE = "fedray_site_state"  # the meta key a site's new state travels under, from site to controller


class ClientPart:
    """What an algorithm adds to one site's local training in one round; FedAvg adds nothing."""

    def loss_term(self, model: Any) -> Optional[Any]:
        return None

    def after_step(self, model: Any, lr: float) -> None:
        pass

    def results(self, model: Any) -> tuple[dict[str, Params], Optional[Params]]:
        return {}, None


class Algorithm:
    """FedAvg's server and client parts; subclasses override what their algorithm changes."""

    #: meta keys of the extra results each site sends (summed over the round into `sums`)
    result_keys: tuple[str, ...] = ()
    #: whether each site keeps a state between the rounds it takes part in
    keeps_site_state: bool = False
    #: whether `sums` are averages with FedAvg's weights (steps x aggregation_weights) instead of sums
    weighs_results: bool = False

    def init(self, params: Mapping[str, np.ndarray], num_sites: int) -> State:
        return {}

    def message(self, state: State) -> dict[str, Any]:
        return {}

    def apply(self, params: Mapping[str, np.ndarray], averaged: Params, sums: Mapping[str, Any], state: State,
              current_round: int) -> tuple[Params, State]:
        return averaged, state

    def client(self, model: Any, global_params: Mapping[str, np.ndarray], message: Mapping[str, Params],
               site_state: Optional[Params]) -> ClientPart:
        return ClientPart()


def build(node: Any) -> Algorithm:
    """The algorithm a job's `algorithm` config names (nested `_target_`s stay config for it to build);
    FedAvg for none (a run saved before algorithms existed)."""
    if not node:
        return Algorithm()
    # Here, not at import: fedray.site.training (which names ClientPart) runs where Hydra is not installed.
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    node = OmegaConf.create(node) if not OmegaConf.is_config(node) else node
    return instantiate(node, _recursive_=False, _convert_="all")


def floating(params: Mapping[str, np.ndarray]) -> list[str]:
    """The variables an algorithm moves: floating-point ones (integer counters are only averaged)."""
    return [name for name, value in params.items() if np.issubdtype(np.asarray(value).dtype, np.floating)]
