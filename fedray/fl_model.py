"""What crosses processes: `FLModel` (sites and server exchange it, with FLARE's field meanings) and
`Point` (a metric a site streams to the driver)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional


class ParamsType:
    FULL = "FULL"  # params are the model's weights
    DIFF = "DIFF"  # params are local weights minus the received global weights


@dataclass
class FLModel:
    params: Optional[dict[str, Any]] = None
    params_type: str = ParamsType.FULL
    metrics: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    current_round: Optional[int] = None
    total_rounds: Optional[int] = None
    start_round: int = 0
    optimizer_params: Optional[dict[str, Any]] = None


NUM_STEPS_CURRENT_ROUND = "NUM_STEPS_CURRENT_ROUND"
# A train result's meta key for the site's own trained weights when its params are what FLARE's result
# filters let through: the server folds params, and keeps this one for cross-site evaluation.
LOCAL_MODEL = "local_model"


def local_model(result: FLModel) -> FLModel:
    """A train result as the site's own model (cross-site evaluation's): its LOCAL_MODEL if it sent one."""
    if LOCAL_MODEL not in result.meta:
        return result
    meta = {key: value for key, value in result.meta.items() if key != LOCAL_MODEL}
    return replace(result, params=result.meta[LOCAL_MODEL], meta=meta)

# A server state's entry of models by name that stay the same while kept (FedBuff's start versions of the
# trainings in flight): the checkpoint writes each once, as a file of its own, not every round with the state
# (fedray/records/checkpoint.py), and `resume=` puts them back.
KEPT_MODELS = "fedray_kept_models"

# A cross-site cell is the validator's own metrics, as FLARE's ValidationJsonGenerator keeps them:
# fedray's sites send val_accuracy, Client API scripts usually accuracy, hello-pt's validator val_acc.
ACCURACY_KEYS = ("val_accuracy", "accuracy", "val_acc")


def accuracy_of(metrics: Mapping[str, Any]) -> Optional[float]:
    """A validation's accuracy, under whichever of ACCURACY_KEYS its validator used (None: none)."""
    key = next((key for key in ACCURACY_KEYS if key in metrics), None)
    return None if key is None else float(metrics[key])


class AlgorithmConstants:
    """FLARE's meta keys for its algorithms (nvflare.app_common.app_constant)."""

    FEDPROX_MU = "fedprox_mu"  # FLARE's FedAvg(fedprox_mu=...) sends mu with the model
    SCAFFOLD_CTRL_DIFF = "scaffold_c_diff"  # a site's c_i+ - c_i, in its train result
    SCAFFOLD_CTRL_GLOBAL = "scaffold_c_global"  # the server's c, with the global model


# (site, tag, value, step): a metric a site streams (fedray/site/metric_stream.py) and the driver
# writes (fedray/records/); the step is the site's own, increasing across rounds.
Point = tuple[str, str, float, int]
