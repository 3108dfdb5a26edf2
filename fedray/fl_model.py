"""FLModel: what sites and the server exchange, with FLARE's field meanings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


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
