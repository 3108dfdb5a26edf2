"""Metric points from the processes that train to the driver, the only writer of the run dir.

The controller is the mailbox (`Controller.add_points`; the driver drains it with the
events): site actors `connect` to it. `stream(site, tag, value, step)` then keeps the
point in the process and sends what it holds at most every SEND_SECONDS,
without waiting for an answer: training never waits on the driver. `flush`,
called when a task ends, sends the rest and waits (bounded) until the mailbox
has it, so a finished task's points are never behind its result.
Without a channel (plain PyTorch, a test, a run without per-site curves) `stream` does nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

import ray
from ray.actor import ActorHandle

from fedray.fl_model import Point

log = logging.getLogger(__name__)


SEND_SECONDS = 1.0
FLUSH_TIMEOUT = 10.0


class _Sender:
    def __init__(self, channel: ActorHandle) -> None:
        self.channel = channel
        self.pending: list[Point] = []
        self.sent_at = time.monotonic()
        # A Client API script may stream from threads of its own.
        self.lock = threading.Lock()

    def add(self, point: Point) -> None:
        with self.lock:
            self.pending.append(point)
            due = time.monotonic() - self.sent_at >= SEND_SECONDS
        if due:
            self.send()

    def send(self) -> Optional[ray.ObjectRef]:
        with self.lock:
            points, self.pending = self.pending, []
            self.sent_at = time.monotonic()
        return self.channel.add_points.remote(points) if points else None


_sender: Optional[_Sender] = None


def connect(channel: Optional[ActorHandle]) -> None:
    """Send this process's points to `channel` (None: drop them)."""
    global _sender
    _sender = _Sender(channel) if channel is not None else None


def stream(site: str, tag: str, value: float, step: int) -> None:
    """Send a scalar to the driver, which writes it to TensorBoard under `tb/<site>/<tag>`."""
    if _sender is not None:
        _sender.add((site, tag, float(value), int(step)))


def flush(timeout: float = FLUSH_TIMEOUT) -> None:
    """Send what is left and wait until the mailbox has it; a lost mailbox only costs the points."""
    if _sender is None:
        return
    ref = _sender.send()
    if ref is not None:
        done, _ = ray.wait([ref], timeout=timeout)
        if not done:
            log.warning("metric stream: points not delivered within %g s", timeout)
