"""The run's TensorBoard event files, written by the driver alone: `tb/` for the server, `tb/site-k/` per site.

Sites never touch these files: their points reach the driver through
`fedray.tracking` and land here, so no two processes write one file. Every
site folder has the same tags, so TensorBoard draws the sites in one chart per tag.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Mapping

from torch.utils.tensorboard import SummaryWriter

from fedray.tracking import Point

SERVER = ""  # the run folder of the global metrics: tb/ itself
# Per-round tags; their step is the round, counted from 0 as in summary.json.
GLOBAL_TAGS = ("val_accuracy", "test_accuracy", "test_loss")
# A site's summary.json metric -> its tag. A site's `val_accuracy` scores the model it received, the
# global one of the round before: renamed, so no chart lines it up with the global `val_accuracy`.
SITE_ROUND_TAGS = {
    "val_accuracy": "received_val_accuracy",
    "local_val_accuracy": "local_val_accuracy",
    "num_steps": "num_steps",
    "seconds": "seconds",
}


# Each SummaryWriter holds a file and a thread: a cross-device run touches 1000s of sites, a few at a
# time, so the least recently written site folders are closed (written again, a folder gets one more
# event file, which TensorBoard reads with the others).
MAX_OPEN_WRITERS = 64


class TensorBoardWriter:
    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.writers: OrderedDict[str, SummaryWriter] = OrderedDict()

    def add_points(self, points: Iterable[Point]) -> None:
        """Points streamed by the sites while they train (tag `train_loss`, step: the site's local steps)."""
        touched = set()
        for site, tag, value, step in points:
            self._writer(site).add_scalar(tag, value, step)
            touched.add(site)
        self._flush(touched)

    def add_round(self, event: Mapping[str, Any]) -> None:
        """A finished round: the global metrics and round seconds, and each answering site's round metrics."""
        step = event["round"]
        server = self._writer(SERVER)
        for tag in GLOBAL_TAGS:
            if tag in event["global"]:  # not in rounds that eval_every skips
                server.add_scalar(tag, event["global"][tag], step)
        server.add_scalar("round_seconds", event["seconds"], step)
        for site, metrics in event["sites"].items():
            for key, tag in SITE_ROUND_TAGS.items():
                if key in metrics:
                    self._writer(site).add_scalar(tag, metrics[key], step)
        self._flush([SERVER, *event["sites"]])

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()

    def _writer(self, run: str) -> SummaryWriter:
        if run in self.writers:
            self.writers.move_to_end(run)
            return self.writers[run]
        if len(self.writers) >= MAX_OPEN_WRITERS:
            oldest = next(name for name in self.writers if name != SERVER)
            self.writers.pop(oldest).close()
        # flush_secs is a fallback: each batch of points is flushed as it is written, so TensorBoard shows it live.
        writer = self.writers[run] = SummaryWriter(log_dir=str(self.folder / run), flush_secs=10)
        return writer

    def _flush(self, runs: Iterable[str]) -> None:
        for run in runs:
            if run in self.writers:
                self.writers[run].flush()
