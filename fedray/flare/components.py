"""FLARE components as FLARE's runtime runs them: built from their config entry (`path`, or FLARE's
`name`, of a class, and its `args`), in a workspace folder of their own, with a context naming who
runs them, and told of events. Used inside sites (executors, learners) and by the server's component
actor (fedray/server/flare_components.py)."""

from __future__ import annotations

import importlib
import os
import socket
import tempfile
from typing import Any, Mapping

from fedray.flare.executor_api import FLContext, ReservedKey

WORKSPACE_FOLDER = "workspace"  # in the run folder


def workspace_root(job: Mapping[str, Any], name: str) -> str:
    """The folder a site's (or the server's) own code writes in by relative paths, FLARE's workspace:
    `RUN_DIR/workspace/NAME` on the driver's machine, where the run folder is; on another machine
    (a site on a cluster's other node cannot write there) a folder per job and site in its temp dir.
    Made if missing."""
    if job.get("run_dir") and job.get("driver_host") == socket.gethostname():
        root = os.path.join(job["run_dir"], WORKSPACE_FOLDER, name)
    else:
        root = os.path.join(tempfile.gettempdir(), "fedray-sites", job["job_id"], name)
    os.makedirs(root, exist_ok=True)
    return root


def base_context(engine: Any, identity: str, job_id: str) -> FLContext:
    """An FLContext with what every FLARE call gets: the engine, who runs it, the run."""
    fl_ctx = FLContext()
    fl_ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=False)
    fl_ctx.set_prop(ReservedKey.IDENTITY_NAME, identity, private=False, sticky=False)
    fl_ctx.set_prop(ReservedKey.RUN_NUM, job_id, private=False, sticky=False)
    return fl_ctx


class ComponentError(RuntimeError):
    """A component that cannot be built or fails; the message is one line naming it and where it is configured."""


def build_component(entry: Mapping[str, Any], where: str) -> Any:
    path = entry.get("path") or entry.get("name")
    if not path or "." not in path:
        raise ComponentError(f"{where}: needs a 'path' of module.Class")
    where = f"{where} {path}"
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except Exception as err:
        raise ComponentError(f"{where}: cannot be imported ({type(err).__name__}: {err})".splitlines()[0]) from None
    try:
        return cls(**(entry.get("args") or {}))
    except Exception as err:
        raise ComponentError(f"{where}: building it failed ({type(err).__name__}: {err})".splitlines()[0]) from None


def fire(event_type: str, owners: list[Any], fl_ctx: Any, where: str) -> None:
    """An event to each owner's handle_event, in order, as FLARE's runners deliver them; the first that
    raises stops it, in one line naming the class."""
    for owner in owners:
        handle = getattr(owner, "handle_event", None)
        if handle is None:
            continue
        try:
            handle(event_type, fl_ctx)
        except Exception as err:
            raise ComponentError(f"{where}: {type(owner).__module__}.{type(owner).__name__}.handle_event({event_type}) "
                                 f"raised {type(err).__name__}: {err}".splitlines()[0]) from None
