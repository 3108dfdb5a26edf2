"""Test-only models that misbehave in chosen sites, to inject faults through real Ray actors.

They tell sites apart by their actor's name, so jobs using them run one actor per site
(`site.num_actors=num_clients`, actors named site-k).
"""

from __future__ import annotations

import os
import time

import ray
import torch

from fedray.models import Net


def _site_name() -> str:
    try:
        return ray.get_runtime_context().get_actor_name() or ""
    except Exception:
        return ""


class SiteTaggedNet(Net):
    """Each site initializes fc3.bias to its own number, so tests can tell whose weights won."""

    def __init__(self) -> None:
        super().__init__()
        name = _site_name()
        tag = float(name.split("-")[1]) if name.startswith("site-") else 0.0
        with torch.no_grad():
            self.fc3.bias.fill_(tag)


class FaultyNet(Net):
    """Sleeps `delay` s per training batch in `slow_sites`; raises after `fail_after_steps` in `fail_sites`,
    and whenever it evaluates in `fail_eval_sites`; trains to NaN weights in `nan_sites`."""

    def __init__(self, slow_sites=(), delay: float = 0.0, fail_sites=(), fail_after_steps: int = 0,
                 fail_eval_sites=(), crash_sites=(), crash_once_file: str = "", crash_after_steps: int = 0, nan_sites=(),
                 hog_sites=(), hog_gib: float = 0.0) -> None:
        super().__init__()
        self.site = _site_name()
        self.nan = self.site in nan_sites
        self.slow = self.site in slow_sites
        self.delay = delay
        self.fails = self.site in fail_sites
        self.fail_after_steps = fail_after_steps
        self.steps = 0
        self.fails_eval = self.site in fail_eval_sites
        # The process dies (as from out-of-memory) the first time it trains (past `crash_after_steps` of its
        # training steps); the file remembers it did.
        self.crash_file = f"{crash_once_file}.{self.site}" if self.site in crash_sites else ""
        self.crash_after_steps = crash_after_steps
        # Takes (and touches) `hog_gib` GiB more at each training step, kept: Ray's memory monitor's prey.
        self.hog_bytes = int(hog_gib * 2**30) if self.site in hog_sites else 0
        self.hogged: list[bytearray] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.steps += 1
            if self.crash_file and self.steps > self.crash_after_steps and not os.path.exists(self.crash_file):
                open(self.crash_file, "w").close()
                os._exit(1)
            if self.hog_bytes and len(self.hogged) < 6:  # bounded, should the monitor not act
                self.hogged.append(bytearray(b"\x01") * self.hog_bytes)
                time.sleep(1.0)  # the monitor looks every few hundred ms
            if self.slow:
                time.sleep(self.delay)
            if self.fails and self.steps > self.fail_after_steps:
                raise RuntimeError(f"injected failure in {self.site}")
        elif self.fails_eval:
            raise RuntimeError(f"injected evaluation failure in {self.site}")
        out = super().forward(x)
        return out * float("nan") if self.training and self.nan else out


class SlowNet(Net):
    """Sleeps `delay` s per training batch in every site: rounds long enough to watch (no actor names needed)."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            time.sleep(self.delay)
        return super().forward(x)
