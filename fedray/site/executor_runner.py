"""A site whose client app is FLARE executors (`config_fed_client.json`'s `executors` and `components`),
built once in the site's actor and kept for the whole run, as FLARE's client runtime keeps them.

fedray's tasks reach the executors as FLARE's do: a `Shareable` holding a DXO (the global weights
for `train` and `validate`), with the round in its headers and in the FLContext; the executor's reply
is checked for its `ReturnCode` and turned back into an `FLModel`. So `TorchWorker` serves an executor
site exactly as it serves a Client API script (`ask(task_name, FLModel) -> FLModel`). `START_RUN` is
delivered to every component and executor once all are built, `END_RUN` when the job ends. A task the
server gives up on (timed out, or late at a round's close) triggers the executor's `abort_signal`.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from fedray.fl_model import FLModel, ParamsType
from fedray.flare import nvflare_alias
from fedray.flare.components import ComponentError, base_context, build_component, fire, workspace_root
from fedray.flare.executor_api import (
    DXO,
    DataKind,
    Engine,
    EventType,
    FLContext,
    ReservedKey,
    ReturnCode,
    Shareable,
    Signal,
    Workspace,
    from_shareable,
)
from fedray.flare.job_folder import read_app_config
from fedray.flare.model_api import AppConstants

POLL_SECONDS = 0.2
WILDCARD = "*"


class ExecutorError(ComponentError):
    """An executor failed a task (raised, or answered with a ReturnCode other than OK); one line."""


class ExecutorSite:
    def __init__(self, site: str, app_dir: str, job: dict[str, Any],
                 is_cancelled: Callable[[], bool] = lambda: False) -> None:
        self.site = site
        self.app_dir = Path(app_dir)
        self.name = f"{self.app_dir.name}'s executors"  # what the site's errors name
        self.task_name: Optional[str] = None  # the latest task
        self.job = job
        self.is_cancelled = is_cancelled
        self.current_round: Optional[int] = None
        self.run_abort = Signal()
        # The site's own FLARE workspace, as a script site's working directory (fedray/site/script_runner.py):
        # what an executor writes (its local model) stays apart from the other sites'.
        root = workspace_root(job, site)
        os.chdir(root)  # the actor's process is this site's alone (one actor per executor site)
        self.workspace = Workspace(root, site)
        nvflare_alias.install()  # the app's custom/ is on python_path (fedray/flare/job_folder.py)
        config = read_app_config(self.app_dir, "config_fed_client")
        where = f"{site}: {self.app_dir.name}/config/config_fed_client"
        self.components = {entry["id"]: build_component(entry, f"{where} component '{entry['id']}'")
                           for entry in config.get("components", [])}
        self.engine = Engine(self.workspace, self.components, fire_event=self._fire)
        self.executors: list[Any] = []  # one instance per entry, kept for the run, as FLARE's
        self.by_task: dict[str, Any] = {}
        for entry in config.get("executors", []):
            executor = build_component(entry["executor"], f"{where} executor")
            self.executors.append(executor)
            for task in entry.get("tasks", []):
                self.by_task.setdefault(task, executor)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"fedray-executor-{site}")
        self._fire(EventType.START_RUN, self._context(), where)

    def serves(self, task_name: str) -> bool:
        return task_name in self.by_task or WILDCARD in self.by_task

    def ask(self, task_name: str, model: FLModel) -> FLModel:
        """Task `task_name` with `model` as FLARE's server would send it; the executor's answer as an FLModel."""
        executor = self.by_task.get(task_name) or self.by_task.get(WILDCARD)
        if executor is None:
            raise ExecutorError(f"{self.site}: no executor for task '{task_name}' in {self.app_dir.name}'s "
                                "config_fed_client")
        if model.current_round is not None:
            self.current_round = model.current_round
        self.task_name = task_name
        shareable = _shareable(task_name, model, self.current_round)
        fl_ctx = self._context(task_name, shareable)
        abort = Signal(parent=self.run_abort)
        name = type(executor).__name__
        running: Future = self.pool.submit(executor.execute, task_name, shareable, fl_ctx, abort)
        while True:
            try:
                reply = running.result(timeout=POLL_SECONDS)
                break
            except TimeoutError:
                pass
            if not abort.triggered and self.is_cancelled():
                abort.trigger(True)  # the executor sees it; fedray stops waiting once it returns
        if not isinstance(reply, Shareable):
            raise ExecutorError(f"{self.site}: executor {name} answered '{task_name}' with a "
                                f"{type(reply).__name__}, not a Shareable")
        code = reply.get_return_code(ReturnCode.OK)
        if code != ReturnCode.OK:
            raise ExecutorError(f"{self.site}: executor {name} answered '{task_name}' with ReturnCode {code}")
        return _fl_model(reply, name, task_name, self.site)

    def stop(self, timeout: float = 30.0) -> None:
        """The job is over: END_RUN to every component and executor."""
        self.run_abort.trigger(True)
        done = self.pool.submit(self._fire, EventType.END_RUN, self._context())
        try:
            done.result(timeout=timeout)
        except Exception as err:  # an executor's END_RUN handler failing must not fail the finished job
            print(f"[{self.site}] END_RUN: {type(err).__name__}: {err}", flush=True)
        self.pool.shutdown(wait=False)

    def _context(self, task_name: Optional[str] = None, shareable: Optional[Shareable] = None) -> FLContext:
        fl_ctx = base_context(self.engine, self.site, self.job["job_id"])
        fl_ctx.set_prop(ReservedKey.RUN_ABORT_SIGNAL, self.run_abort, private=True, sticky=False)
        if self.current_round is not None:
            fl_ctx.set_prop(AppConstants.CURRENT_ROUND, self.current_round, private=False, sticky=False)
        fl_ctx.set_prop(AppConstants.NUM_ROUNDS, self.job["rounds"], private=False, sticky=False)
        if task_name is not None:
            fl_ctx.set_prop(ReservedKey.TASK_NAME, task_name, private=True, sticky=False)
            fl_ctx.set_prop(ReservedKey.TASK_DATA, shareable, private=True, sticky=False)
        return fl_ctx

    def _fire(self, event_type: str, fl_ctx: FLContext, where: str = "") -> None:
        """An event to every component, then every executor, as FLARE's client runner delivers them."""
        fire(event_type, [*self.components.values(), *self.executors], fl_ctx,
             where or self.site)


