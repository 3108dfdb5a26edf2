"""End-to-end jobs on real Ray and a tiny CIFAR-10 in its on-disk format."""

import json

import numpy as np
import pytest
import ray
import torch

from fedray import JobFailed, run_job
from omegaconf import OmegaConf

from fedray.partition import Shard
from fedray.sites import SiteWorkerActor
from fedray.tasks import WorkerPool
from fedray.workflows import initialize_global_weights

pytestmark = pytest.mark.usefixtures("ray_session")

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
    holder = _DataHolder.options(name="controller", namespace=f"init-{method}").remote(data)
    workers = {name: SiteWorkerActor.options(name=name, namespace=f"init-{method}", num_cpus=0).remote(job, 1, None, f"init-{method}", "controller", None)
               for name in shards}
    try:
        pool = WorkerPool(list(workers.values()), home=workers)
        params = initialize_global_weights(list(workers), pool, method, client, timeout=120)
        tags = set(np.unique(params["fc3.bias"]).tolist())
        assert len(tags) == 1 and tags <= expected
    finally:
        for worker in [*workers.values(), holder]:
            ray.kill(worker)


@ray.remote(num_cpus=0)
class _DataHolder:
    """What a site actor asks for its data as it starts: the controller's role in a job."""

    def __init__(self, data: list) -> None:
        self.data = data

    def shared_data(self) -> list:
        return self.data


def test_round_ends_after_wait_time_once_min_clients_answered(job_config, tmp_path):
    job = job_config(
        "rounds=1", "min_clients=2", "site.num_actors=3",
        "model._target_=tests.fault_models.FaultyNet", "+model.slow_sites=[site-3]", "+model.delay=2.0",
        "workflows.scatter_and_gather.wait_time_after_min_received=0.5",
        "workflows.cross_site_validate.enabled=false",  # it would wait for site-3's abandoned, still running task
    )
    summary = run_job(job, tmp_path)
    (entry,) = summary["rounds"]
    assert set(entry["sites"]) == {"site-1", "site-2"}
    assert entry["failures"]["site-3"]["kind"] == "abandoned"
    assert entry["train_seconds"] < 10  # site-3 alone needs 2 s x 2 epochs x 9 batches


def test_train_timeout_gives_up_on_a_slow_site(job_config, tmp_path):
    job = job_config(
        "rounds=1", "min_clients=2", "site.num_actors=3",
        "model._target_=tests.fault_models.FaultyNet", "+model.slow_sites=[site-3]", "+model.delay=2.0",
        "workflows.scatter_and_gather.train_timeout=4",
        "workflows.scatter_and_gather.wait_time_after_min_received=60",  # only the timeout can end the round
    )
    summary = run_job(job, tmp_path)
    (entry,) = summary["rounds"]
    assert set(entry["sites"]) == {"site-1", "site-2"}
    assert entry["failures"]["site-3"]["kind"] == "timeout"
    assert entry["train_seconds"] < 15


def test_too_few_results_stop_the_run_and_keep_earlier_rounds(job_config, tmp_path):
    # Each site takes 18 steps a round (2 epochs x 9 batches): sites 2 and 3 fail in round 1.
    job = job_config(
        "rounds=3", "min_clients=2", "site.num_actors=3",
        "model._target_=tests.fault_models.FaultyNet", "+model.fail_sites=[site-2,site-3]", "+model.fail_after_steps=18",
    )
    with pytest.raises(JobFailed, match="round 1: only 1 sites can still answer, min_clients=2 needed"):
        run_job(job, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0]
    assert summary["status"] == "failed" and summary["error"].startswith("RoundFailed: round 1: only 1 sites can still answer")
    assert torch.load(tmp_path / "models" / "FL_global_model.pt")["round"] == 0


def test_eval_every_skips_the_global_evaluation_between_and_keeps_the_last(job_config, tmp_path):
    job = job_config("rounds=3", "eval_every=2", "local_epochs=1", "workflows.cross_site_validate.enabled=false")
    summary = run_job(job, tmp_path)
    assert [bool(r["global"]) for r in summary["rounds"]] == [False, True, True]  # round 2, then the last
    assert summary["rounds"][0]["evaluation_seconds"] < 0.01
    assert summary["best_round"] in (1, 2)
    assert (tmp_path / "plots" / "global_metrics.png").is_file()
