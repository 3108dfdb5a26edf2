"""A sweep-sized soak: jobs one after another in one driver, with sites that raise, hang, diverge or die."""

import gc
import random
import threading
import time

import psutil
import pytest

from fedray import JobFailed, run_job

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]

JOBS = 8  # every fault once, two of them twice
JOB_BOUND_SECONDS = 120
FAULTS = ("raise", "hang", "crash", "nan", "kill", "none")


def _fault_overrides(fault: str, site: str, crash_file: str) -> list[str]:
    return {
        "raise": [f"+model.fail_sites=[{site}]"],
        "hang": [f"+model.slow_sites=[{site}]", "+model.delay=600"],
        "crash": [f"+model.crash_sites=[{site}]", f"+model.crash_once_file={crash_file}"],
        "nan": [f"+model.nan_sites=[{site}]"],
        "kill": [],
        "none": [],
    }[fault]


def _kill_one_site_worker(rng: random.Random, stop: threading.Event) -> None:
    time.sleep(rng.uniform(1.0, 4.0))
    workers = [p for p in psutil.Process().children(recursive=True) if "SiteWorker" in " ".join(_cmdline(p))]
    if workers and not stop.is_set():
        rng.choice(sorted(workers, key=lambda p: p.pid)).kill()


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def test_a_sweep_of_faulty_jobs_ends_every_job_and_the_driver_does_not_grow(job_config, tmp_path):
    rng = random.Random(2026)
    me = psutil.Process()
    memory, files, walls = [], [], []
    faults = [*FAULTS, *rng.choices(FAULTS, k=JOBS - len(FAULTS))]
    rng.shuffle(faults)
    for job_number, fault in enumerate(faults):
        site = f"site-{rng.randint(1, 3)}"
        job = job_config(
            "site.num_actors=3", "model._target_=tests.fault_models.FaultyNet", "min_clients=2", "local_epochs=1",
            "workflows.scatter_and_gather.train_timeout=8", "site.stop_timeout=3", f"seed={job_number}",
            *_fault_overrides(fault, site, str(tmp_path / f"crashed-{job_number}")),
        )
        stop = threading.Event()
        killer = threading.Thread(target=_kill_one_site_worker, args=(random.Random(job_number), stop), daemon=True)
        if fault == "kill":
            killer.start()
        started = time.monotonic()
        try:
            summary = run_job(job, tmp_path / f"job-{job_number}")
            assert summary["status"] == "completed"
        except JobFailed as err:  # a failed job is fine, if it says why in one line
            assert "\n" not in str(err)
        finally:
            stop.set()
            if killer.is_alive():
                killer.join(timeout=10)
        walls.append(time.monotonic() - started)
        assert walls[-1] < JOB_BOUND_SECONDS, f"job {job_number} ({fault} in {site}) took {walls[-1]:.0f} s"
        gc.collect()
        memory.append(me.memory_info().rss)
        files.append(me.num_fds())

    print(f"soak: {JOBS} jobs, faults {faults}, {sum(walls):.0f} s (longest {max(walls):.0f} s), driver RSS after "
          f"each job (MiB) {[m >> 20 for m in memory]}, open files {files}")
    # After the first job (imports, the object store's client) the driver should stay flat.
    assert memory[-1] - memory[0] < 150 * 2**20
    assert files[-1] - files[0] <= 10
