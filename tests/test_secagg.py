"""SecAgg+ (secure_aggregation=secagg_plus): the protocol's pure steps run site by site as the controller routes
them (exact modular sums, dropouts at and below the threshold, what the controller holds, the quantization bound),
the config's one-line refusals, and whole jobs on real Ray (the same bits whatever the batching and the actors)."""

import json
import sys

import numpy as np
import pytest
import torch
from cryptography.exceptions import InvalidTag

from fedray import run_job
from fedray.config import ConfigError, compose
from fedray.secure import keys, shamir
from fedray.secure import site as secure_site
from fedray.secure.quantize import dequantize_sum, quantize, step
from fedray.secure.server import SecureRound, Unrecoverable

GROUP = {"num_shares": 5, "threshold": 3, "clipping_range": 0.5, "quantization_bits": 12, "modulus_bits": 24,
         "dropout": 0.0, "dropout_at": "before_masking"}
SETTINGS = secure_site.Settings(7, 0.5, 12, 24, 0.0, "before_masking")
COHORT = list(range(1, 10))  # nine sites, each with 5 neighbours (itself included), threshold 3
SIZE = 1000


def _updates(cohort=COHORT):
    rng = np.random.default_rng(3)
    return {site: rng.normal(0, 0.1, SIZE) for site in cohort}  # within the clipping range


def _quantized(site, update, current_round=2):
    rng = np.random.default_rng([SETTINGS.seed, current_round, site, secure_site.ROUNDING])
    return quantize(update, SETTINGS.clipping_range, SETTINGS.quantization_bits, rng, np.uint32)


def _protocol(updates, before=(), after=(), group=GROUP, received=None):
    """One round as the controller runs it: stages 0-1, masked vectors (none from `before`), unmasking (no answer
    from `after`); the exact sum. `received`: filled with what reached the controller's sum, site by site."""
    secure_round = SecureRound(group, SETTINGS.seed, 2, sorted(updates))
    for site in updates:
        secure_round.advertised(site, secure_site.advertise(SETTINGS.seed, 2, site))
    for site in updates:
        request = secure_round.key_request(site)
        secure_round.shares_sent(site, secure_site.share_keys(SETTINGS.seed, 2, site, request, secure_round.threshold))
    mask_keys = secure_round.mask_keys()
    for site, update in updates.items():
        if site not in before:
            vector = secure_site.masked_input(SETTINGS, 2, site, update, mask_keys[site])
            if received is not None:
                received[site] = vector
            secure_round.add([site], vector)
    answers = {site: secure_site.unmask_answer(SETTINGS.seed, 2, site, **secure_round.unmask_request(site))
               for site in sorted(secure_round.survivors) if site not in after}
    return secure_round.unmask(answers), secure_round


def test_shamir_any_threshold_shares_give_the_secret_and_fewer_do_not():
    secret = keys.seeded_bytes(32, 1)
    shares = shamir.split(secret, 3, [2, 5, 7, 11, 13], keys.seeded_bytes(132, 2))
    assert shamir.combine([(x, shares[x]) for x in (13, 2, 7)], 3) == secret
    assert shamir.combine([(x, shares[x]) for x in (5, 11, 2)], 3) == secret
    with pytest.raises(ValueError, match="2 shares, 3 needed"):
        shamir.combine([(x, shares[x]) for x in (5, 11)], 3)
    # Two shares and a forged third: not the secret (two alone fix no point of a degree-2 polynomial).
    forged = (17, shamir.split(keys.seeded_bytes(32, 9), 3, [17], keys.seeded_bytes(132, 3))[17])
    with pytest.raises(ValueError):
        assert shamir.combine([(5, shares[5]), (11, shares[11]), forged], 3) != secret


