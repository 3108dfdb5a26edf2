"""Why a site's process died, where Ray does not say.

Ray's memory monitor kills a worker process when its node runs low on memory, and the tasks that
were running then fail with no cause ("the actor was restarted"). So each site actor notes its node's
memory use a few times a second in a small file of its own, and the actor Ray restarts in its place
reads its predecessor's last note: the controller gets it with the restarted actor's `ready()` and
names memory in the site's failure when the node was short of it.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from typing import Any, Optional

import psutil

INTERVAL_SECONDS = 0.25
# A job's notes untouched this long belong to a job that ended (a live one's are rewritten 4 times a second):
# the next site actor to start on the node removes them (actors are killed, so none cleans up after itself).
STALE_SECONDS = 3600.0
# Within this much of Ray's memory monitor's threshold just before a worker died: the likely cause.
MARGIN = 0.05


def kill_threshold() -> float:
    """The node's memory fraction past which Ray's memory monitor kills workers: Ray's documented knob,
    the environment variable its processes (this one too) inherit, or its default."""
    try:
        return float(os.environ.get("RAY_memory_usage_threshold", 0.95))
    except ValueError:
        return 0.95


def note_path(job_id: str, actor_name: str) -> str:
    return os.path.join(tempfile.gettempdir(), "fedray-sites", job_id, f"{actor_name}.memory.json")


def start(path: str) -> None:
    """Note this node's memory use in `path` every INTERVAL_SECONDS, in a daemon thread."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _remove_ended_jobs(os.path.dirname(os.path.dirname(path)))
    process = psutil.Process()

    def loop() -> None:
        while True:
            memory = psutil.virtual_memory()
            note = {"pid": process.pid, "node_used": 1 - memory.available / memory.total,
                    "rss": process.memory_info().rss, "time": time.time()}
            tmp = f"{path}.{process.pid}.tmp"
            with open(tmp, "w") as file:
                json.dump(note, file)
            os.replace(tmp, path)  # a reader sees a whole note, the previous or this one
            time.sleep(INTERVAL_SECONDS)

    threading.Thread(target=loop, name="fedray-memory-watch", daemon=True).start()


def _remove_ended_jobs(root: str) -> None:
    """Remove the note folders of jobs that ended (nothing in them rewritten for STALE_SECONDS)."""
    now = time.time()
    for entry in os.scandir(root):
        try:
            notes = [note.stat().st_mtime for note in os.scandir(entry.path)] if entry.is_dir() else []
            if entry.is_dir() and max(notes, default=entry.stat().st_mtime) < now - STALE_SECONDS:
                for note in os.scandir(entry.path):
                    os.remove(note.path)
                os.rmdir(entry.path)
        except OSError:  # another site actor removing it at the same time, or a note just written
            continue


def predecessor(path: str) -> Optional[dict[str, Any]]:
    """The last note of the process this actor replaces (same name, another pid, gone), if any."""
    try:
        with open(path) as file:
            note = json.load(file)
    except (OSError, ValueError):
        return None
    if note.get("pid") == os.getpid() or psutil.pid_exists(note.get("pid", -1)):
        return None
    return note


def death_cause(note: Optional[dict[str, Any]]) -> Optional[str]:
    """One line naming memory when the node was short of it just before the process died."""
    threshold = kill_threshold()
    if not note or note["node_used"] < threshold - MARGIN:
        return None
    return (f"out of memory: its node had {note['node_used']:.0%} of its memory in use just before its process "
            f"died (holding {note['rss'] / 2**30:.1f} GiB itself), and Ray's memory monitor kills workers past "
            f"{threshold:.0%} (RAY_memory_usage_threshold); give the sites more memory or run fewer at once")
