"""Central and local DP as whole jobs on real Ray and the tiny CIFAR-10: the same bits whatever the batching,
a killed worker or a resume; the ledger continued across a resume; the budget's stop; local DP's ledgers."""

import json

import numpy as np
import pytest
import torch

from fedray import run_job
from fedray.privacy.ledger import Ledger, RoundEvent, round_event
from fedray.server.workflows import sample_sites

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]

SITES = [f"site-{k}" for k in range(1, 7)]
# 4 of 6 sites a round on 2 workers: batches of 2 sites when sites_per_task is left automatic. Adaptive
# clipping, so the clip norm (server state) must survive the resume too.
CENTRAL = ("num_clients=6", "clients_per_round=4", "rounds=3", "local_epochs=1", "seed=1",
           "workflows.cross_site_validate.enabled=false", "privacy=central", "privacy.clip=adaptive",
           "privacy.initial_clip=0.5", "privacy.noise_multiplier=0.8", "privacy.count_noise=1.0")
DELTA = 1 / 6


def _budget_for_two_rounds() -> float:
    """A target_epsilon between two rounds' epsilon and three's: the run must stop after round 2."""
    event = round_event(6, 4, "fixed", 0.8)
    two, three = (Ledger("rdp", DELTA).epsilon_after(event, n) for n in (2, 3))
    return (two + three) / 2


def _global(run_dir):
    return torch.load(run_dir / "models" / "FL_global_model.pt")["model"]