def test_agreed_keys_match_and_a_share_opens_for_its_receiver_only():
    a, b, c = (keys.private_key(0, 1, site, 1) for site in (1, 2, 3))
    assert keys.agree(a, keys.public_key(b)) == keys.agree(b, keys.public_key(a)) != keys.agree(a, keys.public_key(c))
    sealed = keys.encrypt(keys.agree(a, keys.public_key(b)), b"share", 1, 2, keys.seeded_bytes(12, 5))
    assert keys.decrypt(keys.agree(b, keys.public_key(a)), sealed, 1, 2) == b"share"
    with pytest.raises(InvalidTag):
        keys.decrypt(keys.agree(c, keys.public_key(a)), sealed, 1, 2)
    with pytest.raises(InvalidTag):  # the pair is authenticated: re-routed to another site, it does not open
        keys.decrypt(keys.agree(b, keys.public_key(a)), sealed, 1, 3)


@pytest.mark.parametrize("before, after", [((), ()), ((4,), ()), ((), (4, 8)), ((2, 6), (9,))])
def test_unmasked_sum_is_the_exact_modular_sum_of_the_survivors_quantized_updates(before, after):
    updates = _updates()
    total, secure_round = _protocol(updates, before, after)
    expected = sum(_quantized(site, u).astype(np.uint64) for site, u in updates.items() if site not in before)
    assert np.array_equal(total, (expected % 2**24).astype(np.uint32))
    assert secure_round.survivors == set(COHORT) - set(before)


def test_dropouts_are_recovered_at_the_threshold_and_fail_one_below():
    updates = _updates()
    graph = SecureRound(GROUP, SETTINGS.seed, 2, COHORT).graph
    site = 5
    others = [peer for peer in graph[site] if peer != site]  # 4 neighbours; threshold 3
    # Before masking: site 5 sent no vector; its s key needs 3 shares among its surviving neighbours.
    total, _ = _protocol(updates, before=(site,), after=others[:1])  # 3 of its 4 neighbours answer: recovered
    expected = sum(_quantized(s, u).astype(np.uint64) for s, u in updates.items() if s != site)
    assert np.array_equal(total, (expected % 2**24).astype(np.uint32))
    with pytest.raises(Unrecoverable, match="needs threshold=3 shares, only 2 of its neighbours answered"):
        _protocol(updates, before=(site,), after=others[:2])
    # After masking: site 5's vector is in the sum; its self mask needs 3 shares (its own answer is gone too).
    total, _ = _protocol(updates, after=(site, *others[:1]))
    expected = sum(_quantized(s, u).astype(np.uint64) for s, u in updates.items())
    assert np.array_equal(total, (expected % 2**24).astype(np.uint32))
    with pytest.raises(Unrecoverable, match="self mask needs threshold=3 shares, only 2 of its neighbours answered"):
        _protocol(updates, after=(site, *others[:2]))


def test_the_controller_holds_masked_vectors_only():
    updates, received = _updates(), {}
    total, _ = _protocol(updates, received=received)
    for site, vector in received.items():
        plain = _quantized(site, updates[site])
        assert np.mean(vector == plain) < 0.01  # what arrives is not the quantized update
        # ... but uniform modulo 2^24: each sixteenth of the range holds about a sixteenth of the entries
        counts = np.bincount((vector >> 20).astype(np.int64), minlength=16)
        assert counts.min() > SIZE / 16 * 0.5 and counts.max() < SIZE / 16 * 1.6
        assert 0.3 < vector.mean() / 2**24 < 0.7
    # the plain quantized updates sit in a narrow band; the masked sum is uniform until unmasked
    assert np.ptp(total.astype(np.int64)) < 2**20


def test_the_dequantized_mean_is_within_one_step_of_the_plain_mean():
    updates = _updates()
    total, _ = _protocol(updates, before=(3,))
    survivors = [u for site, u in updates.items() if site != 3]
    mean = dequantize_sum(total, len(survivors), 0.5, 12) / len(survivors)
    error = np.abs(mean - np.mean(survivors, axis=0))
    assert error.max() <= step(0.5, 12) and error.max() > 0  # within the bound, and not trivially exact


