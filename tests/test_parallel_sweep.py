"""hydra/launcher=fedray_ray: a sweep's jobs at once, each a process of its own on the sweep's one Ray, and the summary."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from datetime import datetime

import pytest
import ray

from fedray.driver.resources import plan_sites
from fedray.records.sweep import RESULT_COLUMNS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP_TIMEOUT = 300
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def _interval(run_log) -> tuple[datetime, datetime]:
    """When a job's driver had its sites up, and when it ended (its run.log's stamps)."""
    lines = run_log.read_text().splitlines()
    up = next(line for line in lines if " sites on " in line)
    end = next(line for line in lines if "best round" in line)
    return tuple(datetime.strptime(STAMP.match(line)[1], "%Y-%m-%d %H:%M:%S,%f") for line in (up, end))


@pytest.mark.slow
def test_a_parallel_sweep_runs_its_jobs_at_once_on_one_ray_and_a_failed_job_is_one_row(tiny_cifar, ray_session, tmp_path):
    other = tmp_path / "same-data"
    other.symlink_to(tiny_cifar)
    missing = tmp_path / "no-data"
    # The sweep joins the tests' Ray (as it would a cluster's, by ray.address): its jobs join it too.
    env = {**os.environ, "PYTHONPATH": REPO, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    done = subprocess.run(
        [sys.executable, "-m", "fedray.run", "-m", "hydra/launcher=fedray_ray", "hydra.launcher.concurrency=3",
         f"data.root={tiny_cifar},{other},{missing}", "data.download=false", "data.check_integrity=false",
         "num_clients=2", "rounds=1", "workflows.cross_site_validate.enabled=false", f"hydra.sweep.dir={tmp_path}/sweep"],
        capture_output=True, text=True, timeout=SWEEP_TIMEOUT, cwd=tmp_path, env=env,
    )
    sweep = tmp_path / "sweep"
    assert done.returncode == 1, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("fedray:")]
    assert errors[0].startswith("fedray: job 2: data.root=") and "data.download=false" in errors[0], errors
    assert errors[-1].startswith("fedray: 1 of 3 sweep jobs failed (job 2)"), errors

    with open(sweep / "sweep_summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["job", "data.root", *RESULT_COLUMNS]  # ray.share, the launcher's, is no column
    assert [(row["job"], row["data.root"], row["status"]) for row in rows] == [
        ("0", tiny_cifar, "completed"), ("1", str(other), "completed"), ("2", str(missing), "failed")]
    summaries = [json.loads((sweep / job / "summary.json").read_text()) for job in ("0", "1")]
    for summary in summaries:
        assert summary["config"]["ray"]["share"] == pytest.approx(0.3333)  # a third of the cluster each
    # Both jobs had their sites up at the same time, on the one Ray.
    (up0, end0), (up1, end1) = (_interval(sweep / job / "run.log") for job in ("0", "1"))
    assert up0 < end1 and up1 < end0
    assert (sweep / "2" / "console.log").read_text().count("data.root=") >= 1


def test_a_jobs_share_of_the_cluster_plans_its_site_actors_so_the_jobs_fit_side_by_side():
    site = {"num_actors": None, "num_gpus": None, "num_cpus": None, "num_threads": None, "script": None}
    cluster = {"CPU": 16.0}
    whole = plan_sites(site, 8, cluster, [cluster])
    sixth = plan_sites(site, 8, cluster, [cluster], share=0.1666)
    assert (whole.num_actors, whole.num_cpus) == (8, 1.0)
    assert (sixth.num_actors, sixth.num_cpus) == (2, 1.0)  # 16/6 CPUs: two single-threaded actors
    tiny = plan_sites(site, 8, {"CPU": 2.0}, [{"CPU": 2.0}], share=0.1666)
    assert tiny.num_actors == 1 and 6 * tiny.num_cpus <= 2.0  # six jobs' actors fit on two CPUs
