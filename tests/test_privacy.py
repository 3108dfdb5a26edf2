"""Differential privacy's pure parts (fedray/privacy/): clipping, the server's noise and mean, adaptive
clipping, the ledger against dp-accounting's own answers, calibration, and the config's one-line refusals."""

import math

import numpy as np
import pytest

from fedray.aggregation import CompensatedSum
from fedray.config import ConfigError, compose
from fedray.privacy.ledger import (ALL, FIXED, POISSON, PLD, RDP, Ledger, RoundEvent, calibrate, reference_epsilon,
                                   round_event)
from fedray.privacy.mechanisms import (adaptive_noise_multiplier, clip_update, next_clip, noise_generator, noisy_mean,
                                       private_names, update_norm)
from fedray.server.workflows import sample_sites
from fedray.server.workflows.scatter_and_gather import _batches


def _model(rng, scale=1.0):
    return {"conv.weight": (rng.standard_normal((4, 3, 3, 3)) * scale).astype(np.float32),
            "fc.bias": (rng.standard_normal(10) * scale).astype(np.float32),
            "bn.num_batches_tracked": np.array(7, dtype=np.int64)}


def test_a_clipped_update_has_norm_at_most_clip_and_keeps_its_direction():
    rng = np.random.default_rng(0)
    start = _model(rng)
    names = private_names(start)
    assert names == ["conv.weight", "fc.bias"]  # the integer counter is no part of the update
    for clip in (0.01, 0.5, 3.0):
        trained = {k: (v + _model(rng, 2.0)[k] if k in names else v) for k, v in start.items()}
        clipped, norm = clip_update(trained, start, clip, names)
        assert norm == pytest.approx(update_norm(trained, start, names))
        assert update_norm(clipped, start, names) <= clip * (1 + 1e-6)
        direction = np.concatenate([(trained[k].astype(np.float64) - start[k]).ravel() for k in names])
        moved = np.concatenate([(clipped[k].astype(np.float64) - start[k]).ravel() for k in names])
        assert np.dot(direction, moved) / (np.linalg.norm(direction) * np.linalg.norm(moved)) > 0.999999
    within, _ = clip_update(trained, start, math.inf, names)
    assert all(within[k] is trained[k] for k in trained)  # clip=inf hands back the very arrays: not a bit moves


def test_the_servers_noise_has_std_noise_multiplier_times_clip_over_the_expected_cohort():
    """3 sites answered of 5 expected, all with zero updates: the new model is the global one plus noise of
    std z*clip/5 per coordinate. Dividing by the 3 that answered, or not scaling by clip, is far off."""
    shape = (400, 500)
    start = {"w": np.full(shape, 0.25, dtype=np.float32)}
    total = CompensatedSum()
    for _ in range(3):
        total.add(start, 1.0)
    z, clip, expected = 1.3, 0.7, 5
    new = noisy_mean(total, start, ["w"], expected, z * clip, noise_generator(0, 4, 1))
    noise = new["w"].astype(np.float64) - 0.25
    assert abs(noise.mean()) < 5e-4
    assert noise.std() == pytest.approx(z * clip / expected, rel=0.01)  # 200k draws: 0.3% standard error
    again = noisy_mean(total, start, ["w"], expected, z * clip, noise_generator(0, 4, 1))
    assert np.array_equal(again["w"], new["w"])  # seeded by (seed, round): the same bits every time
    other_round = noisy_mean(total, start, ["w"], expected, z * clip, noise_generator(0, 5, 1))
    assert not np.array_equal(other_round["w"], new["w"])


def test_without_noise_the_mean_is_the_sites_plain_mean_and_the_counter_is_averaged():
    rng = np.random.default_rng(1)
    start, models = _model(rng), [_model(rng) for _ in range(3)]
    total = CompensatedSum()
    for model in models:
        total.add(model, 1.0)
    new = noisy_mean(total, start, private_names(start), 3, 0.0, noise_generator(0, 0, 1))
    for name in ("conv.weight", "fc.bias"):
        expected = (sum(m[name].astype(np.float64) for m in models) / 3).astype(np.float32)
        assert np.array_equal(new[name], expected)
    assert new["bn.num_batches_tracked"] == 7