def test_batched_sites_masked_sum_equals_the_sites_one_by_one():
    """A batch adds its sites' masked vectors (the worker does); the controller's unmasking is the same."""
    updates = _updates()
    one_by_one, _ = _protocol(updates)
    secure_round = SecureRound(GROUP, SETTINGS.seed, 2, COHORT)
    for site in COHORT:
        secure_round.advertised(site, secure_site.advertise(SETTINGS.seed, 2, site))
    for site in COHORT:
        secure_round.shares_sent(site, secure_site.share_keys(SETTINGS.seed, 2, site, secure_round.key_request(site), 3))
    mask_keys = secure_round.mask_keys()
    for batch in ([1, 2, 3, 4], [5, 6, 7, 8, 9]):
        vectors = [secure_site.masked_input(SETTINGS, 2, site, updates[site], mask_keys[site]) for site in batch]
        secure_round.add(batch, sum(vectors[1:], vectors[0].copy()))  # unsigned wrap-around, as the worker sums
    answers = {site: secure_site.unmask_answer(SETTINGS.seed, 2, site, **secure_round.unmask_request(site))
               for site in COHORT}
    assert np.array_equal(secure_round.unmask(answers), one_by_one)


def test_a_site_refuses_to_give_both_shares_of_one_site():
    secure_round = SecureRound(GROUP, SETTINGS.seed, 2, COHORT)
    with pytest.raises(ValueError, match="both shares"):
        secure_site.unmask_answer(SETTINGS.seed, 2, 1, {}, {}, [2], [2], secure_round.threshold)


SECAGG = ("secure_aggregation=secagg_plus", "workflows.cross_site_validate.enabled=false", "num_clients=20",
          "clients_per_round=10")


@pytest.mark.parametrize("overrides, line", [
    (("secure_aggregation.threshold=12",), "secure_aggregation.threshold=12: is above the 9 shares"),
    (("secure_aggregation.quantization_bits=29",), "secure_aggregation.modulus_bits=32: too few bits for the cohort: "
                                                   "10 sites x (2^29 - 1) overflows the modular sum; raise modulus_bits to 33"),
    (("sampling=poisson", "secure_aggregation.quantization_bits=28"), "too few bits for the cohort: 20 sites"),
    (("algorithm=scaffold",), "scaffold's control variates would reach the controller unmasked"),
    (("workflows.scatter_and_gather.mode=fedbuff",), "must be sync with secure_aggregation=secagg_plus"),
    (("workflows.cross_site_validate.enabled=true",), "cross-site evaluation sends each site's own model"),
    (("secure_aggregation.dropout_at=during",), "secure_aggregation.dropout_at=during: must be one of"),
    (("clients_per_round=1",), "clients_per_round=1: must be at least 2"),
])
def test_bad_secagg_configs_are_one_line_before_ray(overrides, line):
    with pytest.raises(ConfigError) as err:
        compose([*SECAGG, *overrides])
    assert line in str(err.value) and "\n" not in str(err.value)


def test_a_missing_extra_names_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "cryptography", None)  # as if not installed: its import raises ImportError
    with pytest.raises(ConfigError, match=r"needs cryptography, which is not installed; pip install 'fedray\[secagg\]'"):
        compose(list(SECAGG))


# Whole jobs on real Ray and the tiny CIFAR-10: 3 sites, all in each other's neighbourhood, threshold 2. With seed 0
# and dropout 0.4, site-3's draw drops it (checked below), before masking or after.
JOB = ("rounds=1", "seed=0", "workflows.cross_site_validate.enabled=false", "secure_aggregation=secagg_plus")
DROPOUT = ("secure_aggregation.dropout=0.4",)
# Central DP's path (clip at the site, the noisy mean at the server) without clipping or noise: FedAvg's
# uniform mean, so the secure mean must still be within one quantization step of plain FedAvg's.
CENTRAL = ("privacy=central", "privacy.clip=inf", "privacy.noise_multiplier=0")


def _global(run_dir):
    return torch.load(run_dir / "models" / "FL_global_model.pt")["model"]