def _shareable(task_name: str, model: FLModel, current_round: Optional[int]) -> Shareable:
    """What FLARE's server workflows send: the weights as a DXO, the round and the model's owner in headers."""
    if model.params is not None:
        data = {name: np.array(value) for name, value in model.params.items()}  # writable copies, as FLARE's
        shareable = DXO(data_kind=DataKind.WEIGHTS, data=data, meta=dict(model.meta)).to_shareable()
    else:
        shareable = Shareable()
    shareable.set_header(AppConstants.CURRENT_ROUND, current_round)
    if model.total_rounds is not None:
        shareable.set_header(AppConstants.NUM_ROUNDS, model.total_rounds)
    if "model_owner" in model.meta:
        shareable.set_header(AppConstants.MODEL_OWNER, model.meta["model_owner"])
    if "submit_model_name" in model.meta:
        shareable.set_header(AppConstants.SUBMIT_MODEL_NAME, model.meta["submit_model_name"])
    shareable.set_header(ReservedKey.TASK_NAME, task_name)
    return shareable


def _fl_model(reply: Shareable, name: str, task_name: str, site: str) -> FLModel:
    try:
        dxo = from_shareable(reply)
    except Exception as err:
        raise ExecutorError(f"{site}: executor {name} answered '{task_name}' without a DXO ({err})".splitlines()[0]) from None
    meta = dict(dxo.meta or {})
    if dxo.data_kind == DataKind.METRICS:
        return FLModel(metrics=dict(dxo.data), meta=meta)
    if dxo.data_kind not in (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF):
        raise ExecutorError(f"{site}: executor {name} answered '{task_name}' with a {dxo.data_kind} DXO; fedray takes "
                            "WEIGHTS, WEIGHT_DIFF or METRICS")
    params_type = ParamsType.DIFF if dxo.data_kind == DataKind.WEIGHT_DIFF else ParamsType.FULL
    return FLModel(params=dict(dxo.data), params_type=params_type, meta=meta)
