"""`python -m fedray.run [key=value ...]`: run a fedray job (Hydra; `-m` for sweeps)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

import hydra
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from fedray.config import CONF_DIR, ConfigError
from fedray.driver import sweep_launcher
from fedray.driver.cluster import release
from fedray.driver.job import USER_ERRORS, JobInterrupted, run_job
from fedray.driver.preflight import load_config
from fedray.records.atomic import NO_SPACE, DiskFull

log = logging.getLogger("fedray")

MULTIRUN_FLAGS = ("-m", "--multirun")
CONFIG_DIR_FLAGS = ("-cd", "--config-dir")  # the user's own config folder, searched after fedray's
FLARE_JOB = "flare_job="  # a FLARE job folder, translated into overrides (fedray/flare/job_folder.py)
HYDRA_OVERRIDES = ("hydra.", "hydra/", "+hydra", "~hydra")

# Whether each of a sweep's jobs failed, by Hydra's job number: a failed job does not stop the
# sweep, and main() exits non-zero at its end.
_sweep_failed: dict[int, bool] = {}


@hydra.main(config_path=CONF_DIR, config_name="config", version_base=None)
def _hydra_main(cfg: DictConfig) -> Optional[float]:
    """Run one job; return its best global validation accuracy, the objective sweeper plugins maximize."""
    hydra_cfg = HydraConfig.get()
    sweeping = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        # A sweep's jobs share one local Ray, saving each later job Ray's start and stop (8-13 s on
        # 2 cores); a failed job takes it down.
        summary = run_job(cfg, hydra_cfg.runtime.output_dir, keep_ray=sweeping)
    except USER_ERRORS as err:
        log.error("%s", err)
        if not sweeping:
            _exit(err)
        print(f"fedray: job {hydra_cfg.job.num}: {err}", file=sys.stderr)
        _sweep_failed[hydra_cfg.job.num] = True
        return None
    except Exception:
        if not sweeping:
            raise
        # A bug rather than a bad input: the traceback goes to this job's run.log, the sweep goes on.
        log.exception("job %d failed", hydra_cfg.job.num)
        _sweep_failed[hydra_cfg.job.num] = True
        return None
    if sweeping:  # hydra.job.num exists in sweeps only
        _sweep_failed[hydra_cfg.job.num] = False
    best = summary["best_round"]
    if best is None:
        return None
    metrics = summary["rounds"][[r["round"] for r in summary["rounds"]].index(best)]["global"]
    log.info("best round %d: val_acc %.4f test_acc %.4f; %.1f s in all",
             best + 1, metrics["val_accuracy"], metrics["test_accuracy"], summary["wall_seconds"])
    return metrics["val_accuracy"]


def main() -> None:
    # A full disk fails the run folder's log file too, and logging's default prints a traceback for each
    # record it cannot write: the job's own one-line error says what happened.
    logging.raiseExceptions = False
    try:
        _main(sys.argv[1:])
    except SystemExit as stop:
        _leave(stop.code)
    except OSError as err:  # Hydra writing .hydra/ or the log into a full file system, before the job
        if err.errno not in NO_SPACE:
            raise
        _leave(f"fedray: {DiskFull(err.filename or os.getcwd())}")
    _leave(0)


def _main(args: list[str]) -> None:
    try:
        args = _from_flare_simulator_shape(args)
        if any(arg.startswith(FLARE_JOB) for arg in args):
            args = _with_flare_job(args)
            sys.argv[1:] = args  # what Hydra parses
        _check_before_start(args)
    except USER_ERRORS as err:
        _exit(err)
    _register_launcher()
    try:
        _hydra_main()
    finally:
        release()  # the local Ray a sweep's jobs shared (or one still starting for a failed job)
    _sweep_failed.update(sweep_launcher.job_failed)  # hydra/launcher=fedray_ray's jobs, each run in its own process
    failed = [str(num) for num, did_fail in _sweep_failed.items() if did_fail]
    if failed:
        print(
            f"fedray: {len(failed)} of {len(_sweep_failed)} sweep jobs failed (job {', '.join(failed)}); "
            "see sweep_summary.md in the sweep dir",
            file=sys.stderr,
        )
        sys.exit(1)


def _register_launcher() -> None:
    """fedray's `hydra/launcher=fedray_ray` in Hydra's plugin table: Hydra finds plugins by listing hydra_plugins/, which
    an editable install's import hook hides from it (the class imports, but is "Unknown plugin class")."""
    from hydra.core.plugins import Plugins
    from hydra_plugins.fedray_launcher.ray_launcher import FedrayRayLauncher

    Plugins.instance().register(FedrayRayLauncher)


