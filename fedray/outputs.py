"""What a run leaves in its run dir: FLARE-style model files and summary.json.

Every file is written to a temporary name and renamed, so a crash mid-write
never leaves a torn file, and summary.json is rewritten after every round.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

GLOBAL_MODEL = "FL_global_model.pt"
BEST_GLOBAL_MODEL = "best_FL_global_model.pt"


def save_model(path: str | os.PathLike, params: Mapping[str, np.ndarray], **extra: Any) -> None:
    """`torch.load(path)["model"]` is the state_dict, as FLARE's PT persistor writes it."""
    state = {name: torch.from_numpy(np.array(value)) for name, value in params.items()}
    _atomic(Path(path), lambda f: torch.save({"model": state, **extra}, f))


def write_json(path: str | os.PathLike, data: Any) -> None:
    _atomic(Path(path), lambda f: f.write(json.dumps(data, indent=2, default=_plain).encode()))


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
