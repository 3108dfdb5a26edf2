"""`tracking=mlflow`: a job is an MLflow run, a sweep's jobs are children of one parent run.

By default the store is MLflow's SQLite one, `sqlite:///<working folder>/mlflow.db` (MLflow 3.7+'s own default,
so `mlflow ui` started there shows fedray's runs), its artifacts in `mlartifacts/` beside it; `tracking.uri` or
$MLFLOW_TRACKING_URI name another (a server, `databricks`, another database). Imported only for such jobs.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from fedray.fl_model import Point
from fedray.records.tracking import chunks, cross_site_scalars, flat_params

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
PARENT_TAG = "fedray.sweep"  # the parent run of a sweep's jobs: its group's name
# MLflow's limits per log_batch call, and on a param's value.
METRICS_PER_BATCH, PARAMS_PER_BATCH, PARAM_CHARS = 1000, 100, 6000
LOCK = ".mlflow.lock"  # in the sweep folder: parallel jobs create the experiment and the parent run once


def tracking_uri(uri: Optional[str]) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(DEFAULT_DB).resolve()}"


class MlflowTracker:
    def __init__(self, settings: Mapping[str, Any], run_name: str, group: Optional[str], sweep: Optional[Path],
                 run_dir: Path) -> None:
        self.uri = tracking_uri(settings["uri"])
        self.client: MlflowClient
        self.settings, self.run_name, self.group, self.sweep, self.run_dir = settings, run_name, group, sweep, run_dir
        self.run_id = ""

    def start(self, params: Mapping[str, Any]) -> None:
        with _locked(self.sweep):  # a new SQLite store's tables are created with the first client: once
            self.client = MlflowClient(tracking_uri=self.uri)
            experiment_id = experiment(self.client, self.settings["experiment"], self.uri)
            parent = self._parent(experiment_id) if self.group else None
        tags = {**self.settings["tags"], "fedray.run_dir": str(self.run_dir), "fedray.job_id": str(params.get("job_id", ""))}
        if parent:
            tags.update({"mlflow.parentRunId": parent, "fedray.group": self.group})
        self.run_id = self.client.create_run(experiment_id, run_name=self.run_name, tags=tags).info.run_id
        values = [Param(key, value[:PARAM_CHARS]) for key, value in flat_params(params).items()]
        for batch in chunks(values, PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=batch, synchronous=True)

    def log_scalars(self, scalars: list[tuple[str, float, int]]) -> None:
        self._metrics([(key, value, step) for key, value, step in scalars])

    def log_points(self, points: list[Point]) -> None:
        self._metrics([(f"{site}/{tag}", value, step) for site, tag, value, step in points])

    def log_cross_site(self, results: Mapping[str, Any]) -> None:
        self._metrics([(key, value, 0) for key, value in cross_site_scalars(results)])

    def finish(self, summary: Mapping[str, Any], files: list[Path]) -> None:
        status = summary.get("status")
        self.client.set_tag(self.run_id, "fedray.status", str(status))
        for path in files:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            else:
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, "FINISHED" if status == "completed" else "FAILED")

    def _metrics(self, scalars: list[tuple[str, float, int]]) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(_key(key), float(value), now, int(step)) for key, value, step in scalars]
        for batch in chunks(metrics, METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch, synchronous=True)

    def _parent(self, experiment_id: str) -> str:
        """The sweep's parent run (found by its tag, else created: under the sweep folder's lock)."""
        found = parent_runs(self.client, experiment_id, self.group)
        if found:
            return found[0].info.run_id
        tags = {PARENT_TAG: self.group, **({"fedray.sweep_dir": str(self.sweep)} if self.sweep else {})}
        return self.client.create_run(experiment_id, run_name=self.group, tags=tags).info.run_id


def experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The experiment's id, created if new (in a SQLite store, its artifacts go beside the database)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / DEFAULT_ARTIFACTS).resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def parent_runs(client: MlflowClient, experiment_id: str, group: str) -> list[Any]:
    escaped = group.replace("'", "\\'")
    return client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{escaped}'", max_results=1)


def end_sweep(settings: Mapping[str, Any], group: str, sweep_dir: Path) -> None:
    """At a sweep's end: its parent run gets the sweep summary as artifacts and is ended."""
    uri = tracking_uri(settings["uri"])
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(settings["experiment"])
    runs = parent_runs(client, found.experiment_id, group) if found is not None else []
    for run in runs:
        for name in ("sweep_summary.csv", "sweep_summary.md"):
            if (sweep_dir / name).is_file():
                client.log_artifact(run.info.run_id, str(sweep_dir / name))
        client.log_batch(run.info.run_id, tags=[RunTag("fedray.status", "ended")], synchronous=True)
        client.set_terminated(run.info.run_id, "FINISHED")


def _key(key: str) -> str:
    """MLflow takes letters, digits, `_ - . / :` and spaces in a metric's name."""
    return re.sub(r"[^\w\-./: ]", "_", key)


@contextmanager
def _locked(sweep: Optional[Path]) -> Iterator[None]:
    """A sweep's jobs, run at once (hydra/launcher=fedray_ray), take turns to find or create the shared runs."""
    if sweep is None:
        yield
        return
    with open(sweep / LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
