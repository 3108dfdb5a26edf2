"""What a stopped run needs to continue, and reading it back for `resume=RUN_DIR`.

After every round the driver writes the algorithm's and the changed sites' states, then (the
recorder) `models/FL_global_model.pt` and `models/best_FL_global_model.pt`, here each site's best
local model when it improves (`checkpoint/local_models/site-k.pt`), `checkpoint/state.json` and, last,
`checkpoint/manifest.json` (`manifest.py`: each file's round and sha256; each file's previous version
is kept). Training is seeded by (seed, round, site) and FedAvg does not depend on arrival order, so a
resumed run ends with the same weights as one that never stopped.

A server state's KEPT_MODELS (FedBuff's start versions of the trainings in flight: models that stay the
same while kept) are written once each, `checkpoint/kept_models/NAME.pt`, the state listing their names; a
model no longer kept leaves the manifest, and the disk once the previous manifest no longer lists it either.

`load` reads the newest round whose files all match their manifest (or, when those are damaged, the
round before, and says so), every .pt file with `torch.load(weights_only=True)` (`weights_only.py`),
all before Ray starts; anything else is one line naming the file. Run folders written before the
manifest resume as they did (the model file's round is the truth), and `restore` converts them.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fedray.fl_model import KEPT_MODELS
from fedray.records import manifest as manifests
from fedray.records.atomic import fsync_folder, write_atomic
from fedray.records.manifest import MANIFEST, Manifest, previous
from fedray.records.recorder import BEST_GLOBAL_MODEL, GLOBAL_MODEL, ROUNDS_LOG, model_bytes, write_json
from fedray.records import weights_only
from fedray.records.weights_only import dumps, from_saved, to_saved

STATE = "checkpoint/state.json"
LOCAL_MODELS = "checkpoint/local_models"
ALGORITHM_STATE = "checkpoint/algorithm_state.pt"  # the algorithm's server state (FedOpt's moments, SCAFFOLD's c)
SITE_STATES = "checkpoint/site_states"  # each site's own state (SCAFFOLD's c_i), written when it changes
KEPT = "checkpoint/kept_models"  # the server state's KEPT_MODELS, a file each, written once
GLOBAL, BEST = f"models/{GLOBAL_MODEL}", f"models/{BEST_GLOBAL_MODEL}"


class ResumeError(RuntimeError):
    """`resume=RUN_DIR` cannot continue that run; the message is one line naming the path."""


def save_local_model(files: Manifest, current_round: int, site: str, accuracy: float,
                     params: Mapping[str, np.ndarray]) -> None:
    files.save(f"{LOCAL_MODELS}/{site}.pt", model_bytes(params, local_val_accuracy=accuracy), current_round)


def save_algorithm_states(files: Manifest, current_round: int, state: Any, site_states: Mapping[str, Any]) -> None:
    """The algorithm's server state and the changed site states after `current_round`, written before
    that round's global model. A stateless algorithm's (FedAvg's) empty state is not written (two files
    a round): `load` reads a missing file as None, and the algorithm then starts from its `init`, that
    same empty state. Raises `weights_only.NotPlainData` for a state that is not plain data."""
    if isinstance(state, Mapping) and KEPT_MODELS in state:
        state = {**state, KEPT_MODELS: _save_kept(files, current_round, state[KEPT_MODELS])}
    if state or ALGORITHM_STATE in files.files:
        files.save(ALGORITHM_STATE, _state_bytes(current_round, state, "the algorithm's state"), current_round)
    for site, site_state in site_states.items():
        files.save(f"{SITE_STATES}/{site}.pt", _state_bytes(current_round, site_state, f"{site}'s state"), current_round)


def _save_kept(files: Manifest, current_round: int, kept: Mapping[str, Mapping[str, np.ndarray]]) -> list[str]:
    """The kept models not on disk yet written (FedBuff: one new version an aggregation, not the 5-6 in flight),
    those no longer kept forgotten; their names, for the state."""
    for name, params in kept.items():
        if f"{KEPT}/{name}.pt" not in files.files:
            files.save(f"{KEPT}/{name}.pt", model_bytes(params), current_round)
    for path in [path for path in files.files if path.startswith(KEPT + "/") and Path(path).stem not in kept]:
        files.forget(path)
    return sorted(kept)


def _state_bytes(current_round: int, value: Any, where: str) -> bytes:
    return dumps({"round": current_round, "state": to_saved(value, where)})


def save_state(files: Manifest, event: Mapping[str, Any], best_round: int | None) -> None:
    """The round's checkpoint is complete: state.json (for people and older readers), then the manifest."""
    facts = {"best_round": best_round, "best_val_accuracy": _json_number(event["best_val_accuracy"])}
    write_json(files.run_dir / STATE, {"last_round": event["round"], "num_rounds": event["num_rounds"], **facts})
    files.commit(event["round"], **facts)


