"""The run's TensorBoard event files, written by the driver alone: `tb/` for the server, `tb/site-k/` per site.

Sites never touch these files: their points reach the driver through
`fedray.site.metric_stream` and land here, so no two processes write one file. Every
site folder has the same tags, so TensorBoard draws the sites in one chart per tag.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.record_writer import RecordWriter

from fedray.fl_model import Point
from fedray.records.atomic import no_space_as_disk_full

SERVER = ""  # the run folder of the global metrics: tb/ itself
# Per-round tags; their step is the round, counted from 0 as in summary.json.
GLOBAL_TAGS = ("val_accuracy", "test_accuracy", "test_loss")
# A DP round's record (summary.json's rounds[].privacy) -> tb/'s privacy/<key>.
PRIVACY_TAGS = ("epsilon", "clip", "unclipped_fraction")
# A site's summary.json metric -> its tag. A site's `val_accuracy` scores the model it received, the
# global one of the round before: renamed, so no chart lines it up with the global `val_accuracy`.
SITE_ROUND_TAGS = {
    "val_accuracy": "received_val_accuracy",
    "local_val_accuracy": "local_val_accuracy",
    "num_steps": "num_steps",
    "seconds": "seconds",
    "dp_epsilon": "dp_epsilon",  # privacy=dp_sgd: the site's epsilon so far
}


class TensorBoardWriter:
    """Event files in TensorBoard's format, one per run folder, appended to synchronously.

    No `SummaryWriter`: each holds an open file and a thread, and a cross-device run touches
    thousands of site folders (800 in 30 rounds of W2); closing and reopening them cost the
    driver seconds. Here a folder's file is opened, appended to and closed per batch of points,
    so TensorBoard sees every batch at once and nothing stays open between them.
    """

    def __init__(self, folder: str | os.PathLike, per_site: bool = True, simulated: bool = False) -> None:
        """`per_site`: the sites' own folders too (else the round's sites are summed up in `tb/` only);
        `simulated`: the server's round scalars carry the simulated clock's time as their wall time (TensorBoard's
        relative time axis then shows the federation's time); a site's folder keeps this machine's, as its
        streamed points have it (one file, one time axis)."""
        self.folder = Path(folder)
        self.per_site = per_site
        self.simulated = simulated
        self.files: dict[str, Path] = {}

    def add_points(self, points: Iterable[Point]) -> None:
        """Points streamed by the sites while they train (tag `train_loss`, step: the site's local steps)."""
        by_site: dict[str, list[tuple[str, float, int]]] = {}
        for site, tag, value, step in points:
            by_site.setdefault(site, []).append((tag, value, step))
        for site, scalars in by_site.items():
            self._append(site, scalars)

    def add_round(self, event: Mapping[str, Any]) -> None:
        """A finished round: `round_scalars`, the server's stamped with the simulated clock's time when it runs."""
        wall = event.get("sim_time") if self.simulated else None
        for run, scalars in round_scalars(event, self.simulated, self.per_site).items():
            self._append(run, scalars, wall if run == SERVER else None)

    def _append(self, run: str, scalars: list[tuple[str, float, int]], wall: float | None = None) -> None:
        """`wall`: the events' wall time (the simulated clock's); None: now."""
        now = time.time()
        stamp = now if wall is None else wall
        events = [Event(wall_time=stamp, step=int(step), summary=Summary(value=[Summary.Value(tag=tag, simple_value=float(value))]))
                  for tag, value, step in scalars]
        path = self.files.get(run)
        if path is None:
            folder = self.folder / run
            with no_space_as_disk_full(folder):
                folder.mkdir(parents=True, exist_ok=True)
            # TensorBoard's own naming: events.out.tfevents.<time>.<host>, with the pid to keep runs apart.
            path = self.files[run] = folder / f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.fedray"
            events.insert(0, Event(wall_time=now, file_version="brain.Event:2"))
        with no_space_as_disk_full(path), open(path, "ab") as file:
            records = RecordWriter(file)
            for event in events:
                records.write(event.SerializeToString())


def round_scalars(event: Mapping[str, Any], simulated: bool, per_site: bool) -> dict[str, list[tuple[str, float, int]]]:
    """A finished round's scalars by run (SERVER, then each site with `per_site`), as (tag, value, round): the global
    metrics, round seconds and the answering sites' mean training loss (weighted by their steps, as FedAvg weighs
    them), DP's privacy/*, the simulated clock's; each site's round metrics. TensorBoard and the trackers
    (fedray/records/tracking.py) write these same scalars."""
    step = event["round"]
    server = [(tag, event["global"][tag], step) for tag in GLOBAL_TAGS if tag in event["global"]]  # eval_every
    sites = [metrics for metrics in event["sites"].values() if "train_loss" in metrics and metrics.get("num_steps")]
    if sites:
        steps = sum(metrics["num_steps"] for metrics in sites)
        server.append(("sites_train_loss", sum(m["train_loss"] * m["num_steps"] for m in sites) / steps, step))
    privacy = event.get("privacy") or {}  # DP: epsilon spent so far (local: the most any site spent), clip norm
    server += [(f"privacy/{key}", privacy[key], step) for key in PRIVACY_TAGS if key in privacy]
    if simulated:
        server.append(("sim_round_seconds", event.get("sim_seconds", 0.0), step))
    scalars = {SERVER: [*server, ("round_seconds", event["seconds"], step), ("sites_answered", len(event["sites"]), step)]}
    if per_site:
        for site, metrics in event["sites"].items():
            scalars[site] = [(tag, metrics[key], step) for key, tag in SITE_ROUND_TAGS.items() if key in metrics]
    return scalars
