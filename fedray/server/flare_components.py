"""A FLARE server app's own components that act on events (cifar10-sim's data splitter writes the sites'
splits at START_RUN), run as FLARE's server runs them: built once from config_fed_server, START_RUN
before any site gets a task, END_RUN when the job ends.

A Ray actor of its own, not the controller: these are the job's code, which may import torch or read
data, and the controller stays without either. The driver starts it (fedray/driver/job.py) before the
controller and waits for START_RUN to finish.
"""

from __future__ import annotations

import os
from typing import Any

import ray

from fedray.flare import nvflare_alias
from fedray.flare.components import base_context, build_component, fire, workspace_root
from fedray.flare.executor_api import Engine, EventType, FLContext, Workspace
from fedray.flare.job_folder import read_app_config
from fedray.python_path import put_on_python_path

SERVER = "server"


class FlareServerComponents:
    def __init__(self, job: dict[str, Any]) -> None:
        flare = job["flare"]
        self.job_id = job["job_id"]
        put_on_python_path(job)  # the server app's custom/ and the job's python_path
        nvflare_alias.install()  # their `from nvflare.apis ... import` are fedray's
        root = workspace_root(self.job_id, SERVER)
        self.where = f"{SERVER}: {os.path.basename(flare['server_app'])}/config/config_fed_server"
        config = read_app_config(flare["server_app"], "config_fed_server")
        entries = {entry.get("id"): entry for entry in config.get("components", [])}
        self.components = {component_id: build_component(entries[component_id], f"{self.where} component '{component_id}'")
                           for component_id in flare["server_components"]}
        self.engine = Engine(Workspace(root, SERVER), self.components, fire_event=self._fire)
        self._fire(EventType.START_RUN, self._context())

    def ready(self) -> list[str]:
        return list(self.components)

    def end_run(self) -> None:
        self._fire(EventType.END_RUN, self._context())

    def _context(self) -> FLContext:
        return base_context(self.engine, SERVER, self.job_id)

    def _fire(self, event_type: str, fl_ctx: FLContext) -> None:
        fire(event_type, list(self.components.values()), fl_ctx, self.where)


FlareServerComponentsActor = ray.remote(num_cpus=0, max_restarts=0)(FlareServerComponents)
