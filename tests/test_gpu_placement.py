"""GPU placement without a GPU: Ray's logical GPUs (`ray.num_gpus`) on a CPU machine.

Ray hands out GPU fractions it was told about whether or not CUDA exists, so fedray's plan
(how many site actors, which fraction each) is tested for real here; torch then falls back to
the CPU inside the actors. These tests run on their own private Ray with a logical GPU (the
session's has none) and put the session's Ray back afterwards.
"""

import json
import logging
import time

import numpy as np
import pytest
import ray
import torch
from omegaconf import OmegaConf

from fedray import run_job
from fedray.driver.resources import ResourceError, plan_sites
from tests.conftest import logical_gpus, start_site_worker

SITE = {"num_actors": None, "num_gpus": None, "num_cpus": None, "num_threads": None, "script": None}


@pytest.fixture(scope="module")
def one_logical_gpu():
    with logical_gpus(1):
        yield


@pytest.mark.slow
def test_eight_sites_on_one_gpu_get_eight_actors_of_an_eighth_and_the_job_runs(one_logical_gpu, job_config, tmp_path,
                                                                            caplog):
    with caplog.at_level(logging.INFO, logger="fedray"):
        summary = run_job(job_config("num_clients=8", "rounds=1", "local_epochs=1",
                                     "workflows.cross_site_validate.enabled=false"), tmp_path)
    placed = [r.getMessage() for r in caplog.records if "sites on" in r.getMessage()]
    assert placed and placed[0].startswith("8 sites on 8 GPU actors (0.25 CPU, 0.125 GPU, 1 threads each)")
    assert sorted(summary["rounds"][0]["sites"]) == [f"site-{k}" for k in range(1, 9)]
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"


def test_a_site_actor_with_a_logical_gpu_trains_on_the_cpu_without_cuda(one_logical_gpu, job_config):
    job = {**OmegaConf.to_container(job_config("num_clients=1"), resolve=True), "job_id": "fedray-gpu-test"}
    images, labels = np.zeros((4, 3, 32, 32), dtype=np.uint8), np.zeros(4, dtype=np.int64)
    data = [ray.put({}), ray.put(images), ray.put(labels), ray.put(images), ray.put(labels)]
    worker, holder = start_site_worker(job, data, "gpu-test", num_gpus=0.125, num_cpus=0.25)
    try:
        # No CUDA here: torch falls back to the CPU although Ray lent the actor a GPU's eighth.
        assert ray.get(worker.ready.remote(), timeout=120)["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
        assert ray.available_resources().get("GPU") == 0.875  # it holds its eighth of the logical GPU
    finally:
        ray.kill(worker)
        ray.kill(holder)


def test_a_gpu_fraction_too_big_for_the_sites_is_refused_with_one_line_before_any_actor(one_logical_gpu, job_config,
                                                                                     tmp_path):
    deadline = time.monotonic() + 60
    while ray.available_resources().get("GPU") != 1.0 and time.monotonic() < deadline:
        time.sleep(0.2)  # an earlier test's actor gives its fraction back
    with pytest.raises(ResourceError) as refused:
        run_job(job_config("num_clients=8", "site.num_gpus=0.3"), tmp_path)
    assert str(refused.value) == ("site.num_gpus=0.3 x 8 site actors needs 2.4 GPUs, the cluster has 1; "
                                  "lower site.num_gpus or site.num_actors")
    assert ray.available_resources().get("GPU") == 1.0
    assert not [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("site-")]


def test_sixteen_sites_on_two_gpus_get_sixteen_actors_of_an_eighth():
    plan = plan_sites(SITE, 16, {"CPU": 16.0, "GPU": 2.0}, [{"CPU": 16.0, "GPU": 2.0}])
    assert (plan.num_actors, plan.num_gpus, plan.num_cpus, plan.num_threads) == (16, 0.125, 1.0, 1)
    with pytest.raises(ResourceError, match="site.num_gpus=0.3 x 8 site actors needs 2.4 GPUs, the cluster has 1"):
        plan_sites({**SITE, "num_gpus": 0.3}, 8, {"CPU": 8.0, "GPU": 1.0}, [{"CPU": 8.0, "GPU": 1.0}])
