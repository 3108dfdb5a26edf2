"""Sites trained in batches on pool workers: the same bits as one task per site, FLARE's rules per site."""

import numpy as np
import pytest
import ray
import torch
from omegaconf import OmegaConf

from fedray import run_job
from fedray.aggregation import CompensatedSum, fedavg
from fedray.data.partition import Shard
from tests.conftest import start_site_worker

pytestmark = pytest.mark.usefixtures("ray_session")

POOL = ("num_clients=6", "site.num_actors=2", "rounds=2", "local_epochs=1", "workflows.cross_site_validate.enabled=false")


def _final(tmp_path, name):
    return torch.load(tmp_path / name / "models" / "FL_global_model.pt")["model"]


def test_any_batching_gives_the_same_global_weights_as_a_task_per_site(job_config, tmp_path):
    runs = {}
    for per_task in ("1", "4", "null"):  # null: automatic, 2 batches per worker here
        summary = run_job(job_config(*POOL, "clients_per_round=5", f"site.sites_per_task={per_task}"), tmp_path / per_task)
        runs[per_task] = summary
    one, four, auto = (_final(tmp_path, name) for name in ("1", "4", "null"))
    assert all(torch.equal(one[k], four[k]) and torch.equal(one[k], auto[k]) for k in one)
    # Per-site records are kept whatever the batching.
    assert runs["4"]["rounds"][1]["sites"].keys() == runs["1"]["rounds"][1]["sites"].keys()
    assert all(m["num_steps"] > 0 for m in runs["4"]["rounds"][1]["sites"].values())


def test_merged_partial_sums_equal_one_sum_to_the_bit():
    rng = np.random.default_rng(0)
    updates = [({"w": rng.standard_normal(1000).astype(np.float32) * 10.0 ** rng.integers(-3, 3)}, float(rng.integers(1, 50)))
               for _ in range(12)]
    whole = fedavg(updates)
    for cut in ([4, 8], [1, 2, 3], [6]):
        parts, start = [], 0
        for end in [*cut, len(updates)]:
            part = CompensatedSum()
            for params, weight in updates[start:end]:
                part.add(params, weight)
            parts.append(part)
            start = end
        assert np.array_equal(fedavg(reversed(parts))["w"], whole["w"])


def test_a_failing_site_in_a_batch_fails_alone(job_config):
    job = {**OmegaConf.to_container(job_config("num_clients=3"), resolve=True), "job_id": "fedray-batch-test"}
    images = np.random.default_rng(1).integers(0, 255, (40, 3, 32, 32), dtype=np.uint8)
    labels = np.arange(40) % 10
    shards = {"site-1": Shard(np.arange(0, 12), np.arange(12, 14)), "site-2": Shard(np.arange(14, 26), np.arange(26, 28)),
              "site-3": Shard(np.array([10**6]), np.arange(28, 30))}  # an index past the data: this site raises
    data = [ray.put(value) for value in (shards, images, labels, images[:10], labels[:10])]
    worker, holder = start_site_worker(job, data, "batch-test", num_cpus=0)
    try:
        torch.manual_seed(0)
        from fedray.models import Net
        from fedray.site.training import get_params

        global_params = get_params(Net())
        out = ray.get(worker.train_sites.remote(["site-1", "site-3", "site-2"], global_params, 0, 1, [1.0, 1.0, 2.0]),
                      timeout=300)
        assert out["results"]["site-3"][0] == "error" and "index" in out["results"]["site-3"][1].lower()
        steps = {site: out["results"][site].meta["NUM_STEPS_CURRENT_ROUND"] for site in ("site-1", "site-2")}
        assert out["sum"].total_weight == steps["site-1"] * 1.0 + steps["site-2"] * 2.0
        one_sum = out["sum"]
        assert out["results"]["site-1"].params is None  # the weights travel summed, not per site
        # FedBuff's batches: one sum per buffer the sites land in (`groups`), which merged are the batch's one sum.
        out = ray.get(worker.train_sites.remote(["site-1", "site-3", "site-2"], global_params, 0, 1, [1.0, 1.0, 2.0],
                                                groups=[3, 3, 9]), timeout=300)
        sums = out["sums"]
        assert "sum" not in out and sums.keys() == {3, 9} and out["results"]["site-3"][0] == "error"
        assert sums[3].total_weight == steps["site-1"] and sums[9].total_weight == 2.0 * steps["site-2"]
        merged = CompensatedSum()
        merged.merge(sums[9])
        merged.merge(sums[3])
        assert all(np.array_equal(merged.result()[k], whole) for k, whole in one_sum.result().items())
    finally:
        ray.kill(worker)
        ray.kill(holder)


