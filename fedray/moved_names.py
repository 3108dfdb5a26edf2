"""Names that moved when fedray was laid out by process (issue 20), still importable by their old path.

A `_target_` in a user's config or in a saved run folder (`fedray.sweep.SweepSummary`), a pickle, an
import (`from fedray.training import train_epochs`) or `python -m fedray.report` under an old module
path gets the module at its new path, and one FutureWarning line saying where it now lives (a
FutureWarning, not a DeprecationWarning: the reader is whoever runs the job, and Python shows
FutureWarnings by default). `fedray/__init__.py` installs the finder; it costs nothing until an old
name is asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from typing import Optional, Sequence

# Old module -> where it lives now; a module under an old package (fedray.workflows.scatter_and_gather)
# moved with it.
MOVED = {
    "fedray.job": "fedray.driver.job",
    "fedray.cluster": "fedray.driver.cluster",
    "fedray.reaper": "fedray.driver.reaper",
    "fedray.progress": "fedray.driver.progress",
    "fedray.resources": "fedray.driver.resources",
    "fedray.outputs": "fedray.records.recorder",
    "fedray.checkpoint": "fedray.records.checkpoint",
    "fedray.tensorboard_writer": "fedray.records.tensorboard",
    "fedray.plots": "fedray.records.plots",
    "fedray.report": "fedray.records.report",
    "fedray.sweep": "fedray.records.sweep",
    "fedray.controller": "fedray.server.controller",
    "fedray.tasks": "fedray.server.tasks",
    "fedray.workflows": "fedray.server.workflows",
    "fedray.sites": "fedray.site.actor",
    "fedray.training": "fedray.site.training",
    "fedray.batched_training": "fedray.site.batched_training",
    "fedray.script_site": "fedray.site.script_runner",
    "fedray.tracking": "fedray.site.metric_stream",
    "fedray.datasets": "fedray.data.cifar10",
    "fedray.synthetic": "fedray.data.synthetic",
    "fedray.partition": "fedray.data.partition",
    "fedray.flare_job": "fedray.flare.job_folder",
    "fedray.nvflare_alias": "fedray.flare.nvflare_alias",
}


def new_name(old: str) -> Optional[str]:
    """Where the module `old` lives now, or None if it did not move."""
    for before, after in MOVED.items():
        if old == before or old.startswith(before + "."):
            return after + old[len(before):]
    return None


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers an old module name with the module itself (not a copy: its classes stay the same
    classes, so isinstance and pickles agree whichever name was used)."""

    def __init__(self) -> None:
        self.own_specs: dict[str, importlib.machinery.ModuleSpec] = {}

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None, target: Optional[types.ModuleType] = None):
        if not fullname.startswith("fedray."):
            return None
        moved = new_name(fullname)
        if moved is None:
            return None
        found = importlib.util.find_spec(moved)
        if found is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=found.submodule_search_locations is not None)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        moved = _warn(spec.name)
        module = importlib.import_module(moved)
        self.own_specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        """The module already ran under its new name; the import machinery gave it the old name's
        spec, and it gets its own back."""
        own = self.own_specs.pop(module.__spec__.name, None)
        if own is not None:
            module.__spec__ = own

    def get_code(self, fullname: str) -> Optional[types.CodeType]:
        """`python -m fedray.report` (runpy asks for the code, to run it as __main__)."""
        moved = _warn(fullname)
        return importlib.util.find_spec(moved).loader.get_code(moved)


def _warn(old: str) -> str:
    moved = new_name(old)
    # Explicit, with no source line to quote: the caller is the import machinery (or Hydra's), and
    # the warning is one line.
    warnings.warn_explicit(f"{old} is now {moved}: update the import or _target_ (the old path will be removed)",
                           FutureWarning, filename="fedray", lineno=0, module="fedray.moved_names")
    return moved


_FINDER = _MovedFinder()


def install() -> None:
    """Answer the old names in this process (idempotent; every fedray import does it). First on
    sys.meta_path: an old package's alias (fedray.workflows) has the new folder as its __path__, and
    the path finder would load `fedray.workflows.scatter_and_gather` from there a second time, as a
    copy with classes of its own."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