def test_site_3_is_the_one_that_drops_with_seed_0():
    settings = secure_site.Settings(0, 1.0, 16, 32, 0.4, "before_masking")
    assert [site for site in (1, 2, 3) if secure_site.drops(settings, 0, site, "before_masking")] == [3]


@pytest.fixture(scope="module")
def reference(job_config, tmp_path_factory):
    """site-3 drops after masking (its vector counts, it answers no unmasking); one site per task on 2 actors;
    through central DP's server side (noise_multiplier=0)."""
    run_dir = tmp_path_factory.mktemp("secagg")
    return run_dir, run_job(job_config(*JOB, *DROPOUT, *CENTRAL, "secure_aggregation.dropout_at=after_masking",
                                       "site.sites_per_task=1"), run_dir)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_a_secagg_job_recovers_a_site_dropped_after_masking_and_records_its_costs(reference):
    run_dir, summary = reference
    assert summary["status"] == "completed", summary["error"]
    (entry,) = summary["rounds"]
    record = entry["secure_aggregation"]
    assert sorted(entry["sites"]) == ["site-1", "site-2", "site-3"] and not entry["failures"]
    assert record["survivors"] == 3 and record["dropped_after_masking"] == ["site-3"] and record["threshold"] == 2
    # each site sent its masked vector (62,006 uint32 entries), its public keys, shares and unmasking answers
    assert 62006 * 4 < record["bytes_sent_per_site"]["mean"] < 62006 * 4 + 2000
    assert record["bytes_received_per_site"]["mean"] > 0
    assert all(record["seconds"][part] > 0 for part in ("key_agreement", "masking_per_site", "unmasking"))
    logged = json.loads((run_dir / "rounds.jsonl").read_text().splitlines()[0])
    assert logged["secure_aggregation"] == record and "privacy" in logged


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_batched_sites_on_one_actor_give_the_same_bits(reference, job_config, tmp_path):
    """sites_per_task auto on 1 actor (one batch of 3, whose masked vectors the worker sums) vs 1 a task on 2."""
    run_dir, _ = reference
    summary = run_job(job_config(*JOB, *DROPOUT, *CENTRAL, "secure_aggregation.dropout_at=after_masking",
                                 "site.num_actors=1"), tmp_path)
    assert summary["rounds"][0]["secure_aggregation"]["dropped_after_masking"] == ["site-3"]
    secured, batched = _global(run_dir), _global(tmp_path)
    assert secured.keys() == batched.keys() and all(torch.equal(secured[k], batched[k]) for k in secured)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_the_secure_mean_is_within_one_step_of_plain_fedavg(reference, job_config, tmp_path):
    run_dir, _ = reference
    plain = run_job(job_config(*JOB[:3]), tmp_path)
    assert len({site["num_steps"] for site in plain["rounds"][0]["sites"].values()}) == 1  # FedAvg's weights equal
    secured, reference_model = _global(run_dir), _global(tmp_path)
    errors = [float((secured[k].double() - reference_model[k].double()).abs().max()) for k in reference_model]
    assert 0 < max(errors) <= step(1.0, 16) + 1e-6  # float32 rounding on top of the bound


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_a_site_dropped_before_masking_is_recovered_in_a_batched_job(job_config, tmp_path):
    # min_clients=2: the round goes on without site-3; one batch of 3 on 1 actor, so that its answer (no vector)
    # comes with the others' and is never "abandoned" by a round that closed first
    summary = run_job(job_config(*JOB, *DROPOUT, "min_clients=2", "site.num_actors=1"), tmp_path)
    assert summary["status"] == "completed", summary["error"]
    (entry,) = summary["rounds"]
    assert sorted(entry["sites"]) == ["site-1", "site-2"] and entry["failures"]["site-3"]["kind"] == "dropped"
    assert entry["secure_aggregation"]["survivors"] == 2 and entry["secure_aggregation"]["dropped"] == ["site-3"]
