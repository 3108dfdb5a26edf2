"""The run's split of the data into sites, saved with it: partition.json and its heat map, plots/partition.png.

The driver calls `save_partition` once the data is split, as the sites start: a run that fails later still says
how its data was spread. A resumed run splits again from the same seed and writes the same file.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fedray.config import site_names
from fedray.data.partitioners import sortable_ids
from fedray.records.recorder import _DRAWER, write_json

log = logging.getLogger(__name__)

PARTITION_FILE = "partition.json"
PARTITION_PLOT = "plots/partition.png"


def partition_summary(labels: np.ndarray, shards: Sequence[Any], keys: Mapping[str, Any], seed: int,
                      val_fraction: float, ids: np.ndarray | None = None) -> dict[str, Any]:
    """What partition.json holds: the method and its keys, the classes, and per site its train and val counts
    and its label histogram (over train and val, aligned with `classes`); with natural ids, each site's ids.
    `unassigned`: samples no site got (shard's remainder, pathological's classes no site drew)."""
    classes, codes = np.unique(labels, return_inverse=True)
    ids = None if ids is None else sortable_ids(ids)
    sites = {}
    for name, shard in zip(site_names(len(shards)), shards):
        members = np.concatenate([shard.train, shard.val])
        entry = {"train": len(shard.train), "val": len(shard.val),
                 "label_counts": np.bincount(codes[members], minlength=len(classes)).tolist()}
        if ids is not None:
            entry["ids"] = [_plain_id(i) for i in np.unique(ids[members])]
        sites[name] = entry
    assigned = sum(site["train"] + site["val"] for site in sites.values())
    return {"partition": dict(keys), "seed": seed, "val_fraction": val_fraction, "num_samples": len(labels),
            "unassigned": len(labels) - assigned, "classes": [_plain_id(c) for c in classes], "sites": sites}


def save_partition(run_dir: str | os.PathLike, labels: np.ndarray, shards: Sequence[Any], keys: Mapping[str, Any],
                   seed: int, val_fraction: float, ids: np.ndarray | None = None) -> Future:
    """partition.json (`partition_summary`) and its heat map, on the run's drawing thread: off the driver's path to
    the first round (a second at FEMNIST's 800,000 samples on 3,400 sites), and queued before plots/'s end-of-run
    pictures, so that `RunRecorder.finish` waits for it too. A failure is a warning, never a failed run."""
    return _DRAWER.submit(_save, Path(run_dir), labels, shards, keys, seed, val_fraction, ids)


def _save(run_dir: Path, *args: Any) -> Path | None:
    try:
        summary = partition_summary(*args)
        write_json(run_dir / PARTITION_FILE, summary)
    except Exception as err:  # a full disk, say: the next checkpoint ends the run with its own line
        log.warning("could not write %s: %s: %s", run_dir / PARTITION_FILE, type(err).__name__, err)
        return None
    return _draw(summary, run_dir / PARTITION_PLOT)


def _draw(summary: Mapping[str, Any], path: Path) -> Path | None:
    from fedray.records.plots import draw_safely, partition_heatmap  # matplotlib's import, in the drawing thread

    sites = list(summary["sites"])
    counts = np.array([summary["sites"][site]["label_counts"] for site in sites])
    return draw_safely(partition_heatmap, sites, counts, summary["classes"], summary["partition"]["name"], path=path)


def _plain_id(value: Any) -> Any:
    """A label or id as JSON has it: numpy's scalars as Python's."""
    return value.item() if isinstance(value, np.generic) else value
