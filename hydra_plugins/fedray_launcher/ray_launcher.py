"""fedray's Hydra launcher, `hydra/launcher=fedray_ray` (conf/hydra/launcher/fedray_ray.yaml): a sweep's jobs at once on one Ray.

Hydra instantiates launchers from the `hydra_plugins` namespace only, and imports every module in it while it
looks for plugins: so this module is the thin class, and fedray/driver/sweep_launcher.py, imported at launch,
does the work.
"""

from __future__ import annotations

from typing import Optional, Sequence

from hydra.core.utils import JobReturn, configure_log, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class FedrayRayLauncher(Launcher):
    def __init__(self, concurrency: int = 4) -> None:
        if concurrency < 1:
            raise ValueError(f"hydra.launcher.concurrency={concurrency}: must be at least 1 (jobs at once)")
        self.concurrency = concurrency
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        # task_function is not called here: each job runs `python -m fedray.run` in a process of its own.
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from fedray.driver.sweep_launcher import launch

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return launch(self.config, self.hydra_context, job_overrides, initial_job_idx, self.concurrency)
