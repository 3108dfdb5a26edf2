"""FedProx, FedOpt and SCAFFOLD as whole jobs on real Ray and the tiny CIFAR-10: against FedAvg, a
numpy reference of the server's updates, and resumed runs."""

import os
import shutil

import numpy as np
import pytest
import torch

from fedray import JobFailed, load_config, run_job
from fedray.algorithms.scaffold import CTRL_DIFF
from fedray.models import Net
from fedray.records.checkpoint import read_state_file
from fedray.server.workflows import sample_sites

pytestmark = pytest.mark.usefixtures("ray_session")

HERE = os.path.dirname(os.path.abspath(__file__))
SITES = ["site-1", "site-2", "site-3"]
ONE_ROUND = ("rounds=1", "workflows.cross_site_validate.enabled=true")


def _global(run_dir):
    return {k: v.numpy() for k, v in torch.load(run_dir / "models" / "FL_global_model.pt")["model"].items()}


def _initial(seed=0):
    torch.manual_seed(seed)  # pre_train's `first`: every site's seeded init
    return {k: v.numpy() for k, v in Net().state_dict().items()}


@pytest.fixture(scope="module")
def fedavg_one_round(job_config, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fedavg")
    run_job(job_config(*ONE_ROUND), run_dir)
    return run_dir


def _distance_of_local_models(run_dir, start):
    total = 0.0
    for site in SITES:  # after one round, each site's best local model is the one it trained
        local = torch.load(run_dir / "checkpoint" / "local_models" / f"{site}.pt")["model"]
        total += sum(float(((local[k].numpy().astype(np.float64) - start[k]) ** 2).sum()) for k in start)
    return total


def test_fedprox_mu_zero_is_fedavg_and_mu_keeps_sites_near_the_global_model(job_config, fedavg_one_round, tmp_path):
    run_job(job_config(*ONE_ROUND, "algorithm=fedprox", "algorithm.mu=0"), tmp_path / "mu0")
    fedavg = _global(fedavg_one_round)
    assert all(np.array_equal(fedavg[k], v) for k, v in _global(tmp_path / "mu0").items())

    run_job(job_config(*ONE_ROUND, "algorithm=fedprox", "algorithm.mu=1.0"), tmp_path / "mu1")
    start = _initial()
    assert _distance_of_local_models(tmp_path / "mu1", start) < 0.8 * _distance_of_local_models(tmp_path / "mu0", start)


def test_fedopt_sgd_lr_one_without_momentum_is_fedavg(job_config, fedavg_one_round, tmp_path):
    run_job(job_config(*ONE_ROUND, "algorithm=fedopt", "algorithm.server_optimizer.momentum=0",
                       "algorithm.server_lr_scheduler=null"), tmp_path)
    fedavg = _global(fedavg_one_round)
    for k, v in _global(tmp_path).items():
        np.testing.assert_allclose(v, fedavg[k], rtol=0, atol=4 * np.finfo(np.float32).eps * max(1, np.abs(fedavg[k]).max()))


class _Snapshots:
    """Each round's global model and SCAFFOLD states, copied as the driver reports the round."""

    def __init__(self, run_dir):
        self.run_dir, self.rounds = run_dir, []

    def __call__(self, event):
        if event["type"] != "round":
            return
        states = {}
        for site in SITES:
            path = self.run_dir / "checkpoint" / "site_states" / f"{site}.pt"
            if path.is_file():
                states[site] = read_state_file(path)["state"]
        algorithm = read_state_file(self.run_dir / "checkpoint" / "algorithm_state.pt")["state"]
        self.rounds.append({"global": _global(self.run_dir), "c": algorithm["c"], "c_sites": states})


# seed 2 samples site-1, site-2 and then site-1, site-3: site-2 sits out round 1 with a variate.
SCAFFOLD = ("algorithm=scaffold", "clients_per_round=2", "momentum=0", "seed=2")


@pytest.fixture(scope="module")
def scaffold_run(job_config, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("scaffold")
    snapshots = _Snapshots(run_dir)
    summary = run_job(job_config(*SCAFFOLD), run_dir, on_event=snapshots)
    return run_dir, summary, snapshots


def test_scaffold_two_rounds_match_a_numpy_reference(scaffold_run):
    _, summary, snapshots = scaffold_run
    assert len(snapshots.rounds) == 2
    x = _initial(seed=2)
    c = {k: np.zeros_like(v) for k, v in x.items()}
    c_sites = {site: {k: np.zeros_like(v) for k, v in x.items()} for site in SITES}
    lr = 0.05
    for current_round, after in enumerate(snapshots.rounds):
        chosen = sample_sites(SITES, 2, 2, current_round)
        assert sorted(summary["rounds"][current_round]["sites"]) == chosen
        numerator, weights, dc_sum = {k: 0.0 for k in x}, 0.0, {k: 0.0 for k in x}
        for site in SITES:
            if site not in chosen:  # not sampled: its variate is the one it had, bit for bit
                if current_round == 1:
                    assert site == "site-2"
                    assert all(np.array_equal(after["c_sites"][site][k], c_sites[site][k]) for k in x)
                else:
                    assert site not in after["c_sites"]
                continue
            steps = summary["rounds"][current_round]["sites"][site]["num_steps"]
            new = after["c_sites"][site]
            for k in x:
                dc = new[k].astype(np.float64) - c_sites[site][k]
                # option II: c_i+ = c_i - c + (x - y) / (K lr), so the site's model was y = x - K lr (dc + c)
                y = x[k] - steps * lr * (dc + c[k])
                numerator[k] = numerator[k] + steps * y
                dc_sum[k] = dc_sum[k] + dc
            weights += steps
            c_sites[site] = new
        x_want = {k: numerator[k] / weights for k in x}
        c_want = {k: c[k] + dc_sum[k] / len(SITES) for k in x}
        for k in x:
            np.testing.assert_allclose(after["global"][k], x_want[k], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(after["c"][k], c_want[k], rtol=1e-4, atol=1e-6)
            assert np.abs(dc_sum[k]).max() > 0
        x, c = after["global"], after["c"]
    # c stays the mean of all sites' variates (each starts at zero)
    for k in x:
        np.testing.assert_allclose(c[k], sum(c_sites[s][k].astype(np.float64) for s in SITES) / 3, rtol=1e-4, atol=1e-6)


class _StopAfter:
    def __init__(self, last_round):
        self.last_round = last_round

    def __call__(self, event):
        if event["type"] == "round" and event["round"] == self.last_round:
            raise KeyboardInterrupt  # what Ctrl-C does, as the driver reports a finished round


def _stop_and_resume(job, stopped_dir, last_round):
    with pytest.raises(JobFailed, match="interrupted"):
        run_job(job, stopped_dir, on_event=_StopAfter(last_round))
    assert torch.load(stopped_dir / "models" / "FL_global_model.pt")["round"] == last_round
    summary = run_job(load_config([f"resume={stopped_dir}"]), stopped_dir.parent / "ignored", on_event=lambda e: None)
    assert summary["status"] == "completed"
    return summary


@pytest.mark.slow
def test_a_resumed_fedopt_run_ends_with_the_same_weights(job_config, tmp_path):
    # FLARE's FedAvgM: the second round's step needs the first round's momentum and cosine lr.
    overrides = ("algorithm=fedopt", "local_epochs=1", "workflows.cross_site_validate.enabled=false")
    run_job(job_config(*overrides), tmp_path / "straight")
    summary = _stop_and_resume(job_config(*overrides), tmp_path / "stopped", last_round=0)
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    straight, resumed = _global(tmp_path / "straight"), _global(tmp_path / "stopped")
    assert all(np.array_equal(straight[k], resumed[k]) for k in straight)
    state = read_state_file(tmp_path / "stopped" / "checkpoint" / "algorithm_state.pt")["state"]
    assert state["optimizer"]["state"] and state["server_lr"] < 1.0


@pytest.mark.slow
def test_a_resumed_scaffold_run_ends_with_the_same_weights(job_config, scaffold_run, tmp_path):
    # Round 1 needs c from round 0 and site-1's own c_i, both from the checkpoint.
    straight_dir, _, snapshots = scaffold_run
    summary = _stop_and_resume(job_config(*SCAFFOLD), tmp_path / "stopped", last_round=0)
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    straight, resumed = _global(straight_dir), _global(tmp_path / "stopped")
    assert all(np.array_equal(straight[k], resumed[k]) for k in straight)
    for site in SITES:
        theirs = read_state_file(straight_dir / "checkpoint" / "site_states" / f"{site}.pt")["state"]
        ours = read_state_file(tmp_path / "stopped" / "checkpoint" / "site_states" / f"{site}.pt")["state"]
        assert all(np.array_equal(theirs[k], ours[k]) for k in theirs)


def test_a_flare_scaffold_script_runs_with_its_imports_changed(job_config, tmp_path):
    dump = tmp_path / "dump"
    dump.mkdir()
    script = os.path.join(HERE, "scripts", "scaffold_client.py")
    summary = run_job(job_config("num_clients=2", "algorithm=scaffold", f"site.script={script}",
                                 f"site.script_args='--fedproxloss_mu 0.01 --dump {dump}'"), tmp_path / "run")
    assert all(r["failures"] == {} for r in summary["rounds"]) and len(summary["rounds"]) == 2
    c = read_state_file(tmp_path / "run" / "checkpoint" / "algorithm_state.pt")["state"]["c"]
    diffs = [np.load(path) for path in sorted(dump.glob("*.npz"))]
    assert len(diffs) == 4  # 2 sites x 2 rounds
    for k, value in c.items():  # c = sum over rounds and sites of dc_i / N
        np.testing.assert_allclose(value, sum(d[k].astype(np.float64) for d in diffs) / 2, rtol=1e-5, atol=1e-7)
    assert np.abs(c["fc3.weight"]).max() > 0


def test_a_script_without_the_variates_scaffold_needs_is_a_failed_site(job_config, tmp_path):
    script = os.path.join(HERE, "scripts", "simple_client.py")
    with pytest.raises(JobFailed, match="scaffold_c_diff"):
        run_job(job_config("num_clients=2", "rounds=1", "algorithm=scaffold", f"site.script={script}",
                           "workflows.scatter_and_gather.ignore_result_error=false"), tmp_path)