def test_fewer_sites_than_expected_pull_the_mean_towards_the_global_model():
    """The fixed denominator: 2 of 4 expected sites each moved by +1: the model moves by 2/4, not 1."""
    start = {"w": np.zeros(3, dtype=np.float32)}
    total = CompensatedSum()
    for _ in range(2):
        total.add({"w": np.ones(3, dtype=np.float32)}, 1.0)
    assert np.array_equal(noisy_mean(total, start, ["w"], 4, 0.0, noise_generator(0, 0, 1))["w"], np.full(3, 0.5, np.float32))
    nobody = noisy_mean(CompensatedSum(), start, ["w"], 4, 1.0, noise_generator(0, 0, 1))
    assert np.any(nobody["w"] != 0)  # a round no site answered still releases noise, never the bare model


def test_adaptive_noise_splits_one_budget_between_the_updates_and_the_count():
    z, count_noise = 1.0, 2.5
    update_z = adaptive_noise_multiplier(z, count_noise)
    assert update_z > z
    assert update_z ** -2 + (2 * count_noise) ** -2 == pytest.approx(z ** -2)
    with pytest.raises(ValueError, match="count_noise"):
        adaptive_noise_multiplier(2.0, 0.9)


def test_adaptive_clipping_moves_the_clip_norm_to_the_target_quantile():
    """Update norms drawn from a log-normal whose quantiles are known: from 0.1 the clip norm climbs to the
    median (1.0), and to the 0.8 quantile when asked for it; with the count's noise on."""
    rng = np.random.default_rng(5)
    for quantile, known in ((0.5, 1.0), (0.8, math.exp(0.4 * 0.8416))):
        clip, cohort = 0.1, 50
        history = []
        for current_round in range(300):
            norms = np.exp(rng.standard_normal(cohort) * 0.4)
            clip, _ = next_clip(clip, norms <= clip, cohort, quantile, 0.2, cohort / 20,
                                noise_generator(0, current_round, 2))
            history.append(clip)
        assert np.mean(history[-100:]) == pytest.approx(known, rel=0.06)
        assert history[20] > 3 * history[0]  # it does travel, geometrically


@pytest.mark.parametrize("accountant,event", [
    (RDP, RoundEvent(FIXED, 1000, 50, 1.1)),
    (RDP, RoundEvent(POISSON, 1000, 50, 1.1)),
    (RDP, RoundEvent(ALL, 10, 10, 4.0)),
    (PLD, RoundEvent(POISSON, 1000, 50, 1.1)),
    (PLD, RoundEvent(ALL, 10, 10, 4.0)),
])
def test_the_ledgers_epsilon_is_dp_accountings_own(accountant, event):
    ledger = Ledger(accountant, 1e-4)
    for _ in range(30):
        ledger.spend(event)
    reference = reference_epsilon(accountant, 1e-4, event, 30)
    if accountant == RDP:
        assert ledger.epsilon == reference  # counts x the event's RDP: exactly its composition
    else:  # one convolution a round against its self-composition: the same to the grid's rounding
        assert ledger.epsilon == pytest.approx(reference, rel=1e-6)
    assert 0 < ledger.epsilon < math.inf
    resumed = Ledger(accountant, 1e-4, ledger.spent)  # a resumed run's ledger from the checkpoint's data
    assert resumed.epsilon == ledger.epsilon and resumed.releases == 30


def test_sampling_amplifies_and_no_noise_has_no_finite_epsilon():
    poisson, everyone = Ledger(RDP, 1e-3), Ledger(RDP, 1e-3)
    poisson.spend(RoundEvent(POISSON, 1000, 50, 1.0))
    everyone.spend(RoundEvent(ALL, 1000, 1000, 1.0))
    assert poisson.epsilon < everyone.epsilon / 4
    assert Ledger(RDP, 1e-3).epsilon_after(RoundEvent(ALL, 8, 8, 0.0)) == math.inf
    assert round_event(8, None, FIXED, 1.0).sampling == ALL and round_event(8, 4, POISSON, 1.0).cohort == 4


@pytest.mark.parametrize("accountant,sampling", [(RDP, FIXED), (PLD, POISSON)])
def test_calibration_finds_the_noise_that_spends_the_budget_in_the_rounds(accountant, sampling):
    z = calibrate(2.0, 1e-3, 20, accountant, 100, 10, sampling)
    event = round_event(100, 10, sampling, z)
    assert Ledger(accountant, 1e-3).epsilon_after(event, 20) <= 2.0
    assert Ledger(accountant, 1e-3).epsilon_after(round_event(100, 10, sampling, z * 0.99), 20) > 2.0


