"""An experiment tracker beside tb/ (`tracking=mlflow|wandb`, README "Tracking"), written by the driver alone.

A tracker gets what TensorBoard gets (`tensorboard.round_scalars`: the global metrics per round, each site's where
tb/ has them, the sites' streamed training curves), plus the simulated clock's time, the cross-site matrix, the
config as params and, at the end, the run's files as artifacts. `open_tracker` wraps it in `Guarded`: a tracker
that fails (a locked database, a server gone) is one warning, and the run goes on without it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Protocol

from fedray.fl_model import Point
from fedray.records.tensorboard import SERVER, round_scalars

log = logging.getLogger("fedray")

# The run folder's files a tracker keeps as artifacts at the end: the results, not the checkpoint (resume=
# reads it from the run folder) nor tb/ (its scalars are the tracker's metrics).
ARTIFACTS = ("summary.json", "rounds.jsonl", "run.log", ".hydra", "models", "plots", "cross_site_val")
SWEEP_MARK = "multirun.yaml"  # Hydra writes it at a sweep folder's root before its first job


class Tracker(Protocol):
    def start(self, params: Mapping[str, Any]) -> None: ...
    def log_scalars(self, scalars: list[tuple[str, float, int]]) -> None: ...  # (key, value, round)
    def log_points(self, points: list[Point]) -> None: ...  # a site's streamed curve, by its local step
    def log_cross_site(self, results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> None: ...
    def finish(self, summary: Mapping[str, Any], files: list[Path]) -> None: ...


class Guarded:
    """A tracker that can fail without the run: its first error is a warning, then it is left alone."""

    def __init__(self, name: str, tracker: Tracker, run_dir: Path, simulated: bool, per_site: bool) -> None:
        self.name, self.tracker, self.run_dir = name, tracker, run_dir
        self.simulated, self.per_site = simulated, per_site
        self.failed = False

    def start(self, params: Mapping[str, Any]) -> None:
        self._call("start", params)

    def round(self, event: Mapping[str, Any]) -> None:
        scalars = [(tag if run == SERVER else f"{run}/{tag}", value, step)
                   for run, run_scalars in round_scalars(event, self.simulated, self.per_site).items()
                   for tag, value, step in run_scalars]
        if self.simulated:  # the federation's time after this round (TensorBoard stamps its events with it)
            scalars.append(("sim_time", event.get("sim_time", 0.0), event["round"]))
        self._call("log_scalars", scalars)

    def points(self, points: list[Point]) -> None:
        if points:
            self._call("log_points", points)

    def cross_site(self, results: Mapping[str, Any]) -> None:
        if results:
            self._call("log_cross_site", results)

    def finish(self, summary: Mapping[str, Any]) -> None:
        files = [self.run_dir / name for name in ARTIFACTS if (self.run_dir / name).exists()]
        self._call("finish", summary, files)

    def _call(self, method: str, *args: Any) -> None:
        if self.failed:
            return
        try:
            getattr(self.tracker, method)(*args)
        except Exception as err:  # noqa: BLE001 - whatever the tracker's library raises, the run goes on
            self.failed = True
            text = str(err).strip().splitlines()
            log.warning("tracking=%s failed (%s: %s); the run goes on without it, its run folder has everything",
                        self.name, type(err).__name__, text[0] if text else "")


def open_tracker(job: Mapping[str, Any], run_dir: Path, simulated: bool, per_site: bool) -> Optional[Guarded]:
    """The job's tracker (`job["tracking"]`), started with the job's config as its params; None for tracking=none."""
    settings = job["tracking"]
    if settings["name"] == "none":
        return None
    sweep = sweep_folder(run_dir)
    group = settings["group"] or (shown(sweep) if sweep else None)
    run_name = settings["run_name"] or shown(run_dir)
    try:
        if settings["name"] == "mlflow":
            from fedray.records.mlflow_tracker import MlflowTracker

            tracker: Tracker = MlflowTracker(settings, run_name, group, sweep, run_dir)
        else:
            from fedray.records.wandb_tracker import WandbTracker

            tracker = WandbTracker(settings, run_name, group, run_dir)
    except Exception as err:  # noqa: BLE001 - as any later failure: a warning
        tracker = _Failed(err)
    guarded = Guarded(settings["name"], tracker, run_dir, simulated, per_site)
    guarded.start(job)
    return guarded


class _Failed:
    """A tracker that could not be built: its error comes out as the first call's."""

    def __init__(self, err: Exception) -> None:
        self.err = err

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any) -> None:
            raise self.err
        return fail


def sweep_folder(run_dir: Path) -> Optional[Path]:
    """The sweep folder a job's run folder lies in (Hydra's multirun.yaml at its root), or None for a single run."""
    for folder in list(run_dir.parents)[:3]:
        if (folder / SWEEP_MARK).is_file():
            return folder
    return None


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The config as dotted keys (`workflows.scatter_and_gather.num_rounds`) and text values: MLflow's params."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flat_params(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def cross_site_scalars(results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[tuple[str, float]]:
    """FLARE's cross_val_results.json ({validating site: {model: {metric: value}}}) as
    `cross_site/<model>/<site>/<metric>` scalars: one per cell of the matrix."""
    return [(f"cross_site/{model}/{site}/{metric}", float(value))
            for site, models in results.items() for model, metrics in models.items()
            for metric, value in metrics.items() if isinstance(value, (int, float))]


def shown(path: Path) -> str:
    """A folder as the user named it: relative to the working folder when it is under it."""
    path = Path(path).resolve()
    return os.path.relpath(path) if path.is_relative_to(Path.cwd().resolve()) else str(path)


def chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
