"""CrossSiteModelEval: every participating site validates every site's best local model and the server's models."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import ray
from ray.actor import ActorHandle

from fedray.server.tasks import WorkerPool, gather

log = logging.getLogger(__name__)

# FLARE's names for the server's models in cross_val_results.json.
SERVER_MODELS = ("SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt")


def cross_site_model_eval(
    participating: list[str],
    pool: WorkerPool,
    best_local_models: dict[str, ray.ObjectRef],
    server_models: dict[str, ray.ObjectRef],
    *,
    submit_model_timeout: float = 0.0,
    validation_timeout: float = 0.0,
    max_task_retries: int = 0,
    unavailable_after: float | None = None,
) -> dict[str, Any]:
    """Returns {"results": {evaluating_site: {model_owner: {"val_accuracy", "val_loss"}}}, "failures": [...]}.

    A site that fails to submit loses its column, one that fails to validate its
    row; every other cell is still computed. A site whose actor is still busy `unavailable_after`
    seconds in (a task it would not stop) is skipped and recorded, never waited for.
    """
    retry = dict(max_retries=max_task_retries, unavailable_after=unavailable_after)
    failures: list[dict[str, Any]] = []
    models: dict[str, ray.ObjectRef] = {}
    submissions = [(site, partial(_submit_model, site, best_local_models.get(site))) for site in participating]
    for outcome in gather(submissions, pool, timeout=submit_model_timeout, **retry):
        if outcome.ok:
            models[outcome.site] = outcome.ref  # already in the object store: every site reads this one copy
        else:
            failures.append(_failure(outcome, "submit_model"))
    # Columns in site order, then the server's models.
    models = {site: models[site] for site in participating if site in models} | server_models

    results: dict[str, dict] = {}
    validations = [(site, partial(_validate_models, site, models)) for site in participating]
    for outcome in gather(validations, pool, timeout=validation_timeout, **retry):
        if outcome.ok:
            results[outcome.site] = outcome.value
        else:
            failures.append(_failure(outcome, "validate"))
    return {"results": {site: results[site] for site in participating if site in results}, "failures": failures}


def _submit_model(site: str, best_local: ray.ObjectRef | None, worker: ActorHandle) -> ray.ObjectRef:
    return worker.submit_model.remote(site, best_local)


def _validate_models(site: str, models: dict[str, ray.ObjectRef], worker: ActorHandle) -> ray.ObjectRef:
    return worker.validate_models.remote(site, models)


def _failure(outcome, task: str) -> dict[str, Any]:
    log.warning("cross_site_validate: %s %s %s: %s", outcome.site, task, outcome.failure, outcome.message)
    return {"site": outcome.site, "task": task, "kind": outcome.failure, "message": outcome.message}
