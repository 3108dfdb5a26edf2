"""`import nvflare.client as flare` inside a site, served by fedray.client.

FLARE's training scripts import its Client API by name, and its FedProx and SCAFFOLD scripts
its algorithm helpers (PTFedProxLoss, PTScaffoldHelper, get_lr_values, AlgorithmConstants); a job's
own Executor classes import FLARE's Executor API (`nvflare.apis.*`, served by
fedray/flare/executor_api.py) and its model helpers (fedray/flare/model_api.py). `install()`, called in a
site's process just before its script runs (fedray/site/script_runner.py), puts a finder
first on `sys.meta_path` that answers the Client API modules with fedray's own, so
the scripts run unchanged. Only those modules exist: any other `nvflare.*` import
fails with a line saying what fedray serves, and a real NVFlare installed beside
fedray is never used in that process. The driver and the tests' own process never
call `install()`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Optional, Sequence

# FLARE's module -> the fedray module that serves it.
ALIASES = {
    "nvflare.client": "fedray.client",
    "nvflare.client.tracking": "fedray.client.tracking",
    "nvflare.client.lightning": "fedray.client.lightning",
    "nvflare.app_common.abstract.fl_model": "fedray.fl_model",
    "nvflare.app_common.app_constant": "fedray.flare.model_api",  # AppConstants, AlgorithmConstants (SCAFFOLD's keys)
    "nvflare.app_common.app_event_type": "fedray.flare.model_api",
    "nvflare.app_common.abstract.model": "fedray.flare.model_api",  # ModelLearnable, make_model_learnable ...
    "nvflare.app_common.abstract.learnable": "fedray.flare.model_api",
    "nvflare.app_common.abstract.model_locator": "fedray.flare.model_api",  # ModelLocator (the server's)
    "nvflare.app_opt.pt.model_persistence_format_manager": "fedray.flare.model_api",
    # FLARE's ModelLearner API (cifar10-sim's learners): fedray/flare/learner_api.py.
    **{name: "fedray.flare.learner_api" for name in (
        "nvflare.app_common.abstract.model_learner", "nvflare.app_common.executors.model_learner_executor",
        "nvflare.app_common.utils.fl_component_wrapper", "nvflare.app_common.utils.fl_model_utils",
        "nvflare.apis.fl_exception", "nvflare.app_common.abstract.learner_spec",
        "nvflare.app_common.executors.learner_executor")},
    # FLARE's Executor API (custom Executors in a job's custom/): one fedray module serves them all.
    **{f"nvflare.apis.{name}": "fedray.flare.executor_api" for name in (
        "shareable", "fl_constant", "dxo", "signal", "event_type", "fl_context", "fl_component", "executor",
        "workspace")},
    # FLARE's PyTorch helper modules are one fedray module: fedray.client.pt has them all.
    "nvflare.app_opt.pt.fedproxloss": "fedray.client.pt",  # PTFedProxLoss
    "nvflare.app_opt.pt.scaffold": "fedray.client.pt",  # PTScaffoldHelper, get_lr_values
    "nvflare.app_common.utils.fedprox_utils": "fedray.client.pt",  # get_fedprox_mu
}
# Packages on the way to an alias: empty modules, so that `import nvflare.client` can walk down.
_PARENTS = {"nvflare", "nvflare.apis", "nvflare.app_common", "nvflare.app_common.abstract",
            "nvflare.app_common.executors", "nvflare.app_common.utils", "nvflare.app_opt", "nvflare.app_opt.pt"}


class _NVFlareAliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self) -> None:
        self.own_specs: dict[str, importlib.machinery.ModuleSpec] = {}

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None, target: Optional[types.ModuleType] = None):
        if fullname in ALIASES or fullname in _PARENTS:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        if fullname.startswith("nvflare."):
            raise ModuleNotFoundError(
                f"No module named '{fullname}': inside a fedray site, nvflare is fedray's Client API "
                f"({', '.join(sorted(ALIASES))}) only", name=fullname)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        if spec.name in ALIASES:
            served = importlib.import_module(ALIASES[spec.name])  # the fedray module itself, not a copy
            self.own_specs[spec.name] = served.__spec__
            return served
        module = types.ModuleType(spec.name, "fedray's stand-in for NVFlare's package of the same name")
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        """The module is fedray's, already run (or an empty package); the import machinery gave it
        the alias's spec, and it gets its own back."""
        own = self.own_specs.pop(module.__spec__.name, None)
        if own is not None:
            module.__spec__ = own


_FINDER = _NVFlareAliasFinder()


def install() -> None:
    """Serve `nvflare.client` (and its tracking, lightning, and FLARE's algorithm helpers) from
    fedray in this process."""
    if _FINDER in sys.meta_path:
        return
    for name in [name for name in sys.modules if name == "nvflare" or name.startswith("nvflare.")]:
        del sys.modules[name]  # a real NVFlare imported earlier must not answer the script's imports
    sys.meta_path.insert(0, _FINDER)