def read_state_file(path: str | os.PathLike) -> dict[str, Any]:
    """A state file's `{"round", "state"}`, the state as the algorithm returned it (its numpy arrays back)."""
    saved = weights_only.load(path)
    return {**saved, "state": from_saved(saved["state"])}


def load(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A stopped run's config, summary, models and states, checked before any Ray work."""
    run_dir = Path(run_dir).expanduser().resolve()
    where = f"resume={run_dir}"
    summary_path = run_dir / "summary.json"
    has_manifest = (run_dir / MANIFEST).is_file() or (run_dir / manifests.PREVIOUS_MANIFEST).is_file()
    if not summary_path.is_file() or not (has_manifest or (run_dir / GLOBAL).is_file()):
        raise ResumeError(f"{where}: no finished round to resume (needs summary.json and models/{GLOBAL_MODEL})")
    try:
        summary = json.loads(summary_path.read_text())
        config = summary["config"]
        model = instantiate(OmegaConf.create(config["model"]))  # its _target_ is code the config names: trusted
    except Exception as err:
        raise ResumeError(f"{where}: cannot read {summary_path} ({type(err).__name__}: {err})".splitlines()[0]) from None
    saved = _from_manifest(run_dir, where, model, config) if has_manifest else _from_old_folder(run_dir, where, model, config)
    last_round = saved["next_round"] - 1
    rounds = _rounds_log(run_dir, where)
    if rounds is not None:  # summary.json is rewritten at most every few seconds; rounds.jsonl has every round
        summary["rounds"] = rounds
    summary["rounds"] = [entry for entry in summary["rounds"] if entry["round"] <= last_round]
    if "best_round" in saved:  # the manifest's, of the round resume goes on from
        summary["best_round"] = saved.pop("best_round")
    elif rounds is not None:
        summary["best_round"] = _best_round(summary["rounds"], summary.get("best_round"))
    return {"run_dir": run_dir, "config": config, "summary": summary, **saved}


def _from_manifest(run_dir: Path, where: str, model: Any, config: Mapping[str, Any]) -> dict[str, Any]:
    """The newest manifest whose files all match (or the one before it, with a warning)."""
    problems: list[str] = []
    for name in (MANIFEST, manifests.PREVIOUS_MANIFEST):
        try:
            files = manifests.read(run_dir, name)
        except ValueError as err:
            problems.append(str(err))
            continue
        if files is None:
            continue
        paths, problem = manifests.locate(files)
        if problem is None:
            break
        problems.append(problem)
    else:
        raise ResumeError(f"{where}: {problems[0]}, and no earlier round's checkpoint is whole; restore the "
                          "file or start a new run")
    if GLOBAL not in paths:
        raise ResumeError(f"{where}: {run_dir / name} lists no models/{GLOBAL_MODEL}")
    last_round = files.round
    saved_global = _read(paths[GLOBAL], where)
    if int(saved_global.get("round", -1)) != files.files[GLOBAL]["round"]:
        raise ResumeError(f"{where}: {paths[GLOBAL]} is of round {saved_global.get('round')}, not the manifest's")
    global_params = _checked(model, saved_global, paths[GLOBAL], config)
    best_params = _checked(model, _read(paths[BEST], where), paths[BEST], config) if BEST in paths else global_params
    local_models, site_states, algorithm_state, kept = {}, {}, None, {}
    for name, path in paths.items():
        if name.startswith(KEPT + "/"):
            kept[Path(name).stem] = _checked(model, _read(path, where), path, config)
        elif name.startswith(LOCAL_MODELS + "/"):
            saved = _read(path, where)
            local_models[Path(name).stem] = (float(saved.get("local_val_accuracy", math.nan)),
                                             _checked(model, saved, path, config))
        elif name.startswith(SITE_STATES + "/") or name == ALGORITHM_STATE:
            saved = _read(path, where)
            if not isinstance(saved, dict) or saved.get("round") != files.files[name]["round"]:
                raise ResumeError(f"{where}: {path} is not the state the manifest lists for its round")
            if name == ALGORITHM_STATE:
                algorithm_state = from_saved(saved["state"])
            else:
                site_states[Path(name).stem] = from_saved(saved["state"])
    if isinstance(algorithm_state, dict) and KEPT_MODELS in algorithm_state:
        missing = sorted(set(algorithm_state[KEPT_MODELS]) - kept.keys())
        if missing:
            raise ResumeError(f"{where}: the server state keeps {missing[0]}, but the checkpoint's manifest lists no "
                              f"{KEPT}/{missing[0]}.pt; restore the file or start a new run")
        algorithm_state[KEPT_MODELS] = {name: kept[name] for name in algorithm_state[KEPT_MODELS]}
    return _resumed(last_round, global_params, best_params, files.facts.get("best_val_accuracy"), local_models,
                    algorithm_state, site_states, files, paths,
                    best_round=files.facts.get("best_round"),
                    # The newest manifest's files were damaged: this round is the last whole one.
                    warning=(f"{where}: {problems[0]}; going on from the round before it, the last whole one"
                             if problems else None))


def _from_old_folder(run_dir: Path, where: str, model: Any, config: Mapping[str, Any]) -> dict[str, Any]:
    """A run folder written before the manifest: the global model file's round is the truth (state.json is
    written after it, so it may lag by a round); states pickled numpy arrays, so numpy's arrays are read."""
    state_path = run_dir / STATE
    try:
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    except (OSError, ValueError) as err:
        raise ResumeError(f"{where}: cannot read {state_path} ({type(err).__name__}: {err})".splitlines()[0]) from None
    saved_global = _read(run_dir / GLOBAL, where, numpy_arrays=True)
    global_params = _checked(model, saved_global, run_dir / GLOBAL, config)
    last_round = int(saved_global["round"])
    found, rounds = {GLOBAL: run_dir / GLOBAL}, {GLOBAL: last_round}
    best_path, best_params = run_dir / BEST, global_params
    if best_path.is_file():
        saved_best = _read(best_path, where, numpy_arrays=True)
        best_params = _checked(model, saved_best, best_path, config)
        found[BEST], rounds[BEST] = best_path, int(saved_best.get("round", last_round))
    local_models = {}
    for path in _current_files(run_dir / LOCAL_MODELS):
        saved = _read(path, where, numpy_arrays=True)
        local_models[path.stem] = (float(saved.get("local_val_accuracy", math.nan)), _checked(model, saved, path, config))
        name = f"{LOCAL_MODELS}/{path.name}"
        found[name], rounds[name] = path, last_round  # (an old local model file has no round)
    algorithm_state = None
    site_states = {}
    for path in [run_dir / ALGORITHM_STATE, *_current_files(run_dir / SITE_STATES)]:
        name = manifests.relative(run_dir, path)
        version = _old_version(path, last_round, where)
        if version is None:
            if name == ALGORITHM_STATE and path.is_file():
                raise ResumeError(f"{where}: {ALGORITHM_STATE} has no state for round {last_round + 1}")
            continue
        found[name], saved = version
        rounds[name] = int(saved["round"])
        if name == ALGORITHM_STATE:
            algorithm_state = saved["state"]
        else:
            site_states[path.stem] = saved["state"]
    # files=None: restore() writes the folder's first manifest
    return _resumed(last_round, global_params, best_params, state.get("best_val_accuracy"), local_models,
                    algorithm_state, site_states, None, found, old_rounds=rounds, warning=None)


def _resumed(last_round: int, global_params: dict[str, np.ndarray], best_params: dict[str, np.ndarray],
             best_val: Optional[float], local_models: dict[str, Any], algorithm_state: Any,
             site_states: dict[str, Any], files: Optional[Manifest], found: dict[str, Path], **extra: Any) -> dict[str, Any]:
    """What `load` returns beside the config and summary, from a manifest's folder or an older one."""
    return {
        "next_round": last_round + 1,
        "global": global_params,
        "best_global": best_params,
        "best_val_accuracy": -math.inf if best_val is None else best_val,
        "best_local": local_models,
        "algorithm_state": algorithm_state,  # None: the algorithm starts from its init (FedAvg's empty state)
        "site_states": site_states,
        "files": files,  # restore() moves each file's found version to its own name
        "found": found,
        **extra,
    }


def _old_version(path: Path, last_round: int, where: str) -> Optional[tuple[Path, dict[str, Any]]]:
    """The newest version of an old folder's state file written for a round <= `last_round`."""
    for candidate in (path, previous(path)):
        if candidate.is_file():
            saved = _read(candidate, where, numpy_arrays=True)
            if not isinstance(saved, dict) or "round" not in saved:
                raise ResumeError(f"{where}: {candidate} is not a fedray state file")
            if saved["round"] <= last_round:
                return candidate, saved
    return None


def restore(saved: Mapping[str, Any]) -> Manifest:
    """Make the run folder what `load` read, before the run goes on writing it: each file's version that
    was read moved back to its own name (a file newer than the manifest, or damaged, is dropped),
    rounds.jsonl cut to the rounds kept, and a manifest for that round (an old folder's first: its states
    rewritten as weights_only reads them). Returns the manifest the run continues."""
    run_dir, last_round = saved["run_dir"], saved["next_round"] - 1
    for name, path in saved["found"].items():
        if path != run_dir / name:
            os.replace(path, run_dir / name)
            fsync_folder(path.parent)
    files = saved["files"]
    if files is None:
        files = Manifest(run_dir)
        for name in saved["found"]:
            written_in = saved["old_rounds"][name]
            if name == ALGORITHM_STATE or name.startswith(SITE_STATES + "/"):
                state = saved["algorithm_state"] if name == ALGORITHM_STATE else saved["site_states"][Path(name).stem]
                files.save(name, _state_bytes(written_in, state, "state"), written_in)
            else:
                files.adopt(name, written_in)
    for folder in (run_dir / SITE_STATES, run_dir / LOCAL_MODELS, run_dir / KEPT, run_dir / "models"):
        for path in _current_files(folder):  # newer than the round resume goes on from: never to be read
            if manifests.relative(run_dir, path) not in files.files:
                path.unlink()
    summary = saved["summary"]
    write_atomic(run_dir / ROUNDS_LOG, "".join(json.dumps(entry) + "\n" for entry in summary["rounds"]).encode())
    best_val = saved["best_val_accuracy"]
    files.commit(last_round, best_round=summary["best_round"], best_val_accuracy=_json_number(best_val))
    return files


def _current_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.glob("*.pt") if not path.name.endswith(".prev.pt"))


