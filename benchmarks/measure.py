"""Run a command as a whole process: its wall time, and the peak memory of it and every process it starts.

Memory is sampled (psutil, every `interval` seconds) over the process tree: the
command and its descendants, which for a fedray job are the private local Ray
it starts (gcs, raylet, workers). Two sums are kept: resident memory (RSS, as
`top` shows it; shared libraries and Ray's shared object store are counted once
per process that maps them) and its anonymous part (each process's own heap,
libraries and shared memory left out), a lower bound on what the tree really
holds. Smaps-based measures (PSS) would be exact but cost tens of ms per
process per sample, which is a core's worth of noise on a small machine.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import psutil

MB = 1 << 20


@dataclass
class Measurement:
    returncode: int
    wall_seconds: float
    peak_rss_mb: float  # peak over samples of the tree's summed RSS
    peak_anon_rss_mb: float  # peak over samples of the tree's summed anonymous RSS
    peak_processes: int
    stdout: str
    stderr: str
    leftover_processes: list[str] = field(default_factory=list)  # still alive after the command exited


def run_measured(
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    timeout: float,
    interval: float = 0.2,
    leftover_grace: float = 10.0,
) -> Measurement:
    """Run `command` to its end (or `timeout`, then kill its tree) and measure it."""
    started = time.perf_counter()
    process = subprocess.Popen(
        list(command), env=dict(env), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    sampler = _TreeSampler(process.pid, interval)
    sampler.start()
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(sampler.seen_alive())
        stdout, stderr = process.communicate(timeout=60)
        stderr += f"\nbenchmark: killed after {timeout:g} s"
    wall = time.perf_counter() - started
    sampler.stop()
    leftovers = _outlivers(sampler.seen_alive(), leftover_grace)
    return Measurement(
        returncode=process.returncode,
        wall_seconds=round(wall, 3),
        peak_rss_mb=round(sampler.peak_rss / MB, 1),
        peak_anon_rss_mb=round(sampler.peak_anon / MB, 1),
        peak_processes=sampler.peak_processes,
        stdout=stdout,
        stderr=stderr,
        leftover_processes=leftovers,
    )


class _TreeSampler(threading.Thread):
    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_rss = self.peak_anon = self.peak_processes = 0
        self.seen: dict[int, psutil.Process] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.sample()
            self.stopping.wait(self.interval)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)

    def sample(self) -> None:
        try:
            tree = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:  # the root has exited
            return
        rss = anon = count = 0
        for process in tree:
            try:
                memory = process.memory_info()
            except psutil.Error:
                continue
            self.seen.setdefault(process.pid, process)
            rss += memory.rss
            anon += memory.rss - memory.shared
            count += 1
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_anon = max(self.peak_anon, anon)
        self.peak_processes = max(self.peak_processes, count)

    def seen_alive(self) -> list[psutil.Process]:
        """Processes of the tree still running (psutil checks the pid was not reused)."""
        return [process for process in self.seen.values() if process.is_running()]


def _outlivers(processes: list[psutil.Process], grace: float) -> list[str]:
    """Processes the command started that outlive it; after `grace` seconds they are ended, so
    they do not load the machine during the next measurement."""
    _, alive = psutil.wait_procs(processes, timeout=grace)
    names = []
    for process in alive:
        try:
            names.append(f"{process.pid} {process.name()}")
        except psutil.Error:
            continue
    _kill(alive)
    return names


def _kill(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.Error:
            continue
    psutil.wait_procs(processes, timeout=10)