def _leave(code: int | str | None) -> None:
    """Exit without the interpreter's teardown: with torch and Ray loaded it takes 0.5 s or more, and by
    now every file is written and closed and Ray is stopped; the log files are flushed here."""
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def _check_before_start(args: list[str]) -> None:
    """Check the config before Hydra and Ray start, so a typo costs one line, not a traceback.

    A sweep's every combination is checked, so a bad value stops it before its first job
    rather than failing jobs hours in. Other flags (--cfg, --help ...) are Hydra's business.
    """
    args, config_dirs = _config_dirs(args)
    flags = [arg for arg in args if arg.startswith("-")]
    if any(flag not in MULTIRUN_FLAGS for flag in flags):
        return
    overrides = [arg for arg in args if not arg.startswith("-") and not arg.startswith(HYDRA_OVERRIDES)]
    combinations = _combinations(overrides) if flags or "hydra.mode=MULTIRUN" in args else [overrides]
    errors: list[str] = []
    for combination in combinations:
        try:
            # A single job checks its code (imports, the model's forward pass) itself, while its Ray
            # starts (torch's import is 1.2 s of it); a sweep checks every combination's here, first.
            load_config(combination, config_dirs, code_check=len(combinations) > 1)
        except ConfigError as err:
            if str(err) not in errors:
                errors.append(str(err))
    if errors:
        raise ConfigError("; ".join(errors))


def _config_dirs(args: list[str]) -> tuple[list[str], list[str]]:
    """Split `--config-dir DIR` / `-cd DIR` / `--config-dir=DIR` off the arguments."""
    rest, dirs = [], []
    words = iter(args)
    for arg in words:
        flag, eq, value = arg.partition("=")
        if flag in CONFIG_DIR_FLAGS:
            dirs.append(value if eq else next(words, ""))
        else:
            rest.append(arg)
    return rest, dirs


def _from_flare_simulator_shape(args: list[str]) -> list[str]:
    """`fedray JOB_FOLDER -n 2 -t 2 -w WORKSPACE`, FLARE's simulator command line: fedray's arguments for it
    (fedray/flare/simulator_cli.py); any other command line as it is."""
    from fedray.flare.simulator_cli import simulator_shape, to_fedray_args

    if not simulator_shape(args):
        return args
    args, gpus = to_fedray_args(args)
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus  # before this job starts its Ray, which inherits it
    return args


def _with_flare_job(args: list[str]) -> list[str]:
    """`flare_job=PATH`: the overrides a FLARE job folder means, printed, then the user's, which win."""
    from fedray.flare.job_folder import merge_overrides, translate

    job_args = [arg for arg in args if arg.startswith(FLARE_JOB)]
    if len(job_args) > 1:
        raise ConfigError("flare_job: give one FLARE job folder")
    rest = [arg for arg in args if not arg.startswith(FLARE_JOB)]
    derived = translate(job_args[0][len(FLARE_JOB):])
    print(f"fedray: {job_args[0]} means: {' '.join(derived)}", file=sys.stderr)
    return merge_overrides(derived, rest)


def _combinations(overrides: list[str]) -> list[list[str]]:
    """Each job's overrides in a grid sweep (`lr=0.01,0.05 seed=range(3)`), as Hydra's basic sweeper expands them.

    Sweeps only a sweeper plugin understands (`interval(...)`) or that need the config
    repository (`glob(...)`) are left to the jobs: each checks its own config as it starts.
    """
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return [overrides]  # load_config names the override it cannot parse
    try:
        return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except HydraException:
        return []


def _exit(err: Exception) -> None:
    print(f"fedray: {err}", file=sys.stderr)
    sys.exit(2 if isinstance(err, ConfigError) else 130 if isinstance(err, JobInterrupted) else 1)


if __name__ == "__main__":
    main()
