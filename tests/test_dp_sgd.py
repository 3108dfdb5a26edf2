"""privacy=dp_sgd: record-level DP-SGD inside sites with Opacus (FLARE's hello-dp): per-sample clipping and
noise as Opacus computes them, each site's epsilon from Opacus's accountant over its own steps, kept as the
site's state across an actor restart and a resume, and the same bits whatever worker or batch trains a site."""

import json

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from fedray import ConfigError, JobFailed, load_config, run_job
from fedray.models import Net
from fedray.site.dp_sgd import SiteDPSGD, noise_multiplier, sample_rate, steps_per_epoch
from fedray.site.training import PlainSGD, normalize, train_epochs

DP = ("privacy=dp_sgd", "local_epochs=1", "workflows.cross_site_validate.enabled=false")


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return images, torch.arange(16) % 10


def _one_step(records: int, batch: torch.Tensor, sigma: float, clip: float, seed: int = 0):
    """One DP-SGD step of Net at lr 1 on `batch` (indices into 16 random images): the weights' change."""
    torch.manual_seed(0)
    model = Net()
    images, labels = _data()
    before = [p.detach().clone() for p in model.parameters()]
    private = SiteDPSGD(model, PlainSGD(model.parameters(), lr=1.0), sigma=sigma, clip=clip, records=records,
                        batch_size=10, batch_generator=torch.Generator().manual_seed(seed),
                        noise_generator=torch.Generator().manual_seed(seed), history=[])
    try:
        train_epochs(model, images, labels, np.arange(16), epochs=1, batch_size=10, lr=1.0, momentum=0.0,
                     generator=torch.Generator(), optimizer=private.optimizer, forward=private.module,
                     batches=lambda index: iter([batch]))
    finally:
        private.close()
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())  # Opacus's hooks are off the model
    return torch.cat([(p.detach() - b).ravel() for p, b in zip(model.parameters(), before)]), private


def test_each_samples_gradient_is_clipped_and_the_noise_is_sigma_clip_over_the_expected_batch():
    # 100 records at batch 10: q = 0.1, Opacus's expected batch int(100 x 0.1) = 10.
    change, private = _one_step(records=100, batch=torch.arange(4), sigma=0.0, clip=0.01)
    assert private.rate == sample_rate(100, 10) == 0.1 and steps_per_epoch(100, 10) == 10
    # Without noise: minus the sum of the 4 samples' gradients, each clipped to norm 0.01, over 10 (not 4).
    torch.manual_seed(0)
    model, images, labels = Net(), *_data()
    expected = 0
    for i in range(4):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(normalize(images[i:i + 1])), labels[i:i + 1]).backward()
        grad = torch.cat([p.grad.ravel() for p in model.parameters()])
        assert grad.norm() > 10 * 0.01  # clipping matters
        expected = expected - grad * min(1.0, 0.01 / (float(grad.norm()) + 1e-6)) / 10
    torch.testing.assert_close(change, expected, rtol=1e-3, atol=1e-8)  # w + dw - w: float32 rounding of w
    # An empty batch (Poisson sampling can draw one) is noise only: N(0, (sigma x clip / 10)^2) per weight.
    noise, private = _one_step(records=100, batch=torch.arange(0), sigma=2.0, clip=0.5)
    assert abs(float(noise.std()) / 0.1 - 1) < 0.02 and abs(float(noise.mean())) < 0.002  # 62006 draws
    assert private.history == [(2.0, 0.1, 1)]  # one step in Opacus's accountant
    again, _ = _one_step(records=100, batch=torch.arange(0), sigma=2.0, clip=0.5)
    assert torch.equal(noise, again)  # a seeded generator: the same bits


def test_target_epsilon_calibrates_each_sites_noise_to_spend_it_over_every_round():
    privacy = {"target_epsilon": 2.0, "delta": 1e-5, "noise_multiplier": None}
    sigma = noise_multiplier(privacy, records=270, batch_size=32, local_epochs=2, rounds=5)
    accountant = RDPAccountant()
    accountant.history = [(sigma, 1 / 9, 5 * 2 * 9)]
    assert 1.98 <= accountant.get_epsilon(1e-5) <= 2.0
    assert noise_multiplier({**privacy, "target_epsilon": None, "noise_multiplier": 0.7}, 270, 32, 2, 5) == 0.7


@pytest.mark.parametrize("overrides, line", [
    (("algorithm=fedprox",), "algorithm.mu=1e-05: fedprox's proximal term is no per-sample loss"),
    (("site.batched_training=true",), "site.batched_training=True: must be false with privacy=dp_sgd"),
    (("privacy.accountant=pld",), "privacy.accountant=pld: must be rdp with privacy=dp_sgd"),
    (("privacy.delta=null",), "privacy.delta=null: must be set with privacy=dp_sgd"),
    (("privacy.target_epsilon=3",), "privacy.noise_multiplier=1.0: must be null with privacy.target_epsilon"),
    (("privacy.clip=inf",), "privacy.clip=inf: must be finite with privacy=dp_sgd"),
    (("privacy.clip=0",), "privacy.clip=0: must be a positive number"),
    (("model._target_=torchvision.models.resnet18", "+model.num_classes=10"),
     "model._target_=torchvision.models.resnet18: has BatchNorm layers (bn1, layer1.0.bn1, layer1.0.bn2 and 17 more), "
     "which mix a batch's samples: per-sample gradients (privacy=dp_sgd) cannot be computed; replace them by GroupNorm "
     "(Opacus's ModuleValidator.fix(model) does) or use privacy=none"),
])
def test_what_dp_sgd_cannot_run_is_one_line_before_ray_starts(overrides, line, job_config):
    with pytest.raises(ConfigError) as refused:
        job_config(*DP, *overrides)
    assert str(refused.value).startswith(line) and "\n" not in str(refused.value)


