"""What a stopped run needs to continue, and reading it back for `resume=RUN_DIR`.

After every round the driver has already written `models/FL_global_model.pt`
(with its round number) and `models/best_FL_global_model.pt`; here it adds each
site's best local model when it improves (`checkpoint/local_models/site-k.pt`)
and, last, `checkpoint/state.json`. Training is seeded by (seed, round, site) and
FedAvg does not depend on arrival order, so a resumed run ends with the same
weights as one that never stopped.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fedray.records.recorder import BEST_GLOBAL_MODEL, GLOBAL_MODEL, ROUNDS_LOG, _atomic, save_model, write_json

STATE = "checkpoint/state.json"
LOCAL_MODELS = "checkpoint/local_models"
ALGORITHM_STATE = "checkpoint/algorithm_state.pt"  # the algorithm's server state (FedOpt's moments, SCAFFOLD's c)
SITE_STATES = "checkpoint/site_states"  # each site's own state (SCAFFOLD's c_i), written when it changes


class ResumeError(RuntimeError):
    """`resume=RUN_DIR` cannot continue that run; the message is one line naming the path."""


def save_local_model(run_dir: Path, site: str, accuracy: float, params: Mapping[str, np.ndarray]) -> None:
    save_model(run_dir / LOCAL_MODELS / f"{site}.pt", params, local_val_accuracy=accuracy)


def save_algorithm_states(run_dir: Path, current_round: int, state: Any, site_states: Mapping[str, Any]) -> None:
    """The algorithm's server state and the changed site states after `current_round`, written before
    that round's global model: each file keeps its previous version too (`*.prev.pt`), so whichever
    round the model file says, `load` finds the states of that same round. A stateless algorithm's
    (FedAvg's) empty state is not written (two files a round): `load` reads a missing file as None, and
    the algorithm then starts from its `init`, that same empty state."""
    if state or (run_dir / ALGORITHM_STATE).is_file():
        _save_versioned(run_dir / ALGORITHM_STATE, current_round, state)
    for site, site_state in site_states.items():
        _save_versioned(run_dir / SITE_STATES / f"{site}.pt", current_round, site_state)


def _save_versioned(path: Path, current_round: int, value: Any) -> None:
    import torch  # in the functions, as in fedray/records/recorder.py

    if path.is_file():
        os.replace(path, _previous(path))
    _atomic(path, lambda f: torch.save({"round": current_round, "state": value}, f))


def _load_versioned(path: Path, last_round: int) -> tuple[bool, Any]:
    """(found, value) of the newest version of `path` written for a round <= `last_round`."""
    import torch

    for candidate in (path, _previous(path)):
        if candidate.is_file():
            saved = torch.load(candidate, map_location="cpu", weights_only=False)
            if saved["round"] <= last_round:
                return True, saved["state"]
    return False, None


def _previous(path: Path) -> Path:
    return path.with_name(path.name.replace(".pt", ".prev.pt"))


def save_state(run_dir: Path, event: Mapping[str, Any], best_round: int | None) -> None:
    write_json(run_dir / STATE, {
        "last_round": event["round"],
        "num_rounds": event["num_rounds"],
        "best_round": best_round,
        "best_val_accuracy": _json_number(event["best_val_accuracy"]),
    })


def load(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A stopped run's config, summary and models, checked against its model before any Ray work."""
    import torch

    run_dir = Path(run_dir).expanduser().resolve()
    where = f"resume={run_dir}"
    summary_path, global_path = run_dir / "summary.json", run_dir / "models" / GLOBAL_MODEL
    if not summary_path.is_file() or not global_path.is_file():
        raise ResumeError(f"{where}: no finished round to resume (needs summary.json and models/{GLOBAL_MODEL})")
    try:
        summary = json.loads(summary_path.read_text())
        state = json.loads((run_dir / STATE).read_text()) if (run_dir / STATE).is_file() else {}
        saved_global = torch.load(global_path, map_location="cpu")
    except Exception as err:
        raise ResumeError(f"{where}: cannot read its checkpoint ({type(err).__name__}: {err})".splitlines()[0]) from None
    # summary.json is rewritten at most every few seconds; rounds.jsonl has every finished round.
    rounds_log = run_dir / ROUNDS_LOG
    if rounds_log.is_file():
        rounds = [json.loads(line) for line in rounds_log.read_text().splitlines() if line.strip()]
        summary["rounds"] = [entry for entry in rounds if entry["round"] <= int(saved_global["round"])]
        summary["best_round"] = _best_round(summary["rounds"], summary.get("best_round"))
    config = summary["config"]
    model = instantiate(OmegaConf.create(config["model"]))
    global_params = _checked(model, saved_global, global_path, config)
    best_path = run_dir / "models" / BEST_GLOBAL_MODEL
    best_params = _checked(model, torch.load(best_path, map_location="cpu"), best_path, config) if best_path.is_file() else global_params
    local_models = {}
    for path in sorted((run_dir / LOCAL_MODELS).glob("*.pt")):
        saved = torch.load(path, map_location="cpu")
        local_models[path.stem] = (float(saved.get("local_val_accuracy", math.nan)), _checked(model, saved, path, config))
    best_val = state.get("best_val_accuracy")
    last_round = int(saved_global["round"])
    try:
        found, algorithm_state = _load_versioned(run_dir / ALGORITHM_STATE, last_round)
        site_states = {}
        for path in sorted((run_dir / SITE_STATES).glob("*.pt")):
            if path.name.endswith(".prev.pt"):
                continue
            site_found, site_state = _load_versioned(path, last_round)
            if site_found:
                site_states[path.stem] = site_state
    except Exception as err:
        raise ResumeError(f"{where}: cannot read its algorithm state ({type(err).__name__}: {err})".splitlines()[0]) from None
    if not found and (run_dir / ALGORITHM_STATE).is_file():
        raise ResumeError(f"{where}: {ALGORITHM_STATE} has no state for round {last_round + 1}")
    return {
        "run_dir": run_dir,
        "config": config,
        "summary": summary,
        # The model file is the truth: state.json is written after it, so it may lag by a round.
        "next_round": int(saved_global["round"]) + 1,
        "global": global_params,
        "best_global": best_params,
        "best_val_accuracy": -math.inf if best_val is None else best_val,
        "best_local": local_models,
        "algorithm_state": algorithm_state,  # None: the algorithm starts from its init (a run before algorithms)
        "site_states": site_states,
    }


def _checked(model: Any, saved: Mapping[str, Any], path: Path, config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    try:
        model.load_state_dict(saved["model"], strict=True)
    except (RuntimeError, KeyError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ResumeError(
            f"resume: {path} does not match model._target_={config['model']['_target_']} ({reason})"
        ) from None
    return {name: value.numpy() for name, value in saved["model"].items()}


def _best_round(rounds: list[dict[str, Any]], default: int | None) -> int | None:
    """The round the controller chose as best: the first with the highest global val_accuracy."""
    best, best_score = default, -math.inf
    for entry in rounds:
        score = entry["global"].get("val_accuracy", -math.inf)
        if score is not None and score > best_score:  # NaN (no validation split) is never the best
            best, best_score = entry["round"], score
    return best


def _json_number(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else value
