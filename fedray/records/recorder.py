"""The run dir's single writer: FLARE-style model files, summary.json, TensorBoard and plots.

The driver calls it as each round's event arrives, so whatever a finished
round produced is on disk before the next one ends, and as the sites' streamed
points arrive, so TensorBoard shows training live. Every file but the append-only
ones (TensorBoard's event files, rounds.jsonl) is written by `atomic.write_atomic`: a
crash never leaves a torn file. The model files go through the checkpoint's manifest
(`manifest.py`: digest, previous version kept). The plots are drawn at the end, from
the summary.
"""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fedray.fl_model import Point
from fedray.records.atomic import append_line, write_atomic
from fedray.records.manifest import Manifest
from fedray.records.tensorboard import TensorBoardWriter

# One drawing thread for the process: matplotlib caches open font files per thread, so a thread
# per run (a sweep's hundreds of jobs) would leak a file and some memory each time.
_DRAWER = ThreadPoolExecutor(1, thread_name_prefix="fedray-plots")

GLOBAL_MODEL = "FL_global_model.pt"
ROUNDS_LOG = "rounds.jsonl"  # a line per finished round, appended as it finishes
SUMMARY_SECONDS = 2.0
BEST_GLOBAL_MODEL = "best_FL_global_model.pt"


class RunRecorder:
    def __init__(self, run_dir: str | os.PathLike, resumed: dict[str, Any] | None = None, per_site: bool = True,
                 files: Manifest | None = None, simulated: bool = False) -> None:
        """`per_site`: TensorBoard folders for the sites too (`config.per_site_curves`); `files`: a resumed
        run's checkpoint manifest (`checkpoint.load`), else a new one; `simulated`: the rounds run on the
        simulated clock (fedray/system/), whose time TensorBoard's rounds are stamped with."""
        self.run_dir = Path(run_dir)
        self.files = files if files is not None else Manifest(self.run_dir)
        self.summary: dict[str, Any] = {
            "status": "running",  # then completed or failed, with a one-line error
            "error": None,
            "config": None,  # the resolved job, set by the driver
            "rounds": [],
            "best_round": None,
            "wall_seconds": None,
        }
        if resumed:  # a resumed run goes on from the rounds it had finished
            self.summary.update(rounds=resumed["rounds"], best_round=resumed["best_round"])
            if resumed.get("privacy"):  # its ledger's totals, until its next round gives the continued ledger's
                self.summary["privacy"] = {**resumed["privacy"], "stopped": None}
            for entry in self.summary["rounds"]:
                _note_site_privacy(self.summary, entry["sites"])
        self.tensorboard = TensorBoardWriter(self.run_dir / "tb", per_site=per_site, simulated=simulated)
        self.drawing: Future | None = None
        self.written_at = -math.inf  # when summary.json was last written

    def record_points(self, points: list[Point]) -> None:
        self.tensorboard.add_points(points)

    def record_round(self, event: Mapping[str, Any], params: Mapping[str, np.ndarray]) -> None:
        data = model_bytes(params, round=event["round"])
        self.files.save(f"models/{GLOBAL_MODEL}", data, event["round"])
        if event["is_best"]:
            self.files.save(f"models/{BEST_GLOBAL_MODEL}", data, event["round"])
            self.summary["best_round"] = event["round"]
        keep = ("round", "global", "sites", "failures", "seconds", "train_seconds", "evaluation_seconds", "sim_seconds",
                "sim_time", "privacy", "secure_aggregation")
        entry = {key: event[key] for key in keep if key in event}  # privacy: DP runs' epsilon so far, clip norm
        self.summary["rounds"].append(entry)
        if "sim_time" in event:  # the simulated clock after this round (fedray/system/; 0 without one)
            self.summary["sim_seconds"] = event["sim_time"]
        if "privacy_totals" in event:  # the ledger so far (local DP: each site's); a budget stop keeps its line
            self.summary["privacy"] = {**event["privacy_totals"], "stopped": (self.summary.get("privacy") or {}).get("stopped")}
        _note_site_privacy(self.summary, entry["sites"])
        # Every round lands in rounds.jsonl at once (an appended line); summary.json, which holds every
        # round and grows with them, is rewritten at most every SUMMARY_SECONDS: rewriting it after each
        # of a cross-device run's fast rounds cost the driver seconds (its total is quadratic in rounds).
        append_line(self.run_dir / ROUNDS_LOG, json.dumps(entry, default=_plain))
        if time.monotonic() - self.written_at >= SUMMARY_SECONDS:
            self._write_summary(indent=None)
        self.tensorboard.add_round(event)

    def record_budget_stop(self, message: str) -> None:
        """The run stopped before a round that would pass privacy.target_epsilon (a completed run)."""
        self.summary["privacy"] = {**(self.summary.get("privacy") or {}), "stopped": message}

    def record_cross_site(self, event: Mapping[str, Any]) -> None:
        """FLARE's cross_val_results.json (scripts written for FLARE read it unchanged) and a heatmap."""
        from fedray.records.plots import cross_site_heatmap, draw_safely

        folder = self.run_dir / "cross_site_val"
        write_json(folder / "cross_val_results.json", event["results"])
        if event["results"]:
            draw_safely(cross_site_heatmap, event["results"], path=folder / "cross_val_results.png")
        self.write(cross_site={"results": event["results"], "failures": event["failures"]})

    def finish(self, **fields: Any) -> dict[str, Any]:
        """The last summary.json, and the pictures in plots/ (TensorBoard's files are closed after each write)."""
        self.write(**fields)
        if self.drawing is None:
            self.start_drawing()
        self.drawing.result()
        return self.summary

    def start_drawing(self) -> None:
        """Draw plots/ in a thread once the workflows are done: it overlaps stopping the actors and Ray."""
        self.drawing = _DRAWER.submit(_draw_run, self.summary, self.run_dir / "plots")

    def write(self, **fields: Any) -> dict[str, Any]:
        self.summary.update(fields)
        self._write_summary(indent=2)
        return self.summary

    def _write_summary(self, indent: int | None) -> None:
        """summary.json; while rounds run, on one line: json's indented output is its pure-Python encoder,
        and at 100 rounds of 50 sites its rewrites took the driver 2 CPU s (cProfile), taken from the
        sites' training on a small machine. The last write, as the run ends, is indented."""
        write_json(self.run_dir / "summary.json", self.summary, indent=indent)
        self.written_at = time.monotonic()