def _final(run_dir):
    return torch.load(run_dir / "models" / "FL_global_model.pt")["model"]


def _epsilons(summary):
    return {site: entry["epsilon"] for site, entry in summary["privacy"]["sites"].items()}


SITES = ("num_clients=2", "site.num_actors=2", "model._target_=tests.fault_models.FaultyNet")  # actors site-1, site-2


@pytest.fixture(scope="module")
def undisturbed(job_config, tmp_path_factory, ray_session):
    """Two sites, each in its own actor, training with DP-SGD for 2 rounds, nothing in the way."""
    run_dir = tmp_path_factory.mktemp("dp") / "undisturbed"
    return run_dir, run_job(job_config(*DP, *SITES), run_dir)


@pytest.mark.slow
def test_each_sites_epsilon_is_opacus_accountants_over_its_own_steps(undisturbed):
    _, summary = undisturbed
    assert sorted(summary["privacy"]["sites"]) == ["site-1", "site-2"]
    for site, entry in summary["privacy"]["sites"].items():
        per_round = summary["rounds"][0]["sites"][site]["num_steps"]  # ceil(405 records / 32) = 13
        assert per_round == 13 and entry["steps"] == 2 * per_round and entry["noise_multiplier"] == 1.0
        accountant = RDPAccountant()
        accountant.history = [(1.0, 1 / per_round, 2 * per_round)]
        assert entry["epsilon"] == accountant.get_epsilon(1e-5)
        assert summary["rounds"][0]["sites"][site]["dp_epsilon"] < entry["epsilon"]  # it grows round by round


@pytest.mark.slow
def test_an_actor_restarted_mid_run_goes_on_with_its_sites_ledger_to_the_same_bits(undisturbed, job_config, tmp_path):
    """site-2's actor dies in round 1 (past its 13 steps of round 0): Ray restarts it and the task runs again
    from the site's accountant history, which the controller kept, not the actor."""
    straight_dir, straight = undisturbed
    crashed = run_job(job_config(*DP, *SITES, "+model.crash_sites=[site-2]", f"+model.crash_once_file={tmp_path}/crashed",
                                 "+model.crash_after_steps=13"), tmp_path / "crashed")
    assert (tmp_path / "crashed.site-2").exists()
    assert crashed["rounds"][1]["sites"]["site-2"]["dp_steps"] == 26
    ours, theirs = _final(straight_dir), _final(tmp_path / "crashed")
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert _epsilons(crashed) == _epsilons(straight)


@pytest.mark.slow
def test_a_stopped_and_resumed_run_of_site_batches_continues_each_sites_ledger_to_the_same_bits(undisturbed, job_config,
                                                                                                tmp_path):
    """Both sites in one task on a pool worker (site.sites_per_task=2), stopped after round 0 and resumed: the
    sites' histories come back from the checkpoint, and the run ends as the undisturbed one, bit for bit."""
    straight_dir, straight = undisturbed
    stopped = tmp_path / "stopped"

    def stop_after_round_0(event):
        if event["type"] == "round" and event["round"] == 0:
            raise KeyboardInterrupt

    with pytest.raises(JobFailed, match="interrupted"):
        run_job(job_config(*DP, "num_clients=2", "site.num_actors=1", "site.sites_per_task=2",
                           "model._target_=tests.fault_models.FaultyNet"), stopped, on_event=stop_after_round_0)
    resumed = run_job(load_config([f"resume={stopped}"]), tmp_path / "ignored", on_event=lambda event: None)
    ours, theirs = _final(straight_dir), _final(stopped)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert _epsilons(resumed) == _epsilons(straight)  # the resumed sites went on from round 0's steps
    assert _epsilons(json.loads((stopped / "summary.json").read_text())) == _epsilons(straight)


def test_a_target_epsilon_no_noise_reaches_is_one_line_once_the_data_is_split(job_config):
    from fedray.driver.preflight import check_dp_sgd_budget

    cfg = job_config(*DP, "privacy.noise_multiplier=null", "privacy.target_epsilon=0.1")
    # RDP's conversion at delta 1e-5 cannot give less than log(1/delta) / 62 = 0.19, whatever the noise.
    with pytest.raises(ConfigError, match=r"^privacy.target_epsilon=0.1: no noise reaches it at delta=1e-05 for site-2 "
                                          r"\(405 records, batch_size=32, 1 local epochs x 2 rounds\) \(Opacus: The "
                                          r"privacy budget is too low.\); raise it, or train fewer epochs$"):
        check_dp_sgd_budget(cfg, 405, "site-2")
    check_dp_sgd_budget(job_config(*DP, "privacy.noise_multiplier=null", "privacy.target_epsilon=3"), 405, "site-2")
