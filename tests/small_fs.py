"""A real small file system for tests: a tmpfs mounted in a private user and mount namespace (`unshare`,
no root needed; the mount is gone when the command ends), never a mock. Used by the run-folder tests
(one node) and the multi-node soak (a driver in such a namespace joining the 3-node cluster)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}


def on_small_fs(mount_point: Path, size: str, *command: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`command` with a `size` tmpfs at `mount_point`, in a user and mount namespace of its own."""
    mount_point.mkdir(parents=True, exist_ok=True)
    script = 'mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && exec "$@"'
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", size,
                           str(mount_point), *command], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=REPO)


def small_fs_or_skip(probe: Path):
    """`on_small_fs`, or a skip where this machine cannot mount a tmpfs in a user namespace."""
    try:
        done = on_small_fs(probe / "mnt", "64k", "sh", "-c", 'df -k "$0" | tail -1', str(probe / "mnt"), timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"no unshare here: {err}")
    if done.returncode != 0 or "tmpfs" not in done.stdout:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {done.stderr.strip()}")
    return on_small_fs


# Run inside the namespace: fill the small file system but `free` bytes, run the job (it must fail on the
# full disk), keep a copy of its folder, free the space, resume it, keep a copy of that, and say how each went
# in result.json (the copies and the result outside the namespace, in `out`).
FULL_THEN_RESUME = """
import json, os, shutil, subprocess, sys
small, out, free = sys.argv[1], sys.argv[2], int(sys.argv[3])
overrides = sys.argv[4:]
run = os.path.join(small, "run")
with open(os.path.join(small, "filler"), "wb") as f:
    f.write(b"0" * (shutil.disk_usage(small).free - free))
first = subprocess.run([sys.executable, "-m", "fedray.run", *overrides, f"hydra.run.dir={run}"],
                       capture_output=True, text=True, timeout=400)
shutil.copytree(run, os.path.join(out, "after_failure"))
os.remove(os.path.join(small, "filler"))
second = subprocess.run([sys.executable, "-m", "fedray.run", f"resume={run}", f"hydra.run.dir={small}/log"],
                        capture_output=True, text=True, timeout=400)
shutil.copytree(run, os.path.join(out, "resumed"))
with open(os.path.join(out, "result.json"), "w") as f:
    json.dump({"run": run, "first": [first.returncode, first.stdout, first.stderr],
               "second": [second.returncode, second.stdout, second.stderr]}, f)
"""
