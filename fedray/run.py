"""`python -m fedray.run [key=value ...]`: run a fedray job (Hydra; `-m` for sweeps)."""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedray.config import ConfigError, load_config
from fedray.datasets import DataError
from fedray.checkpoint import ResumeError
from fedray.job import JobFailed, JobInterrupted, run_job
from fedray.resources import ResourceError

log = logging.getLogger("fedray")

# Errors that end a job with a one-line reason instead of a traceback.
EXPECTED_ERRORS = (ConfigError, DataError, ResourceError, ResumeError, JobFailed)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def _hydra_main(cfg: DictConfig) -> None:
    try:
        summary = run_job(cfg, HydraConfig.get().runtime.output_dir)
    except EXPECTED_ERRORS as err:
        log.error("%s", err)
        _exit(err)
    best = summary["best_round"]
    if best is not None:
        metrics = summary["rounds"][[r["round"] for r in summary["rounds"]].index(best)]["global"]
        log.info("best round %d: val_acc %.4f test_acc %.4f; %.1f s in all",
                 best + 1, metrics["val_accuracy"], metrics["test_accuracy"], summary["wall_seconds"])


def main() -> None:
    args = sys.argv[1:]
    # Check the config before Hydra and Ray start, so a typo costs one line, not a traceback.
    # Flags (-m, --cfg, --help ...) are Hydra's own business.
    if not any(arg.startswith("-") for arg in args):
        try:
            load_config([arg for arg in args if not arg.startswith(("hydra.", "hydra/", "+hydra", "~hydra"))])
        except EXPECTED_ERRORS as err:
            _exit(err)
    _hydra_main()


def _exit(err: Exception) -> None:
    print(f"fedray: {err}", file=sys.stderr)
    sys.exit(2 if isinstance(err, ConfigError) else 130 if isinstance(err, JobInterrupted) else 1)


if __name__ == "__main__":
    main()
