"""A FLARE component built from its config entry, as FLARE's runtime builds one: `path` (or FLARE's
`name`) of a class, and its `args`. Used inside sites (executors, learners) and by the server's
component actor (fedray/server/flare_components.py)."""

from __future__ import annotations

import importlib
from typing import Any, Mapping


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