def _same_bits(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(job_config, tmp_path_factory):
    """One site per task (no batching): the run every other way of running it must equal."""
    run_dir = tmp_path_factory.mktemp("reference")
    summary = run_job(job_config(*CENTRAL, "site.sites_per_task=1", f"privacy.target_epsilon={_budget_for_two_rounds()}"),
                      run_dir)
    return run_dir, summary


def test_a_budgeted_run_stops_at_the_last_round_within_it_and_records_epsilon(reference):
    run_dir, summary = reference
    target = _budget_for_two_rounds()
    assert summary["status"] == "completed" and [r["round"] for r in summary["rounds"]] == [0, 1]
    privacy = summary["privacy"]
    assert "round 3 would reach epsilon" in privacy["stopped"] and privacy["rounds_spent"] == 2
    spent = [r["privacy"]["epsilon"] for r in summary["rounds"]]
    assert spent == [Ledger("rdp", DELTA).epsilon_after(round_event(6, 4, "fixed", 0.8), n) for n in (1, 2)]
    assert spent[-1] == privacy["epsilon"] <= target
    clips = [r["privacy"]["clip"] for r in summary["rounds"]]
    assert clips[0] == 0.5 and clips[1] != 0.5 and privacy["clip"] != clips[1]  # adaptive: it moves every round
    assert (run_dir / "plots" / "privacy.png").is_file()
    logged = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [entry["privacy"]["epsilon"] for entry in logged] == spent


def test_batched_sites_give_the_same_bits(reference, job_config, tmp_path):
    run_dir, summary = reference
    batched = run_job(job_config(*CENTRAL, f"privacy.target_epsilon={_budget_for_two_rounds()}"), tmp_path)
    assert max(len(r["sites"]) for r in batched["rounds"]) == 4
    assert _same_bits(_global(tmp_path), _global(run_dir))
    assert batched["privacy"]["epsilon"] == summary["privacy"]["epsilon"]


def test_a_killed_worker_changes_no_bit(reference, job_config, tmp_path):
    """site-2's process dies the first time it trains; Ray restarts it and the task runs again."""
    run_dir, summary = reference
    assert "site-2" in sample_sites(SITES, 4, 1, 0)
    run = run_job(job_config(*CENTRAL, f"privacy.target_epsilon={_budget_for_two_rounds()}", "site.num_actors=6",
                             "model._target_=tests.fault_models.FaultyNet", "+model.crash_sites=[site-2]",
                             f"+model.crash_once_file={tmp_path}/crashed"), tmp_path / "run")
    assert (tmp_path / "crashed.site-2").exists()
    assert _same_bits(_global(tmp_path / "run"), _global(run_dir))
    assert [r["privacy"] for r in run["rounds"]] == [r["privacy"] for r in summary["rounds"]]


class _StopAfterFirstRound:
    def __call__(self, event):
        if event["type"] == "round":
            raise KeyboardInterrupt  # as Ctrl-C after round 1's checkpoint


def test_a_stopped_and_resumed_run_continues_the_ledger_to_the_same_weights(reference, job_config, tmp_path):
    run_dir, summary = reference
    overrides = (*CENTRAL, "site.sites_per_task=1", f"privacy.target_epsilon={_budget_for_two_rounds()}")
    with pytest.raises(Exception, match="interrupted"):
        run_job(job_config(*overrides), tmp_path, on_event=_StopAfterFirstRound())
    assert len(json.loads((tmp_path / "summary.json").read_text())["rounds"]) == 1
    resumed = run_job(job_config(*overrides, f"resume={tmp_path}"), tmp_path / "ignored")
    assert [r["privacy"] for r in resumed["rounds"]] == [r["privacy"] for r in summary["rounds"]]
    assert resumed["privacy"]["epsilon"] == summary["privacy"]["epsilon"] and resumed["privacy"]["rounds_spent"] == 2
    assert "round 3 would reach" in resumed["privacy"]["stopped"]
    assert _same_bits(_global(tmp_path), _global(run_dir))


def test_no_noise_and_no_clip_is_fedavg_with_uniform_weights_to_the_bit(job_config, tmp_path):
    """Every site, noise_multiplier=0 and clip=inf: the global model is the plain mean of the sites' models
    (each site's best local model after one round is the one it trained)."""
    summary = run_job(job_config("rounds=1", "privacy=central", "privacy.clip=inf", "privacy.noise_multiplier=0"),
                      tmp_path)
    assert summary["privacy"]["epsilon"] == float("inf")
    local = [torch.load(tmp_path / "checkpoint" / "local_models" / f"site-{k}.pt")["model"] for k in (1, 2, 3)]
    for name, value in _global(tmp_path).items():
        if value.is_floating_point():
            mean = sum(model[name].numpy().astype(np.float64) for model in local) / 3
            assert np.array_equal(value.numpy(), mean.astype(np.float32)), name


def test_local_dp_keeps_a_ledger_per_site_of_the_rounds_it_took_part_in(job_config, tmp_path):
    summary = run_job(job_config("num_clients=4", "clients_per_round=2", "rounds=3", "local_epochs=1",
                                 "workflows.cross_site_validate.enabled=false", "privacy=local", "privacy.epsilon=4",
                                 "privacy.clip=0.05"), tmp_path)
    noise = summary["config"]["privacy"]["noise_multiplier"]
    assert Ledger("rdp", 1 / 4).epsilon_after(RoundEvent("all", 1, 1, noise)) <= 4.0
    taken_part = {site: sum(site in r["sites"] for r in summary["rounds"]) for site in [f"site-{k}" for k in range(1, 5)]}
    sites = summary["privacy"]["sites"]
    assert {site: entry["releases"] for site, entry in sites.items()} == {s: n for s, n in taken_part.items() if n}
    for entry in sites.values():
        assert entry["epsilon"] == Ledger("rdp", 1 / 4).epsilon_after(RoundEvent("all", 1, 1, noise), entry["releases"])
    assert summary["privacy"]["epsilon"] == max(entry["epsilon"] for entry in sites.values())
    assert [r["privacy"]["epsilon"] for r in summary["rounds"]][-1] == summary["privacy"]["epsilon"]


def test_a_poisson_round_waits_for_every_site_it_drew_and_the_pld_ledger_counts_it(job_config, tmp_path):
    summary = run_job(job_config("num_clients=6", "clients_per_round=3", "sampling=poisson", "rounds=3", "local_epochs=1",
                                 "seed=4", "site.sites_per_task=1", "workflows.cross_site_validate.enabled=false", "privacy=central",
                                 "privacy.accountant=pld", "privacy.noise_multiplier=1.5", "privacy.clip=0.01"), tmp_path)
    drawn = [sample_sites(SITES, 3, 4, r, "poisson") for r in range(3)]
    assert len({len(sites) for sites in drawn}) > 1  # the cohort's size varies with this seed
    assert [sorted(r["sites"]) for r in summary["rounds"]] == [sorted(sites) for sites in drawn]
    assert not any(r["failures"] for r in summary["rounds"])  # none abandoned when the expected 3 answered
    event = round_event(6, 3, "poisson", 1.5)
    assert summary["privacy"]["epsilon"] == pytest.approx(Ledger("pld", DELTA).epsilon_after(event, 3), rel=1e-12)
