"""secure_aggregation=he, FLARE's homomorphic encryption over TenSEAL's CKKS (fedray/secure/he.py): the controller
holds only ciphertexts and a context without the secret key; the decrypted average is FedAvg's within the fixed-point
bound; the same seed gives the same bits whatever the encryption noise and the batching; FLARE's sag_pt_he job folder
runs; bad input is one line before Ray."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from omegaconf import OmegaConf

from fedray import ConfigError, run_job
from fedray.aggregation import fedavg
from fedray.data.partition import Shard
from fedray.driver.job import _HEKeys
from fedray.fl_model import NUM_STEPS_CURRENT_ROUND
from fedray.flare.job_folder import translate
from fedray.secure import he
from tests.conftest import start_site_worker

pytest.importorskip("tenseal", reason="TenSEAL is an extra: pip install -e '.[he]'")

JOBS = Path(__file__).resolve().parent / "flare_jobs"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hello-pt"
HE = ("secure_aggregation=he", "workflows.cross_site_validate.enabled=false", "num_clients=3", "rounds=2", "seed=3")
BITS = 24


@pytest.fixture(scope="module")
def contexts():
    return he.make_contexts(8192, [60, 40, 40], 40)


def _updates(count=5, seed=0):
    """Sites' float32 updates of a small model's shapes, and their steps, as FedAvg weighs them."""
    rng = np.random.default_rng(seed)
    shapes = {"conv.weight": (6, 3, 5, 5), "conv.bias": (6,), "fc.weight": (10, 900), "bn.num_batches_tracked": ()}
    updates = []
    for k in range(count):
        params = {name: (rng.standard_normal(shape) * 0.3).astype(np.float32) for name, shape in shapes.items()}
        params["bn.num_batches_tracked"] = np.array(7 + k, dtype=np.int64)
        updates.append((params, float(rng.integers(1, 40))))
    return updates


def _encrypted_average(updates, site_context, server_context, order=None, batches=None):
    """Each site encrypts; batches add their members' ciphertexts (as a pool worker does), the controller adds
    what arrives in `order`; a site decrypts."""
    ciphertexts = [he.encrypt(params, weight, site_context, BITS, len(updates)) for params, weight in updates]
    parts = []
    for members in batches or [[k] for k in range(len(updates))]:
        partial = he.CipherSum(server_context)
        for k in members:
            partial.add(ciphertexts[k])
        parts.append(partial.result())
    total = he.CipherSum(server_context)
    for k in order or range(len(parts)):
        total.add(parts[k])
    return he.decrypt(total.result(), site_context), ciphertexts


def test_the_controllers_context_has_no_secret_key_and_cannot_decrypt(contexts):
    site_context, server_context = contexts
    assert he.has_secret_key(site_context) and not he.has_secret_key(server_context)
    total = he.CipherSum(server_context)
    total.add(he.encrypt(_updates(1)[0][0], 2.0, site_context, BITS, 1))
    with pytest.raises(ValueError, match="secret"):
        he.decrypt(total.result(), server_context)


def test_the_decrypted_average_is_fedavgs_within_the_fixed_point_bound(contexts):
    updates = _updates()
    decrypted, ciphertexts = _encrypted_average(updates, *contexts)
    plain = fedavg(updates)
    total_weight = sum(weight for _, weight in updates)
    # Each site's grid error is at most 2^-(BITS+1); then one float32 rounding of the average (half an ulp).
    bound = len(updates) * 2.0 ** -(BITS + 1) / total_weight
    for name, value in plain.items():
        assert decrypted[name].dtype == value.dtype and decrypted[name].shape == value.shape
        if value.dtype == np.int64:
            assert decrypted[name] == value  # an integer buffer averages to the same integer
            continue
        assert np.all(np.abs(decrypted[name].astype(np.float64) - value) <= bound + np.spacing(np.abs(value)))
    # 62006 values of the tutorial CNN take 16 ciphertexts of 4096 slots, ~3.76 MB: 15x the float32 bytes.
    assert len(ciphertexts[0].chunks) == 3 and 0.5e6 < ciphertexts[0].nbytes < 1e6


def test_the_same_updates_give_the_same_bits_whatever_the_noise_order_batching_and_keys(contexts):
    updates = _updates(seed=1)
    first, ciphertexts = _encrypted_average(updates, *contexts)
    again, ciphertexts_again = _encrypted_average(updates, *contexts, order=[4, 2, 0, 1, 3])
    new_keys = he.make_contexts(8192, [60, 40, 40], 40)  # another job's keys
    batched, _ = _encrypted_average(updates, *new_keys, batches=[[0, 3], [1, 2, 4]], order=[1, 0])
    # CKKS's encryption noise is fresh every time (TenSEAL cannot seed it): different ciphertexts ...
    assert ciphertexts[0].chunks[0] != ciphertexts_again[0].chunks[0]
    # ... that decrypt to the same integers, hence the same bits.
    for name in first:
        assert np.array_equal(first[name], again[name]) and np.array_equal(first[name], batched[name])


def test_an_update_too_large_for_the_grid_is_one_line(contexts):
    params = {"w": np.full(10, 3000.0, dtype=np.float32)}
    with pytest.raises(he.HEError, match="lower secure_aggregation.fraction_bits"):
        he.encrypt(params, 100.0, contexts[0], BITS, 50)


@pytest.mark.parametrize("overrides, line", [
    (["algorithm=fedopt"], "algorithm=.*must be fedavg or fedprox with secure_aggregation=he"),
    (["algorithm=scaffold"], "algorithm=.*must be fedavg or fedprox"),
    (["privacy=central", "privacy.noise_multiplier=1.0", "privacy.clip=1.0"], "privacy.mode=central: must be none or dp_sgd"),
    (["workflows.scatter_and_gather.mode=fedbuff"], "workflows.scatter_and_gather.mode=fedbuff: must be sync"),
    (["aggregator._target_=tests.test_he.median"], "aggregator._target_=.*must be fedray.aggregation.fedavg"),
    (["workflows.cross_site_validate.enabled=true"], "workflows.cross_site_validate.enabled=True: must be false"),
    (["secure_aggregation.poly_modulus_degree=4096"], "TenSEAL refuses them with poly_modulus_degree=4096"),
    (["secure_aggregation.poly_modulus_degree=5000"], "must be 4096, 8192, 16384 or 32768"),
    (["secure_aggregation.coeff_mod_bit_sizes=[60,40]"], "scale_bits=40: the data primes"),
    (["secure_aggregation.fraction_bits=40"], "fraction_bits=40: must be in \\[1, 30\\]"),
])
def test_bad_input_is_one_line_before_ray(job_config, overrides, line):
    with pytest.raises(ConfigError, match=line) as caught:
        job_config(*HE, *overrides)
    assert "\n" not in str(caught.value)


def test_without_tenseal_the_line_says_how_to_install_it(job_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "tenseal", None)  # as if the extra were not installed: import fails
    with pytest.raises(ConfigError, match=r"secure_aggregation.mode=he: .*pip install 'fedray\[he\]'"):
        job_config(*HE)


def median(updates):  # an aggregator that needs each plain update (refused under HE)
    return updates


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_the_controller_receives_only_ciphertexts(job_config, contexts):
    """The real round loop (scatter_and_gather, as the controller runs it) over a real site worker: every site
    result it receives has no params and an encrypted update, a batch's sum is ciphertext, the global model it
    keeps and sends is ciphertext; with the sites in one batch (their ciphertexts added by the worker) and fresh
    encryption noise, the decrypted model has the same bits."""
    from fedray.server.tasks import WorkerPool
    from fedray.server.workflows import scatter_and_gather

    site_context, server_context = contexts
    namespace = "he-test"
    job = {**OmegaConf.to_container(job_config(*HE), resolve=True), "job_id": "fedray-he-test"}
    images = np.random.default_rng(1).integers(0, 255, (40, 3, 32, 32), dtype=np.uint8)
    labels = np.arange(40) % 10
    shards = {f"site-{k + 1}": Shard(np.arange(12 * k, 12 * k + 10), np.arange(12 * k + 10, 12 * k + 12)) for k in range(3)}
    data = [ray.put(value) for value in (shards, images, labels, images[:10], labels[:10])]
    keys = _HEKeys.options(name=he.KEY_HOLDER, namespace=namespace).remote(site_context)  # the driver's key holder
    worker, holder = start_site_worker(job, data, namespace, num_cpus=0)
    try:
        torch.manual_seed(0)
        from fedray.models import Net
        from fedray.site.training import get_params

        start = get_params(Net())
        pool = WorkerPool([worker])
        received = []
        ends = []
        common = dict(aggregate=fedavg, num_rounds=2, seed=3, he_context=server_context,
                      on_site_done=lambda r, outcome: received.append((outcome, _ciphertext_in(outcome))),
                      on_round_end=lambda *args, **kwargs: ends.append((ray.get(args[1]), kwargs)))
        final = scatter_and_gather(list(shards), pool, start, **common)
        batched = scatter_and_gather(list(shards), pool, start, sites_per_task=3, **common)
        assert len(received) == 12
        for outcome, _ in received:  # each site's result as the controller got it: no params, its steps in the clear
            assert outcome.ok and outcome.value.params is None
            assert set(outcome.value.meta) <= {NUM_STEPS_CURRENT_ROUND, he.UPDATE}
            assert outcome.value.metrics["he_bytes_sent"] > 3e6  # 62006 values in 16 ciphertexts
        # A site alone sends its ciphertext; a batch's members are in the batch's sum of ciphertexts.
        assert [encrypted for _, encrypted in received] == [True] * 6 + [False] * 6
        assert all(isinstance(params, he.Encrypted) for params, _ in ends)
        assert isinstance(final, he.Encrypted) and isinstance(batched, he.Encrypted)
        assert [kwargs["secure_aggregation"]["bytes_received"] > 0 for _, kwargs in ends] == [True] * 4
        # One ciphertext a site, or one a batch: 3 sites in 3 tasks, then in 1.
        sent = [kwargs["secure_aggregation"]["bytes_received"] / ends[0][0].nbytes for _, kwargs in ends]
        assert [round(x) for x in sent] == [3, 3, 1, 1]
        one, other = he.decrypt(final, site_context), he.decrypt(batched, site_context)
        assert all(np.array_equal(one[name], other[name]) for name in one)  # batching changes no bit
        assert not np.array_equal(one["fc3.bias"], start["fc3.bias"])
    finally:
        for actor in (worker, holder, keys):
            ray.kill(actor)


def _ciphertext_in(outcome) -> bool:
    """What a site's result carries as the controller receives it (the fold takes the ciphertext out after)."""
    return isinstance(outcome.value.meta.get(he.UPDATE), he.Encrypted)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_flares_sag_pt_he_job_folder_runs_encrypted_and_records_its_costs(job_config, tmp_path):
    """FLARE's sag_pt_he template (HEModelDecryptor, HEModelEncryptor, HEInTimeAccumulateWeightedAggregator,
    HEModelShareableGenerator, HEModelSerializeFilter) with the tutorial script in FLARE's form."""
    job = tmp_path / "sag_pt_he"
    shutil.copytree(JOBS / "sag_pt_he", job)
    (job / "app" / "custom").mkdir()
    script = (EXAMPLE / "train.py").read_text().replace("import fedray.client as flare", "import nvflare.client as flare")
    (job / "app" / "custom" / "train.py").write_text(script.replace("from fedray.client.tracking", "from nvflare.client.tracking"))
    shutil.copy(EXAMPLE / "net.py", job / "app" / "custom" / "net.py")
    lines = []
    overrides = translate(str(job), report=lines.append)
    assert "secure_aggregation='he'" in overrides and "workflows.cross_site_validate.enabled=false" in overrides
    assert not any("HE" in line for line in lines)  # every HE component is mapped, none just warned about
    run_dir = tmp_path / "run"
    summary = run_job(job_config(*overrides), run_dir)
    assert summary["status"] == "completed" and [r["round"] for r in summary["rounds"]] == [0, 1]
    logged = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    for entry in logged:
        assert sorted(entry["sites"]) == ["site-1", "site-2"]
        secure = entry["secure_aggregation"]
        assert secure["mode"] == "he" and secure["aggregate_seconds"] > 0
        sent = [site["he_bytes_sent"] for site in entry["sites"].values()]
        assert secure["bytes_received"] == sum(sent) and min(sent) > 3e6  # one set of ciphertexts per site
        assert all(site["he_encrypt_seconds"] > 0 for site in entry["sites"].values())
    # Round 0 starts from the plain initial model (FLARE's too); round 1 from the encrypted aggregate, which the
    # script gets decrypted.
    assert {site["he_bytes_received"] for site in logged[0]["sites"].values()} == {0}
    assert {site["he_bytes_received"] for site in logged[1]["sites"].values()} == {logged[0]["secure_aggregation"]["global_bytes"]}
    assert all(site["he_decrypt_seconds"] > 0 for site in logged[1]["sites"].values())
    model = torch.load(run_dir / "models" / "FL_global_model.pt")["model"]  # the driver decrypted it
    assert model["fc3.bias"].dtype == torch.float32 and torch.isfinite(model["fc3.bias"]).all()
    assert summary["rounds"][-1]["global"]["test_accuracy"] > 0  # scored at the sites, which decrypt it


def test_a_flare_job_with_half_of_he_is_refused_in_one_line(tmp_path):
    job = tmp_path / "sag_pt_he"
    shutil.copytree(JOBS / "sag_pt_he", job)
    client = job / "app" / "config" / "config_fed_client.conf"
    config = json.loads(client.read_text())
    config["task_data_filters"] = []  # no HEModelDecryptor: the sites could not read the aggregate
    client.write_text(json.dumps(config))
    (job / "app" / "custom").mkdir()
    (job / "app" / "custom" / "train.py").write_text("")
    with pytest.raises(ConfigError, match="without HEModelDecryptor") as caught:
        translate(str(job), report=lambda line: None)
    assert "\n" not in str(caught.value)