@pytest.mark.parametrize("mode", [(), ("workflows.scatter_and_gather.mode=fedbuff", "workflows.scatter_and_gather.concurrency=4",
                                      "workflows.scatter_and_gather.buffer_size=2", "system=lognormal")], ids=["sync", "fedbuff"])
def test_sites_trained_at_once_equal_sites_in_turn_to_float32_rounding(job_config, tmp_path, mode):
    """site.batched_training (torch.func.vmap over a task's sites, for GPUs) against the same job one site
    at a time: the same per-site steps and, to float32 rounding, the same global weights and losses (FedBuff:
    a task's sites summed by the buffer each lands in)."""
    common = (*POOL, "clients_per_round=5", "site.sites_per_task=3", "momentum=0.5", *mode)
    in_turn = run_job(job_config(*common), tmp_path / "in-turn", on_event=lambda e: None)
    at_once = run_job(job_config(*common, "site.batched_training=true"), tmp_path / "at-once", on_event=lambda e: None)
    assert at_once["status"] == "completed"
    a, b = _final(tmp_path, "in-turn"), _final(tmp_path, "at-once")
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)
    for r_turn, r_once in zip(in_turn["rounds"], at_once["rounds"]):
        assert r_turn["sites"].keys() == r_once["sites"].keys()
        for site, metrics in r_turn["sites"].items():
            assert r_once["sites"][site]["num_steps"] == metrics["num_steps"]
            assert r_once["sites"][site]["train_loss"] == pytest.approx(metrics["train_loss"], rel=1e-4)


@pytest.mark.parametrize("overrides, fix", [
    (["algorithm=fedprox"], "algorithm=fedavg"),
    (["optimizer=adam"], "plain SGD"),
    (["model=resnet18"], "buffers"),
])
def test_batched_training_refuses_what_it_cannot_compute_in_one_line(job_config, overrides, fix):
    from fedray import ConfigError
    from fedray.driver.preflight import check_code

    with pytest.raises(ConfigError, match=fix) as caught:
        check_code(job_config("site.batched_training=true", *overrides))
    assert "site.batched_training=true" in str(caught.value) and "\n" not in str(caught.value)


def test_reloading_a_batchs_global_weights_restores_them_exactly():
    """A batch's sites each start from the global weights, copied into the model's own tensors after the
    first, checked load: after training, a reload gives back exactly the global model (buffers too)."""
    from fedray.site.training import get_params, reloader, train_epochs

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4 * 30 * 30, 10))
    global_params = {name: value.numpy().copy() + 0.5 for name, value in model.state_dict().items()}
    global_params["1.num_batches_tracked"] = np.array(7, dtype=np.int64)
    reload = reloader(model, global_params)
    images, labels = torch.randint(0, 255, (20, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (20,))
    train_epochs(model, images, labels, np.arange(20), epochs=1, batch_size=5, lr=0.1, momentum=0.9,
                 generator=torch.Generator().manual_seed(1))
    assert not np.array_equal(get_params(model)["0.weight"], global_params["0.weight"])
    reload()
    assert all(np.array_equal(value, global_params[name]) for name, value in get_params(model).items())
    with pytest.raises(RuntimeError, match="size mismatch"):  # the first load is load_state_dict's, strict
        reloader(model, {**global_params, "3.bias": np.zeros(3, dtype=np.float32)})
