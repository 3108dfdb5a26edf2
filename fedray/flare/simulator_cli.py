"""FLARE's simulator command line for a job folder: `fedray -w /tmp/nvflare/ -n 2 -t 2 hello-pt` runs
what `nvflare simulator -w /tmp/nvflare/ -n 2 -t 2 hello-pt` runs.

Its options become fedray keys (key=value arguments may follow and win, as with `flare_job=`):
    JOB_FOLDER        flare_job=JOB_FOLDER
    -n/--n_clients N  num_clients=N (sites site-1 ... site-N)
    -c/--clients L    the same from a list, which must be site-1,...,site-N: fedray names its sites so
    -t/--threads T    accepted, sets nothing: FLARE runs T clients at once in threads; a FLARE job's sites run
                      its own code (script or executors), which keeps state, so fedray gives every site an
                      actor of its own and Ray runs as many at once as its CPUs (or GPU fractions) allow
    -w/--workspace W  hydra.run.dir=W/simulate_job (FLARE's simulator writes its job there too)
    -gpu/--gpu 0,1    CUDA_VISIBLE_DEVICES for the private local Ray this job starts
    --max_clients M   accepted and unused (a limit of FLARE's simulator process); `-m` stays Hydra's sweep flag
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

from fedray.config import ConfigError

SIMULATE_JOB = "simulate_job"  # FLARE's SimulatorConstants.JOB_NAME: the job's folder in the workspace


def is_job_folder(arg: str) -> bool:
    """A bare argument naming a FLARE job folder (it has meta.json or meta.conf)."""
    if arg.startswith("-") or "=" in arg:
        return False
    folder = Path(arg).expanduser()
    return (folder / "meta.json").is_file() or (folder / "meta.conf").is_file()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# FLARE's simulator options: the parser is built from this one table, and a command is simulator-shaped
# when it names any of these flags.
OPTIONS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("-w", "--workspace"), {}),
    (("-n", "--n_clients"), {"type": _positive}),
    (("-c", "--clients"), {}),
    (("-t", "--threads"), {"type": _positive}),
    (("-gpu", "--gpu"), {}),
    (("--max_clients",), {"type": int}),
)
FLAGS = tuple(flag for flags, _ in OPTIONS for flag in flags)


def simulator_shape(args: list[str]) -> bool:
    """A bare job folder, or `flare_job=PATH` with FLARE's simulator options (`fedray flare_job=PATH -n 2`)."""
    if any(is_job_folder(arg) for arg in args):
        return True
    return any(arg.startswith("flare_job=") for arg in args) and any(arg.split("=")[0] in FLAGS for arg in args)


def to_fedray_args(args: list[str]) -> tuple[list[str], Optional[str]]:
    """(fedray's arguments, the CUDA_VISIBLE_DEVICES to set or None) for a simulator-shaped command line."""
    parser = _Parser(prog="fedray JOB_FOLDER", add_help=False, allow_abbrev=False)
    for flags, options in OPTIONS:
        parser.add_argument(*flags, **options)
    folders = [arg for arg in args if is_job_folder(arg)]
    folders += [arg[len("flare_job="):] for arg in args if arg.startswith("flare_job=")]
    if len(folders) != 1:
        raise ConfigError(f"{' '.join(folders) or 'FLARE simulator options'}: give one FLARE job folder")
    rest = [arg for arg in args if arg not in (folders[0], f"flare_job={folders[0]}")]
    known, others = parser.parse_known_args(rest)
    derived = [f"flare_job={Path(folders[0]).expanduser().resolve()}"]
    num_clients = known.n_clients
    if known.clients:
        names = [name.strip() for name in known.clients.split(",") if name.strip()]
        expected = [f"site-{k}" for k in range(1, len(names) + 1)]
        if names != expected:
            raise ConfigError(f"-c {known.clients}: fedray names its sites site-1 ... site-N; give -n {len(names)} "
                              f"(or -c {','.join(expected)})")
        if num_clients is not None and num_clients != len(names):
            raise ConfigError(f"-n {num_clients} -c {known.clients}: {len(names)} names for {num_clients} clients")
        num_clients = len(names)
    if num_clients is not None:
        derived.append(f"num_clients={num_clients}")
    if known.workspace:
        derived.append(f"hydra.run.dir={Path(known.workspace).expanduser().resolve() / SIMULATE_JOB}")
    gpus = None
    if known.gpu is not None:
        ids = [part.strip() for part in known.gpu.split(",") if part.strip()]
        if not ids or not all(part.isdigit() for part in ids):
            raise ConfigError(f"-gpu {known.gpu}: give GPU ids, comma separated (e.g. -gpu 0,1)")
        gpus = ",".join(ids)
    return derived + others, gpus


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        """One line, not argparse's usage and exit."""
        raise ConfigError(f"{message}; FLARE's simulator options: JOB_FOLDER [-w WORKSPACE] [-n N] [-c site-1,...] "
                          "[-t T] [-gpu 0,1], then key=value overrides")