def test_poisson_sampling_is_seeded_and_draws_about_the_expected_cohort():
    sites = [f"site-{k}" for k in range(1, 1001)]
    sizes = [len(sample_sites(sites, 50, 0, r, "poisson")) for r in range(40)]
    assert sample_sites(sites, 50, 0, 3, "poisson") == sample_sites(sites, 50, 0, 3, "poisson")
    assert 45 < np.mean(sizes) < 55 and len(set(sizes)) > 5  # the cohort's size varies round to round
    assert len(sample_sites(sites, 50, 0, 3)) == 50  # fixed: exactly clients_per_round
    drawn = [f"site-{k}" for k in range(58)]  # a Poisson round over its expected 50, 25 a task: still 2 tasks
    assert [len(batch) for batch in _batches(drawn, 25, 50, "poisson")] == [29, 29]
    assert [len(batch) for batch in _batches(drawn[:7], 3, 50, "fixed")] == [3, 3, 1]


@pytest.mark.parametrize("overrides,line", [
    (["privacy=central", "privacy.clip=-1"], "privacy.clip=-1: must be a positive number"),
    (["privacy=central", "privacy.noise_multiplier=-0.5"], "privacy.noise_multiplier=-0.5: must be >= 0"),
    (["privacy=central", "privacy.delta=1.5"], "privacy.delta=1.5: must be in (0, 1)"),
    (["privacy=central", "privacy.clip=inf"], "privacy.clip=inf: inf (no clipping) leaves the noise unbounded"),
    (["privacy=central", "privacy.accountant=pld", "clients_per_round=4"],
     "privacy.accountant=pld: dp-accounting's PLD accountant has no fixed-size sampling without replacement"),
    (["privacy=central", "aggregator._target_=tests.test_privacy.median"], "aggregator._target_=tests.test_privacy."
     "median: must be fedray.aggregation.fedavg with privacy=central"),
    (["privacy=central", "algorithm=scaffold"], "algorithm=scaffold: its control variates would leave the sites"),
    (["privacy=central", "privacy.noise_multiplier=0.05", "privacy.target_epsilon=1"],
     "privacy.target_epsilon=1.0: one round with noise_multiplier=0.05 already spends epsilon"),
    (["privacy=central", "privacy.noise_multiplier=null", "privacy.target_epsilon=0.001", "privacy.delta=1e-5", "rounds=50"],
     "privacy.target_epsilon=0.001: no noise_multiplier up to 1000 keeps 50 rounds within"),
    (["privacy=central", "privacy.clip=adaptive", "privacy.clip_lr=0"], "privacy.clip_lr=0.0: must be positive"),
    (["privacy=central", "privacy.clip=adaptive"], "privacy.count_noise=null: must be more than noise_multiplier/2"),
    (["privacy=local"], "workflows.cross_site_validate.enabled=True: must be false with privacy=local"),
    (["privacy.target_epsilon=3"], "privacy.target_epsilon=3.0: needs a DP mode"),
    (["sampling=poisson"], "sampling=poisson: poisson needs clients_per_round"),
])
def test_bad_privacy_settings_are_one_line_before_ray_starts(overrides, line):
    with pytest.raises(ConfigError) as raised:
        compose(["num_clients=8"] + overrides)
    assert str(raised.value).startswith(line) and "\n" not in str(raised.value)


def test_target_epsilon_calibrates_the_noise_in_the_config():
    cfg = compose(["privacy=central", "privacy.noise_multiplier=null", "privacy.target_epsilon=5", "num_clients=100",
                   "clients_per_round=10", "rounds=10", "workflows.cross_site_validate.enabled=false"])
    z = cfg.privacy.noise_multiplier
    assert z == calibrate(5.0, 0.01, 10, RDP, 100, 10, FIXED)
    assert Ledger(RDP, 0.01).epsilon_after(round_event(100, 10, FIXED, z), 10) <= 5.0
    local = compose(["privacy=local", "workflows.cross_site_validate.enabled=false", "privacy.epsilon=2"])
    assert Ledger(RDP, 1 / 8).epsilon_after(RoundEvent(ALL, 1, 1, local.privacy.noise_multiplier)) <= 2.0


def median(updates):  # an aggregator that is not FedAvg-shaped, for the refusal above
    raise AssertionError("never called")
