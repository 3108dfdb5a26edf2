"""A watchdog for the private local Ray a job starts: when the driver dies without stopping it.

`ray.shutdown()` stops what `ray.init()` started. A driver killed outright (SIGKILL, the OOM
killer) cannot, and Ray's head processes mostly go with it, but not all: its dashboard and
runtime-env agents were seen alive a minute later. So fedray starts this small process next
to a local Ray: it notes the driver's Ray processes as they appear and, once the driver is
gone, kills those still alive. It lives in a session of its own, so Ctrl-C in a terminal
reaches the driver, which then stops Ray and this watchdog in the ordinary way.

    python -m fedray.driver.reaper DRIVER_PID
"""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

POLL_SECONDS = 0.5


def start() -> subprocess.Popen:
    """Watch this process's Ray processes from now on."""
    return subprocess.Popen(
        [sys.executable, "-m", "fedray.driver.reaper", str(psutil.Process().pid)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(watchdog: subprocess.Popen | None) -> None:
    """The driver stopped its Ray itself: the watchdog has nothing left to do."""
    if watchdog is not None and watchdog.poll() is None:
        watchdog.kill()
        watchdog.wait(timeout=10)


def watch(driver_pid: int) -> int:
    """Follow `driver_pid`'s Ray processes until it exits, then kill the ones left; how many it killed."""
    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return 0
    seen: dict[int, psutil.Process] = {}
    while driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE:
        for process in _ray_processes(driver):
            seen.setdefault(process.pid, process)
        time.sleep(POLL_SECONDS)
    left = [process for process in seen.values() if _alive(process)]
    for process in left:
        try:
            process.kill()  # psutil checks the pid still names the same process (its start time)
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=10)
    return len(left)


def _ray_processes(driver: psutil.Process) -> list[psutil.Process]:
    try:
        children = driver.children(recursive=True)
    except psutil.Error:
        return []
    me = psutil.Process().pid
    return [process for process in children if process.pid != me and _is_ray(process)]


def _is_ray(process: psutil.Process) -> bool:
    try:
        command = process.cmdline()
    except psutil.Error:
        return False
    # Ray's workers and agents rename themselves "ray::..."; its servers and scripts run from its package.
    return bool(command) and (command[0].startswith("ray::") or any("site-packages/ray/" in part for part in command[:3]))


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


if __name__ == "__main__":
    watch(int(sys.argv[1]))
