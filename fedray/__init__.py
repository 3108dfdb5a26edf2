"""fedray: FLARE's federated-learning job semantics on Ray actors, configured by Hydra."""

from __future__ import annotations

import importlib
from typing import Any

from fedray import moved_names

moved_names.install()  # fedray.sweep.SweepSummary & co., the paths before fedray/ had folders

# The public API, imported on first use: Ray loads fedray.<module> in every actor process, and
# the controller and the metric mailbox have no use for torch (seconds of CPU per process).
_EXPORTS = {
    "Algorithm": "fedray.algorithms",
    "ClientPart": "fedray.algorithms",
    "ConfigError": "fedray.config",
    "FLModel": "fedray.fl_model",
    "JobFailed": "fedray.driver.job",
    "ParamsType": "fedray.fl_model",
    "fedavg": "fedray.aggregation",
    "load_config": "fedray.driver.preflight",
    "make_synthetic": "fedray.data.synthetic",
    "run_job": "fedray.driver.job",
    "write_cifar10": "fedray.data.synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fedray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