def _note_site_privacy(summary: dict[str, Any], sites: Mapping[str, Mapping[str, Any]]) -> None:
    """privacy=dp_sgd: each site's epsilon so far (Opacus's accountant, over all its steps), from its last round,
    in summary["privacy"]["sites"]; a site not sampled in a round keeps its last."""
    for site, metrics in sites.items():
        if "dp_epsilon" in metrics:
            summary.setdefault("privacy", {}).setdefault("sites", {})[site] = {
                "epsilon": metrics["dp_epsilon"], "steps": metrics["dp_steps"],
                "noise_multiplier": metrics["dp_noise_multiplier"]}


def _draw_run(summary: Mapping[str, Any], folder: Path) -> Any:
    from fedray.records.plots import draw_run  # imported in the drawing thread: matplotlib's import is 0.25 s

    return draw_run(summary, folder)


def save_model(path: str | os.PathLike, params: Mapping[str, np.ndarray], **extra: Any) -> None:
    """A model file outside the checkpoint's manifest (`model_bytes`)."""
    write_atomic(path, model_bytes(params, **extra))


def model_bytes(params: Mapping[str, np.ndarray], **extra: Any) -> bytes:
    """`torch.load(path)["model"]` is the state_dict, as FLARE's PT persistor writes it."""
    import torch  # here: the driver imports torch while its Ray starts (fedray/driver/job.py), not at import

    from fedray.records.weights_only import dumps

    return dumps({"model": {name: torch.from_numpy(np.array(value)) for name, value in params.items()}, **extra})


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> None:
    write_atomic(path, json.dumps(data, indent=indent, default=_plain).encode())


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
