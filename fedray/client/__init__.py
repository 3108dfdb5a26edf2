"""FLARE's Client API for scripts that fedray runs inside a site: `import fedray.client as flare`.

    flare.init()
    while flare.is_running():
        model = flare.receive()          # FLModel; params are torch tensors for load_state_dict
        if model is None:
            break
        if flare.is_train(): ...         # train, then flare.send(FLModel(params=..., meta={"NUM_STEPS_CURRENT_ROUND": n}))
        elif flare.is_evaluate(): ...    # flare.send(FLModel(metrics={"accuracy": acc}))
        elif flare.is_submit_model(): ...  # flare.send(FLModel(params=best_state_dict))

FLARE's FedProx and SCAFFOLD helpers are here too (`from fedray.client import PTFedProxLoss,
PTScaffoldHelper, AlgorithmConstants`; see fedray/client/pt.py).
"""

from __future__ import annotations

from typing import Any, Optional

from fedray.client.pt import PTFedProxLoss, PTScaffoldHelper
from fedray.fl_model import NUM_STEPS_CURRENT_ROUND, AlgorithmConstants, FLModel, ParamsType

__all__ = [
    "FLModel", "ParamsType", "NUM_STEPS_CURRENT_ROUND", "AlgorithmConstants", "PTFedProxLoss", "PTScaffoldHelper", "init", "receive", "send", "clear", "is_running", "is_train",
    "is_evaluate", "is_submit_model", "get_task_name", "get_site_name", "get_job_id", "system_info", "get_config",
    "log", "shutdown",
]

_site = None  # the ScriptSite this process runs (one script per site actor)


def _bind(site) -> None:
    global _site
    _site = site


def _current():
    if _site is None:
        raise RuntimeError("fedray.client is only usable in a script that fedray runs (site.script=...)")
    return _site


def init(rank: Optional[str] = None) -> None:
    """Start talking to fedray; safe to call more than once."""
    _current()


def receive(timeout: Optional[float] = None) -> Optional[FLModel]:
    """The current task's model: the same one until it is answered (`send`) or `clear`ed, as in
    FLARE (its Lightning callback receives the model the script already received); then the next
    task's. None once the job has ended (or after `timeout` seconds)."""
    site = _current()
    if site.received is None:
        task = site.next_task(timeout)
        site.received = None if task is None else task[1]
    return site.received


def send(model: FLModel, clear_cache: bool = True) -> None:
    """Answer the current task; params may be torch tensors or numpy arrays."""
    if not isinstance(model, FLModel):
        raise TypeError(f"send() takes an FLModel, not {type(model).__name__}")
    site = _current()
    site.answer(model)
    if clear_cache:
        clear()


def clear() -> None:
    """Forget the received model: the next `receive()` waits for the next task."""
    _current().received = None


def is_running() -> bool:
    return _current().running


def get_task_name() -> Optional[str]:
    return _current().task_name


def is_train() -> bool:
    return get_task_name() == "train"


def is_evaluate() -> bool:
    return get_task_name() == "validate"


def is_submit_model() -> bool:
    return get_task_name() == "submit_model"


def get_site_name() -> str:
    return _current().site


def get_job_id() -> str:
    return _current().job["job_id"]


def system_info() -> dict[str, Any]:
    return {"site_name": get_site_name(), "job_id": get_job_id()}


def log(key: str, value: Any, data_type: Any = None, global_step: Optional[int] = None, **_: Any) -> None:
    """FLARE's `flare.log`: a scalar goes to the run's TensorBoard logs under the site's name."""
    from fedray.client.tracking import SummaryWriter

    SummaryWriter().add_scalar(key, value, global_step)


def shutdown() -> None:
    """Nothing to close: the site's actor ends the script's session when the job ends."""


def get_config() -> dict[str, Any]:
    """The job's resolved config (num_clients, rounds, lr, ...), as a plain dict."""
    return _current().job
