"""An experiment tracker beside tb/ (`tracking=mlflow|wandb`, README "Tracking"), written by the driver alone.

A tracker gets what TensorBoard gets (`tensorboard.round_scalars`: the global metrics per round, each site's where
tb/ has them, the sites' streamed training curves), plus the simulated clock's time, the cross-site matrix, the
config as params and, at the end, the run's files as artifacts. `open_tracker` wraps it in `Guarded`: a tracker
that fails (a locked database, a server gone) is one warning, and the run goes on without it; its calls run in
order on a thread of its own, so a slow store (MLflow creates a new SQLite store's tables in seconds) holds up
neither Ray's start nor the rounds.
"""

from __future__ import annotations

import copy
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Protocol

from fedray.fl_model import Point
from fedray.records.tensorboard import SERVER, round_scalars

log = logging.getLogger("fedray")

# The run folder's files a tracker keeps as artifacts at the end: the results, not the checkpoint (resume=
# reads it from the run folder) nor tb/ (its scalars are the tracker's metrics).
ARTIFACTS = ("summary.json", "rounds.jsonl", "run.log", ".hydra", "models", "plots", "cross_site_val")
SWEEP_MARK = "multirun.yaml"  # Hydra writes it at a sweep folder's root before its first job
FINISH_TIMEOUT = 300.0  # seconds the run's end waits for its tracker's last calls (the artifacts' upload)


class Tracker(Protocol):
    def start(self, params: Mapping[str, Any]) -> None: ...
    def log_scalars(self, scalars: list[tuple[str, float, int]]) -> None: ...  # (key, value, round)
    def log_points(self, points: list[Point]) -> None: ...  # a site's streamed curve, by its local step
    def log_cross_site(self, results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> None: ...
    def finish(self, summary: Mapping[str, Any], files: list[Path]) -> None: ...


class Guarded:
    """A tracker that can fail without the run: its first error is a warning, then it is left alone. Its calls
    are queued to one thread (in order); `finish` waits for them, at most FINISH_TIMEOUT seconds."""

    def __init__(self, name: str, build: Callable[[], Tracker], run_dir: Path, simulated: bool, per_site: bool) -> None:
        """`build`: the tracker, built on its thread too (importing its library takes seconds)."""
        self.name, self.run_dir = name, run_dir
        self.simulated, self.per_site = simulated, per_site
        self.tracker: Optional[Tracker] = None
        self.failed = False
        self.queue = ThreadPoolExecutor(1, thread_name_prefix=f"fedray-{name}")
        self.queue.submit(self._build, build)

    def start(self, params: Mapping[str, Any]) -> None:
        self._call("start", copy.deepcopy(dict(params)))  # the driver's job dict stays the driver's

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
        done = self._call("finish", copy.deepcopy(dict(summary)), files)
        try:
            done.result(timeout=FINISH_TIMEOUT)
        except TimeoutError:
            log.warning("tracking=%s: still sending after %g s; the run ends without waiting for it",
                        self.name, FINISH_TIMEOUT)
        self.queue.shutdown(wait=False)

    def _call(self, method: str, *args: Any) -> Any:
        return self.queue.submit(self._run, method, *args)

    def _build(self, build: Callable[[], Tracker]) -> None:
        try:
            self.tracker = build()
        except Exception as err:  # noqa: BLE001 - a missing server, a bad URI: as any later failure
            self._fail(err)

    def _run(self, method: str, *args: Any) -> None:
        if self.failed or self.tracker is None:
            return
        try:
            getattr(self.tracker, method)(*args)
        except Exception as err:  # noqa: BLE001 - whatever the tracker's library raises, the run goes on
            self._fail(err)

    def _fail(self, err: Exception) -> None:
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

    def build() -> Tracker:
        if settings["name"] == "mlflow":
            from fedray.records.mlflow_tracker import MlflowTracker

            return MlflowTracker(settings, run_name, group, sweep, run_dir)
        from fedray.records.wandb_tracker import WandbTracker

        return WandbTracker(settings, run_name, group, run_dir)

    guarded = Guarded(settings["name"], build, run_dir, simulated, per_site)
    guarded.start(job)
    return guarded


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
