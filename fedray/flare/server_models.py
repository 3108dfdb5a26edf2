"""The server's models as a FLARE server app's own code sees them.

FLARE's PTFileModelPersistor writes the last and the best global model into the server's app folder;
a job's own ModelLocator (hello-pt's PTModelLocator) reads them from there and names the models
cross-site evaluation validates. fedray writes the same files where that locator looks and runs it.
Run in the server components' actor (fedray/server/flare_components.py), which runs the job's code.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import numpy as np

from fedray.flare.executor_api import DXO, DataKind, FLContext

# FLARE's PTFileModelPersistor's default file names, in the server's app folder.
GLOBAL_MODEL_FILE = "FL_global_model.pt"
BEST_GLOBAL_MODEL_FILE = "best_FL_global_model.pt"
# CrossSiteModelEval's prefix for a server model in the results (a locator's "server" is "SRV_server").
SERVER_MODEL_PREFIX = "SRV_"


def persist_global_models(app_dir: str, last: Mapping[str, np.ndarray], best: Mapping[str, np.ndarray]) -> None:
    """The files FLARE's PTFileModelPersistor leaves, in its format ({"model": state_dict})."""
    import torch  # here: the module is imported wherever the actor's handle goes (the controller)

    os.makedirs(app_dir, exist_ok=True)
    for name, params in ((GLOBAL_MODEL_FILE, last), (BEST_GLOBAL_MODEL_FILE, best)):
        state = {key: torch.from_numpy(np.array(value)) for key, value in params.items()}
        path = os.path.join(app_dir, name)
        torch.save({"model": state}, path + ".tmp")
        os.replace(path + ".tmp", path)


def locate_models(locator: Any, fl_ctx: FLContext, where: str) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """{"SRV_" + name: weights} for each model the locator names and finds, and one line for each it
    does not (FLARE's CrossSiteModelEval skips those too)."""
    found: dict[str, dict[str, np.ndarray]] = {}
    missing: list[str] = []
    for name in locator.get_model_names(fl_ctx) or []:
        dxo: Optional[DXO] = locator.locate_model(name, fl_ctx)
        if dxo is None:
            missing.append(f"{where}: locate_model('{name}') found no model; cross-site evaluation skips it")
            continue
        if not isinstance(dxo, DXO) or dxo.data_kind != DataKind.WEIGHTS:
            kind = dxo.data_kind if isinstance(dxo, DXO) else type(dxo).__name__
            raise TypeError(f"{where}: locate_model('{name}') returned {kind}; cross-site evaluation takes a WEIGHTS DXO")
        found[SERVER_MODEL_PREFIX + name] = {key: _numpy(value) for key, value in dxo.data.items()}
    return found, missing


def _numpy(value: Any) -> np.ndarray:
    detach = getattr(value, "detach", None)  # a tensor a locator left as it was
    return detach().cpu().numpy() if detach else np.asarray(value)
