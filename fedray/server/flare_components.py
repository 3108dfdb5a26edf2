"""A FLARE server app's own code, run as FLARE's server runs it: components that act on events
(cifar10-sim's data splitter writes the sites' splits at START_RUN) and the job's own ModelLocator
(hello-pt's PTModelLocator names the server models cross-site evaluation validates). Built once from
config_fed_server; START_RUN before any site gets a task, END_RUN when the job ends.

A Ray actor of its own, not the controller: these are the job's code, which may import torch or read
data, and the controller stays without either. The driver starts it (fedray/driver/job.py) before the
controller and waits for START_RUN to finish; the controller asks it for the server's models.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import numpy as np
import ray

from fedray.config import server_code_ids
from fedray.flare import nvflare_alias
from fedray.flare.components import base_context, build_component, fire, workspace_root
from fedray.flare.executor_api import Engine, EventType, FLContext, FLContextKey, Workspace
from fedray.flare.job_folder import read_app_config
from fedray.flare.server_models import locate_models, persist_global_models
from fedray.python_path import put_on_python_path

SERVER = "server"
log = logging.getLogger(__name__)


class FlareServerComponents:
    def __init__(self, job: dict[str, Any]) -> None:
        flare = job["flare"]
        self.job_id = job["job_id"]
        put_on_python_path(job)  # the server app's custom/ and the job's python_path
        nvflare_alias.install()  # their `from nvflare.apis ... import` are fedray's
        self.where = f"{SERVER}: {os.path.basename(flare['server_app'])}/config/config_fed_server"
        config = read_app_config(flare["server_app"], "config_fed_server")
        entries = {entry.get("id"): entry for entry in config.get("components", [])}
        self.components = {component_id: build_component(entries[component_id], f"{self.where} component '{component_id}'")
                           for component_id in server_code_ids(flare)}
        self.locator_id = flare["model_locator"]
        self.workspace = Workspace(workspace_root(job, SERVER), SERVER)
        self.engine = Engine(self.workspace, self.components, fire_event=self._fire)
        self._fire(EventType.START_RUN, self._context())

    def ready(self) -> list[str]:
        return list(self.components)

    def server_models(self, last: Mapping[str, np.ndarray], best: Mapping[str, np.ndarray]) -> dict[str, ray.ObjectRef]:
        """The server's models for cross-site evaluation, as the job's ModelLocator finds them once the
        last and the best global model are where FLARE's persistor would have left them."""
        fl_ctx = self._context()
        app_dir = self.workspace.get_app_dir(self.job_id)
        persist_global_models(app_dir, last, best)
        fl_ctx.set_prop(FLContextKey.APP_ROOT, app_dir, private=True, sticky=False)
        where = f"{self.where} component '{self.locator_id}'"
        found, missing = locate_models(self.components[self.locator_id], fl_ctx, where)
        for line in missing:
            log.warning(line)
        return {name: ray.put(params) for name, params in found.items()}

    def end_run(self) -> None:
        self._fire(EventType.END_RUN, self._context())

    def _context(self) -> FLContext:
        return base_context(self.engine, SERVER, self.job_id)

    def _fire(self, event_type: str, fl_ctx: FLContext) -> None:
        fire(event_type, list(self.components.values()), fl_ctx, self.where)


FlareServerComponentsActor = ray.remote(num_cpus=0, max_restarts=0)(FlareServerComponents)
