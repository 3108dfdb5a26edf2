"""End-to-end jobs on real Ray and a tiny CIFAR-10 in its on-disk format."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from omegaconf import OmegaConf

from fedray import run_job
from fedray.data.partition import Shard
from fedray.server.tasks import WorkerPool
from fedray.server.workflows import initialize_global_weights
from fedray.site.actor import SiteWorkerActor
from tests.conftest import DataHolder

pytestmark = pytest.mark.usefixtures("ray_session")

REPO = Path(__file__).resolve().parent.parent
NET_KEYS = {f"{layer}.{kind}" for layer in ("conv1", "conv2", "fc1", "fc2", "fc3") for kind in ("weight", "bias")}


def test_fedavg_job_writes_flare_outputs_and_learns(job_config, tmp_path):
    summary = run_job(job_config(), tmp_path)

    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    last = summary["rounds"][-1]
    assert set(last["sites"]) == {"site-1", "site-2", "site-3"} and last["failures"] == {}
    for metrics in last["sites"].values():
        assert metrics["num_steps"] > 0 and np.isfinite(metrics["train_loss"])
        assert 0 <= metrics["val_accuracy"] <= 1
    # Ten classes: chance is 0.1.
    assert last["global"]["test_accuracy"] > 0.3
    assert summary["best_round"] in (0, 1)

    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["rounds"] == summary["rounds"] and on_disk["config"]["num_clients"] == 3
    assert on_disk["status"] == "completed" and on_disk["error"] is None
    assert set(on_disk["timings"]) >= {"data", "ray_start", "site_start", "workflows"}
    for name in ("FL_global_model.pt", "best_FL_global_model.pt"):
        state = torch.load(tmp_path / "models" / name)["model"]
        assert set(state) == NET_KEYS


def test_same_seed_gives_identical_global_weights(job_config, tmp_path):
    final = []
    for run in ("a", "b"):
        run_job(job_config("seed=7", "rounds=1", "local_epochs=1"), tmp_path / run)
        final.append(torch.load(tmp_path / run / "models" / "FL_global_model.pt")["model"])
    assert all(torch.equal(final[0][k], final[1][k]) for k in NET_KEYS)


def test_exclude_vars_keep_global_values(job_config, tmp_path):
    run_job(job_config("rounds=1", "workflows.scatter_and_gather.exclude_vars='^fc3\\.'"), tmp_path)
    state = torch.load(tmp_path / "models" / "FL_global_model.pt")["model"]
    torch.manual_seed(0)
    from fedray.models import Net

    initial = Net().state_dict()
    assert torch.equal(state["fc3.weight"], initial["fc3.weight"])
    assert not torch.equal(state["fc1.weight"], initial["fc1.weight"])


@pytest.mark.parametrize("method, client, expected", [("client", "site-2", {2.0}), ("first", None, {1.0, 2.0, 3.0})])
def test_initial_weights_come_from_the_chosen_site(job_config, method, client, expected):
    job = OmegaConf.to_container(job_config("model._target_=tests.fault_models.SiteTaggedNet"), resolve=True)
    images, labels = np.zeros((30, 3, 32, 32), np.uint8), np.zeros(30, np.int64)
    shards = {f"site-{k}": Shard(np.arange(10 * k - 10, 10 * k - 2), np.arange(10 * k - 2, 10 * k)) for k in (1, 2, 3)}
    data = [ray.put(value) for value in (shards, images, labels, images, labels)]
    holder = DataHolder.options(name="controller", namespace=f"init-{method}").remote(data)
    workers = {name: SiteWorkerActor.options(name=name, namespace=f"init-{method}", num_cpus=0).remote(
        job, 1, None, f"init-{method}", "controller", None) for name in shards}
    try:
        pool = WorkerPool(list(workers.values()), home=workers)
        params = initialize_global_weights(list(workers), pool, method, client, timeout=120)
        tags = set(np.unique(params["fc3.bias"]).tolist())
        assert len(tags) == 1 and tags <= expected
    finally:
        for worker in [*workers.values(), holder]:
            ray.kill(worker)



def test_the_cli_controller_and_site_modules_import_no_torch():
    """Ray imports fedray.site.actor in every process that gets a SiteWorker handle (the controller), and
    the driver imports torch only while its Ray starts: none of these modules may import it."""
    import subprocess
    import sys

    code = ("import sys, fedray.run, fedray.driver.job, fedray.server.controller, fedray.site.actor, fedray.server.workflows; "
            "print(sorted(m for m in ('torch', 'torchvision', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_a_private_local_ray_starts_lean_and_its_workers_get_the_malloc_settings(tmp_path):
    """Ray's workers inherit the environment of the driver that starts the local Ray: with glibc's
    defaults they now and then faulted their memory back in (155,000 page faults in a site's training).
    The head has no autoscaler monitor, still its dashboard head, and Ray's start is unpatched after."""
    import subprocess
    import sys

    from fedray.driver.cluster import MALLOC_SETTINGS

    code = (
        "import os, ray\n"
        "from ray._private.node import Node\n"
        "from fedray.driver.cluster import ray_for\n"
        "original = Node.start_api_server, Node.start_monitor, Node.start_ray_processes\n"
        "with ray_for({'address': None, 'num_cpus': 1, 'num_gpus': None, 'dashboard': False}) as session:\n"
        "    session.wait_until_up()\n"
        "    processes = ray._private.worker._global_node.all_processes\n"
        "    print(sorted(kind for kind in ('monitor', 'dashboard', 'raylet') if processes.get(kind)))\n"
        "    print((Node.start_api_server, Node.start_monitor, Node.start_ray_processes) == original)\n"
        "    names = " + repr(sorted(MALLOC_SETTINGS)) + "\n"
        "    print(ray.get(ray.remote(lambda: [os.environ.get(n) for n in names]).remote(), timeout=120))\n"
    )
    env = {key: value for key, value in os.environ.items() if key not in MALLOC_SETTINGS and key != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**env, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    kinds, restored, malloc = done.stdout.strip().splitlines()[-3:]
    assert kinds == repr(["dashboard", "raylet"])  # no autoscaler monitor
    assert restored == "True"
    assert malloc == repr([MALLOC_SETTINGS[name] for name in sorted(MALLOC_SETTINGS)])


def test_code_that_asks_ray_something_while_the_jobs_ray_starts_gets_that_ray(tmp_path):
    """Ray starts a default Ray of its own when ray.get_runtime_context() (or ray.get ...) is called before
    Ray is up: a model asking its actor's name in the driver's model check did, while the job's private
    Ray was starting in its thread, and that start then failed ("ray.init twice"). Now the call waits."""
    import subprocess
    import sys

    code = (
        "import ray, psutil\n"
        "from fedray.driver.cluster import ray_for\n"
        "with ray_for({'address': None, 'num_cpus': 1, 'num_gpus': 0, 'dashboard': False}) as session:\n"
        "    ray.get_runtime_context()  # before wait_until_up, as a model's constructor in check_code\n"
        "    session.wait_until_up()\n"
        "    heads = [p for p in psutil.Process().children(recursive=True) if 'gcs_server' in p.name()]\n"
        "    print(len(heads), ray.cluster_resources().get('CPU'))\n"
    )
    env = {**os.environ, "RAY_ADDRESS": ""}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["1", "1.0"]  # one Ray, the job's (1 CPU), not a default one beside it
