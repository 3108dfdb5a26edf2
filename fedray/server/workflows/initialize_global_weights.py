"""InitializeGlobalWeights: the global model starts from weights a site initialized."""

from __future__ import annotations

import logging
from functools import partial

from ray.actor import ActorHandle

from fedray.aggregation import Params
from fedray.server.tasks import WorkerPool, gather

log = logging.getLogger(__name__)


class InitializationFailed(RuntimeError):
    pass


def initialize_global_weights(
    sites: list[str],
    pool: WorkerPool,
    weight_method: str = "first",
    weights_client_name: str | None = None,
    timeout: float = 0.0,
    max_task_retries: int = 0,
) -> Params:
    """Send `get_weights`; `first` keeps the first answer, `client` the named site's."""
    asked = sites if weight_method == "first" else [weights_client_name]
    calls = [(site, partial(_get_weights, site)) for site in asked]
    failures = []
    for outcome in gather(calls, pool, min_results=1, wait_after_min=0.0, timeout=timeout,
                          max_retries=max_task_retries):
        if outcome.ok:
            log.info("pre_train: initial weights from %s", outcome.site)
            return outcome.value.params
        failures.append(f"{outcome.site}: {outcome.failure} ({outcome.message})")
    raise InitializationFailed("pre_train: no site returned initial weights; " + "; ".join(failures))


def _get_weights(site: str, worker: ActorHandle):
    return worker.get_weights.remote(site)
