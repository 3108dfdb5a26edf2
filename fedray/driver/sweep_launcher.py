"""`hydra/launcher=fedray_ray`: a sweep's jobs at once on one Ray, each job its own `python -m fedray.run` process.

Each job is a subprocess that joins the sweep's Ray (`$RAY_ADDRESS`: `ray.address`, or a private local Ray this
process starts as any job would, fedray/driver/cluster.py) and plans its site actors on `ray.share` =
1/concurrency of the cluster, so the jobs' actors fit side by side; the launcher itself asks Ray for nothing.
A process per job, not a Ray task per job: a job that dies (out of memory, a crash in native code) is one failed
row and its driver's state (imports, logging, Ray's connection) is its own; Ray tasks would reuse worker processes.
At most `concurrency` jobs run at once (a thread each, waiting for its process). A job whose process fails is
a failed row of the sweep summary, as under the basic launcher, and the sweep goes on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import ray
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf, open_dict

from fedray.driver.cluster import ray_for

log = logging.getLogger("fedray")

OUTPUT = "console.log"  # a job's stdout and stderr, in its run folder
# The sweep's own Hydra overrides that are not the job's: the job runs as a single run in its folder.
SWEEP_ONLY = ("hydra.sweep", "hydra/launcher", "hydra.launcher", "hydra/sweeper", "hydra.sweeper", "hydra.mode",
              "hydra.run", "hydra.job.num", "hydra.job.id")
# Job number -> whether it failed, for the sweep's exit status (fedray/run.py), as its own jobs' are.
job_failed: dict[int, bool] = {}


@dataclass
class _Job:
    num: int
    overrides: list[str]
    config: DictConfig
    folder: Path


def launch(config: DictConfig, hydra_context: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
           concurrency: int) -> list[JobReturn]:
    jobs = []
    for num, overrides in enumerate(job_overrides, initial_job_idx):
        job_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(job_config):
            job_config.hydra.job.id = job_config.hydra.job.num = num
        folder = Path(str(job_config.hydra.sweep.dir)) / str(job_config.hydra.sweep.subdir)
        jobs.append(_Job(num, list(overrides), job_config, folder.resolve()))
    at_once = max(1, min(concurrency, len(jobs)))
    share = math.floor(10_000 / at_once) / 10_000  # Ray keeps 4 decimals: rounding up could strand the last job
    settings = OmegaConf.to_container(config.ray, resolve=True)
    with ray_for(settings) as session:  # ray.address / $RAY_ADDRESS, else a private local Ray for the sweep
        session.wait_until_up()
        address = ray.get_runtime_context().gcs_address
        log.info("%d jobs, %d at once on the Ray at %s (ray.share=%g each)", len(jobs), at_once, address, share)
        with ThreadPoolExecutor(at_once, thread_name_prefix="fedray-sweep-job") as pool:
            return list(pool.map(lambda job: _run(job, config, address, share), jobs))


def _run(job: _Job, sweep: DictConfig, address: str, share: float) -> JobReturn:
    job.folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "fedray.run", *job.overrides, f"ray.share={share:g}",
               f"hydra.run.dir={job.folder}", *_passed_on(sweep)]
    env = {**os.environ, "RAY_ADDRESS": address, "PYTHONPATH": os.pathsep.join(
        [_fedray_root(), *filter(None, [os.environ.get("PYTHONPATH")])])}
    log.info("\t#%d : %s", job.num, " ".join(job.overrides))
    with open(job.folder / OUTPUT, "wb") as output:
        code = subprocess.call(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    if not (job.folder / ".hydra" / "overrides.yaml").is_file():
        # It stopped before Hydra wrote its folder: its overrides, so the sweep summary has its (failed) row.
        (job.folder / ".hydra").mkdir(exist_ok=True)
        OmegaConf.save(OmegaConf.create(job.overrides), job.folder / ".hydra" / "overrides.yaml")
    job_failed[job.num] = code != 0
    if code != 0:
        print(f"fedray: job {job.num}: {_error(job.folder / OUTPUT, code)}", file=sys.stderr)
    result = JobReturn(overrides=job.overrides, cfg=job.config, hydra_cfg=job.config, working_dir=str(job.folder),
                       task_name=str(job.config.hydra.job.name), status=JobStatus.COMPLETED)
    result.return_value = None if code else _best_val_accuracy(job.folder)
    return result


def _passed_on(sweep: DictConfig) -> list[str]:
    """The sweep's own Hydra overrides that hold for each job, and its `--config-dir`s."""
    overrides = [item for item in sweep.hydra.overrides.hydra if not item.lstrip("+~").startswith(SWEEP_ONLY)]
    folders = [source.path for source in sweep.hydra.runtime.config_sources if source.provider == "command-line"]
    return [*overrides, *(f"--config-dir={folder}" for folder in folders)]


def _fedray_root() -> str:
    """The folder fedray is imported from: the job's process imports the same fedray."""
    return str(Path(__file__).resolve().parents[2])


def _error(output: Path, code: int) -> str:
    """The job's own one-line error (`fedray: ...`), else its exit status."""
    try:
        lines = output.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    errors = [line[len("fedray: "):] for line in lines if line.startswith("fedray: ")]
    return errors[-1] if errors else f"exited with status {code}; see {output}"


def _best_val_accuracy(folder: Path) -> Optional[float]:
    """The job's objective for sweeper plugins, as fedray.run's task function returns it."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    by_round = {entry["round"]: entry["global"] for entry in summary.get("rounds", [])}
    return by_round.get(summary.get("best_round"), {}).get("val_accuracy")
