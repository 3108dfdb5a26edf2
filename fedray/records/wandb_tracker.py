"""`tracking=wandb`: a job is a W&B run, offline by default, its files in the run folder's `wandb/`; a sweep's
jobs share a group. `wandb sync RUN_DIR/wandb/offline-run-*` uploads an offline run later. Imported only for
such jobs.

W&B's own step must grow with every call, while rounds and a site's local steps are two clocks: so each
metric names its x axis (`define_metric`): `round` for the round's scalars, `<site>/local_step` for a
site's streamed curve.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import wandb

from fedray.fl_model import Point
from fedray.records.tracking import cross_site_scalars

ROUND = "round"


class WandbTracker:
    def __init__(self, settings: Mapping[str, Any], run_name: str, group: Optional[str], run_dir: Path) -> None:
        self.settings, self.run_name, self.group, self.run_dir = settings, run_name, group, run_dir
        self.run: Any = None
        self.axes: set[str] = set()

    def start(self, params: Mapping[str, Any]) -> None:
        self.run = wandb.init(
            project=self.settings["experiment"], name=self.run_name, group=self.group, mode=self.settings["mode"],
            dir=str(self.run_dir), config=dict(params), tags=[f"{k}:{v}" for k, v in self.settings["tags"].items()],
            reinit="create_new",  # a sweep's jobs in one process: a run each
            # No console capture (the driver's log is run.log already) and no system sampling thread.
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True, disable_code=True),
        )
        self.run.define_metric(ROUND)

    def log_scalars(self, scalars: list[tuple[str, float, int]]) -> None:
        by_round: dict[int, dict[str, float]] = {}
        for key, value, step in scalars:
            self._axis(key, ROUND)
            by_round.setdefault(step, {})[key] = value
        for step, values in sorted(by_round.items()):
            self.run.log({**values, ROUND: step})

    def log_points(self, points: list[Point]) -> None:
        for site, tag, value, step in points:
            axis = f"{site}/local_step"
            self._axis(f"{site}/{tag}", axis)
            self.run.log({f"{site}/{tag}": value, axis: step})

    def log_cross_site(self, results: Mapping[str, Any]) -> None:
        scalars = cross_site_scalars(results)
        for key, value in scalars:
            self.run.summary[key] = value
        table = wandb.Table(columns=["model", "site", "metric", "value"],
                            data=[key.split("/")[1:] + [value] for key, value in scalars])
        self.run.log({"cross_site": table})

    def finish(self, summary: Mapping[str, Any], files: list[Path]) -> None:
        self.run.summary["status"] = summary.get("status")
        if files:
            artifact = wandb.Artifact(f"run-{self.run.id}", type="fedray-run")
            for path in files:
                # "immutable": referenced, not copied into W&B's staging folder; the run folder's files are final.
                if path.is_dir():
                    for file in sorted(p for p in path.rglob("*") if p.is_file()):
                        artifact.add_file(str(file), name=file.relative_to(self.run_dir).as_posix(), policy="immutable")
                else:
                    artifact.add_file(str(path), name=path.name, policy="immutable")
            self.run.log_artifact(artifact)
        self.run.finish(exit_code=0 if summary.get("status") == "completed" else 1)
        # finish() returns before W&B's service has written the run's last records to its offline file, and the
        # driver leaves with os._exit soon after: teardown waits for the service to finish and stop.
        wandb.teardown()

    def _axis(self, key: str, axis: str) -> None:
        if key not in self.axes:
            self.axes.add(key)
            self.run.define_metric(key, step_metric=axis)