def _rounds_log(run_dir: Path, where: str) -> Optional[list[dict[str, Any]]]:
    """rounds.jsonl's rounds; a torn last line (a stop in the middle of an append) is dropped."""
    path = run_dir / ROUNDS_LOG
    if not path.is_file():
        return None
    lines = path.read_text(errors="replace").splitlines()
    rounds = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rounds.append(json.loads(line))
        except ValueError:
            if number == len(lines):
                break
            raise ResumeError(f"{where}: {path} line {number} is not JSON (damaged); restore the file or "
                              "remove that line") from None
    return rounds


def _read(path: Path, where: str, numpy_arrays: bool = False) -> Any:
    """A .pt file as data: `torch.load(weights_only=True)`; what it refuses is refused here, in one line."""
    try:
        return weights_only.load(path, numpy_arrays=numpy_arrays)
    except pickle.UnpicklingError as err:
        raise ResumeError(f"{where}: {path} holds more than data ({_refusal(err)}): fedray reads run folders with "
                          "torch.load(weights_only=True) and runs no code from them; restore the file from a copy "
                          "you trust or start a new run") from None
    except Exception as err:
        reason = (str(err).strip().splitlines() or [""])[0]
        raise ResumeError(f"{where}: cannot read {path} ({type(err).__name__}: {reason}); "
                          "restore the file or start a new run") from None


def _refusal(err: BaseException) -> str:
    """The line of torch's long weights_only message that says what the file asked for (a GLOBAL it
    blocks, a type it cannot build)."""
    lines = [line.strip().removeprefix("WeightsUnpickler error: ") for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "nsupported" in line or "Can only build" in line:
            return line.split(" was not an allowed global")[0].split(". Please")[0][:200]
    return type(err).__name__


def _checked(model: Any, saved: Any, path: Path, config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    try:
        model.load_state_dict(saved["model"], strict=True)
    except (RuntimeError, KeyError, TypeError) as err:
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
