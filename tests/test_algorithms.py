"""Algorithms' server and client parts against references of their papers: no Ray, no jobs."""

import itertools
import math
import pickle

import numpy as np
import pytest
import torch

from fedray.aggregation import CompensatedSum
from fedray.algorithms import COUNT, build
from fedray.algorithms.scaffold import CTRL_DIFF, CTRL_GLOBAL, Scaffold
from fedray.client import PTFedProxLoss
from fedray.models import ModerateCNN, Net
from fedray.site.training import local_optimizer, train_epochs

RNG = np.random.default_rng(0)


def _params(shapes=((3, 4), (5,))):
    return {f"w{k}": RNG.normal(size=shape).astype(np.float32) for k, shape in enumerate(shapes)}


def _fedopt(optimizer: dict, scheduler: dict | None = None):
    return build({"_target_": "fedray.algorithms.fedopt.FedOpt", "server_optimizer": optimizer,
                  "server_lr_scheduler": scheduler})


def _two_rounds(algorithm, x, averages):
    """Two server updates, the state pickled between them as the checkpoint and the object store do."""
    state = algorithm.init(x, num_sites=3)
    out = []
    for current_round, averaged in enumerate(averages):
        x, state = algorithm.apply(x, averaged, {COUNT: 3}, state, current_round)
        state = pickle.loads(pickle.dumps(state))
        out.append(x)
    return out, state


def _reddi(rule: str, x, averages, lr, beta1, beta2, tau):
    """Reddi et al., Algorithm 2, in float64 numpy, with delta = averaged - x."""
    x = {k: v.astype(np.float64) for k, v in x.items()}
    m = {k: np.zeros_like(v) for k, v in x.items()}
    v = {k: np.full_like(value, tau**2) for k, value in x.items()}
    out = []
    for averaged in averages:
        for k in x:
            delta = averaged[k].astype(np.float64) - x[k]
            m[k] = beta1 * m[k] + (1 - beta1) * delta
            if rule == "FedAdagrad":
                v[k] = v[k] + delta**2
            elif rule == "FedYogi":
                v[k] = v[k] - (1 - beta2) * delta**2 * np.sign(v[k] - delta**2)
            else:
                v[k] = beta2 * v[k] + (1 - beta2) * delta**2
            x[k] = x[k] + lr * m[k] / (np.sqrt(v[k]) + tau)
        out.append(dict(x))
    return out


@pytest.mark.parametrize("rule", ["FedAdam", "FedYogi", "FedAdagrad"])
def test_adaptive_server_optimizers_follow_the_paper_over_two_rounds(rule):
    x = _params()
    averages = [{k: v + RNG.normal(scale=0.1, size=v.shape).astype(np.float32) for k, v in x.items()} for _ in range(2)]
    hyper = {"lr": 0.03, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}
    ours, _ = _two_rounds(_fedopt({"_target_": f"fedray.algorithms.server_optimizers.{rule}", **hyper}), x, averages)
    # The second round starts from our first result, as the reference does from its own.
    reference = _reddi(rule, x, averages, **hyper)
    for got, want in zip(ours, reference):
        for k in x:
            np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=2e-6)
    assert not np.allclose(ours[1]["w0"], averages[1]["w0"])  # not FedAvg


def test_fedavgm_with_a_cosine_server_lr_follows_sgd_momentum():
    """FLARE's default FedOpt: SGD lr 1.0 momentum 0.6, cosine lr from 1.0 to 0.9 over T_max rounds."""
    x = _params()
    averages = [{k: v + RNG.normal(scale=0.1, size=v.shape).astype(np.float32) for k, v in x.items()} for _ in range(3)]
    algorithm = _fedopt({"_target_": "torch.optim.SGD", "lr": 1.0, "momentum": 0.6},
                        {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "T_max": 3, "eta_min": 0.9})
    state = algorithm.init(x, 3)
    want = {k: v.astype(np.float64) for k, v in x.items()}
    buffer = {k: None for k in x}
    for t, averaged in enumerate(averages):
        got, state = algorithm.apply(x, averaged, {COUNT: 3}, state, t)
        lr = 0.9 + (1.0 - 0.9) * (1 + math.cos(math.pi * t / 3)) / 2
        assert state["server_lr"] == pytest.approx(lr)
        for k in x:
            grad = want[k] - averaged[k]
            buffer[k] = grad if buffer[k] is None else 0.6 * buffer[k] + grad
            want[k] = want[k] - lr * buffer[k]
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
        x = got


def test_fedopt_sgd_lr_one_is_fedavg_and_buffers_take_the_average():
    bn = {"_target_": "torch.nn.BatchNorm1d", "num_features": 4}
    algorithm = build({"_target_": "fedray.algorithms.fedopt.FedOpt", "model": bn,
                       "server_optimizer": {"_target_": "torch.optim.SGD", "lr": 1.0}, "server_lr_scheduler": None})
    x = {"weight": np.ones(4, np.float32), "bias": np.zeros(4, np.float32), "running_mean": np.zeros(4, np.float32),
         "running_var": np.ones(4, np.float32), "num_batches_tracked": np.array(3)}
    averaged = {k: (v + 0.25).astype(v.dtype) if v.dtype != np.int64 else np.array(5) for k, v in x.items()}
    state = algorithm.init(x, 2)
    assert state["parameters"] == ["weight", "bias"]
    got, _ = algorithm.apply(x, averaged, {COUNT: 2}, state, 0)
    for k in x:
        np.testing.assert_allclose(got[k], averaged[k], rtol=0, atol=1e-7)
        assert got[k].dtype == x[k].dtype


def test_fedopt_apply_leaves_the_state_it_was_given_unchanged():
    x = _params()
    averaged = {k: v + 1 for k, v in x.items()}
    algorithm = _fedopt({"_target_": "torch.optim.SGD", "lr": 1.0, "momentum": 0.6})
    _, state = algorithm.apply(x, averaged, {COUNT: 1}, algorithm.init(x, 1), 0)
    before = pickle.dumps(state)
    algorithm.apply(x, averaged, {COUNT: 1}, state, 1)
    assert pickle.dumps(state) == before


def test_scaffold_server_adds_the_sites_variate_changes_over_all_sites():
    x = _params()
    algorithm = Scaffold()
    state = algorithm.init(x, num_sites=4)
    assert all(not v.any() for v in algorithm.message(state)[CTRL_GLOBAL].values())
    diffs = [_params() for _ in range(2)]
    total = CompensatedSum()
    for d in diffs:
        total.add(d)
    averaged = {k: v + 1 for k, v in x.items()}
    new_x, state = algorithm.apply(x, averaged, {CTRL_DIFF: total.result(), COUNT: 2}, state, 0)
    assert new_x is averaged  # the model moves as FedAvg's
    for k in x:  # c <- c + |S|/N * mean(dc) = c + sum(dc) / N
        np.testing.assert_allclose(state["c"][k], (diffs[0][k].astype(np.float64) + diffs[1][k]) / 4, rtol=1e-6)


def test_sums_of_variate_changes_do_not_depend_on_arrival_order():
    diffs = [{"w": RNG.normal(size=50).astype(np.float32) * 10.0 ** RNG.integers(-4, 4)} for _ in range(5)]
    results = set()
    for order in itertools.permutations(diffs):
        total = CompensatedSum()
        for d in order:
            total.add(d)
        results.add(total.result()["w"].tobytes())
    assert len(results) == 1


def _tiny_data(n=48):
    generator = torch.Generator().manual_seed(5)
    images = torch.randint(0, 255, (n, 3, 32, 32), generator=generator, dtype=torch.uint8)
    return images, torch.randint(0, 10, (n,), generator=generator), np.arange(n)


def _train(model, client, lr=0.05, momentum=0.9):
    images, labels, index = _tiny_data()
    return train_epochs(model, images, labels, index, epochs=2, batch_size=16, lr=lr, momentum=momentum,
                        generator=torch.Generator().manual_seed(1), client=client)


def _net(seed=0):
    torch.manual_seed(seed)
    return Net()


def test_scaffold_client_corrects_every_step_and_sets_option_two_variates():
    x = {k: v.numpy().copy() for k, v in _net().state_dict().items()}
    c = {k: RNG.normal(scale=0.01, size=v.shape).astype(np.float32) for k, v in x.items()}
    c_local = {k: RNG.normal(scale=0.01, size=v.shape).astype(np.float32) for k, v in x.items()}
    model = _net()
    client = Scaffold().client(model, x, {CTRL_GLOBAL: c}, c_local)
    _, steps = _train(model, client)
    (extra, new_local) = client.results(model)

    # The reference: plain SGD steps, each followed by w <- w - lr * (c - c_i).
    reference = _net()
    images, labels, index = _tiny_data()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(1)
    for _ in range(2):
        order = torch.from_numpy(index)[torch.randperm(len(index), generator=generator)]
        for start in range(0, len(order), 16):
            batch = order[start:start + 16]
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(reference(images[batch].float().div_(127.5).sub_(1.0)), labels[batch]).backward()
            optimizer.step()
            with torch.no_grad():
                for name, param in reference.named_parameters():
                    param.sub_(0.05 * (torch.from_numpy(c[name]) - torch.from_numpy(c_local[name])))
    assert steps == 6
    for name, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
        want = c_local[name] - c[name] + (x[name] - value.numpy().astype(np.float64)) / (steps * 0.05)
        np.testing.assert_allclose(new_local[name], want, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(extra[CTRL_DIFF][name], new_local[name] - c_local[name], rtol=1e-4, atol=1e-6)


def test_scaffold_with_zero_variates_and_fedprox_with_mu_zero_train_as_fedavg():
    plain = _net()
    _train(plain, None)
    x = {k: v.numpy().copy() for k, v in _net().state_dict().items()}
    zeros = {k: np.zeros_like(v) for k, v in x.items()}
    for algorithm, message in ((Scaffold(), {CTRL_GLOBAL: zeros}),
                               (build({"_target_": "fedray.algorithms.fedprox.FedProx", "mu": 0.0}), {})):
        model = _net()
        _train(model, algorithm.client(model, x, message, None))
        assert all(torch.equal(model.state_dict()[k], v) for k, v in plain.state_dict().items())


def test_fedprox_keeps_the_local_model_nearer_the_global_one():
    x = {k: v.numpy().copy() for k, v in _net().state_dict().items()}

    def distance(mu):
        model = _net()
        _train(model, build({"_target_": "fedray.algorithms.fedprox.FedProx", "mu": mu}).client(model, x, {}, None), lr=0.1)
        return sum(float(((p.detach().numpy() - x[n]) ** 2).sum()) for n, p in model.named_parameters())

    assert distance(1.0) < 0.9 * distance(0.0)


def test_flare_fedprox_loss_is_the_built_in_term():
    model, reference = _net(0), _net(1)
    term = PTFedProxLoss(mu=0.3)(model, reference)
    want = sum(0.15 * ((p - q) ** 2).sum() for p, q in zip(model.parameters(), reference.parameters()))
    assert torch.allclose(term, want)
    with pytest.raises(ValueError):
        PTFedProxLoss(mu=-1)


def test_a_local_cosine_schedule_runs_over_the_rounds_as_one_scheduler():
    job = {"optimizer": {"_target_": "torch.optim.SGD", "lr": 0.05, "momentum": 0.9}, "local_epochs": 2,
           "lr_scheduler": {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "T_max": 6, "eta_min": 0.0005}}
    model = Net()
    seen = []
    for current_round in range(3):
        optimizer, scheduler = local_optimizer(model, job, current_round)
        for _ in range(2):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    one = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=6, eta_min=0.0005)
    want = []
    for _ in range(6):
        want.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        one.step()
    assert seen == want and seen[0] == 0.05 and seen[-1] < 0.01


@pytest.mark.parametrize("name, kind", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_local_optimizers_by_target(name, kind):
    from omegaconf import OmegaConf

    from fedray import load_config

    job = OmegaConf.to_container(load_config([f"optimizer={name}", "optimizer.weight_decay=0.1"]), resolve=True)
    optimizer, scheduler = local_optimizer(Net(), job, 0)
    assert isinstance(optimizer, kind) and optimizer.param_groups[0]["weight_decay"] == 0.1 and scheduler is None


def test_moderate_cnn_has_flares_layers_and_size():
    model = ModerateCNN()
    assert sum(p.numel() for p in model.parameters()) == 3_491_530
    convs = [f"conv_layer.{i}" for i in (0, 2, 5, 7, 11, 13)]
    fcs = [f"fc_layer.{i}" for i in (1, 3, 6)]
    assert list(model.state_dict()) == [f"{layer}.{kind}" for layer in convs + fcs for kind in ("weight", "bias")]
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_a_torchvision_classifier_by_target():
    from hydra.utils import instantiate

    from fedray import load_config

    cfg = load_config(["model=resnet18"])
    model = instantiate(cfg.model)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("overrides, message", [
    (["algorithm=fedprox", "algorithm.mu=-1"], "algorithm.mu=-1: must be >= 0"),
    (["algorithm=fedopt", "algorithm.server_optimizer._target_=torch.optim.Nope"],
     "algorithm.server_optimizer._target_=torch.optim.Nope: cannot be imported"),
    (["algorithm=fedopt", "algorithm.server_optimizer.lr=0"], "algorithm.server_optimizer.lr=0: must be positive"),
    (["algorithm=fedsgd"], "algorithm=fedsgd: no such option in conf/algorithm/; choose one of fedavg, fedopt, fedprox, scaffold"),
    (["algorithm=scaffold", "workflows.scatter_and_gather.exclude_vars=fc3"], "must be null with algorithm=scaffold"),
    (["optimizer._target_=torch.optim.Sgd"], "optimizer._target_=torch.optim.Sgd: cannot be imported"),
])
def test_bad_algorithm_keys_fail_in_one_line_before_ray(overrides, message):
    from fedray import ConfigError, load_config

    with pytest.raises(ConfigError) as caught:
        load_config(overrides)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_cifar10_sim_experiment_sets_flares_settings():
    from fedray import load_config

    cfg = load_config(["+experiment=cifar10_sim", "algorithm=fedopt", "partition.alpha=0.1"])
    assert (cfg.num_clients, cfg.rounds, cfg.local_epochs, cfg.batch_size, cfg.lr) == (8, 50, 4, 64, 0.05)
    assert cfg.model._target_ == "fedray.models.ModerateCNN" and cfg.partition.name == "dirichlet"
    assert cfg.lr_scheduler.T_max == 200 and cfg.lr_scheduler.eta_min == pytest.approx(0.0005)
    assert cfg.algorithm.server_optimizer == {"_target_": "torch.optim.SGD", "lr": 1.0, "momentum": 0.6}
    assert cfg.algorithm.server_lr_scheduler.T_max == 50 and cfg.algorithm.model == cfg.model


def test_resume_reads_the_algorithm_states_of_the_last_whole_round(tmp_path):
    """A stop after a round's states and model but before its manifest: the round before is read, each
    file in the version that round wrote (kept beside it as *.prev.pt)."""
    import json

    from fedray.records import checkpoint
    from fedray.records.manifest import Manifest
    from fedray.records.recorder import model_bytes

    (tmp_path / "summary.json").write_text(json.dumps({"config": {"model": {"_target_": "fedray.models.Net"}},
                                                       "rounds": [], "best_round": None}))
    files, params = Manifest(tmp_path), {k: v.numpy() for k, v in _net().state_dict().items()}

    def write_round(current_round, state, site_states, commit=True):
        checkpoint.save_algorithm_states(files, current_round, state, site_states)
        files.save("models/FL_global_model.pt", model_bytes(params, round=current_round), current_round)
        if commit:
            checkpoint.save_state(files, {"round": current_round, "num_rounds": 3, "best_val_accuracy": 0.5}, None)

    write_round(0, {"c": 0}, {"site-1": {"w": 10}, "site-2": {"w": 20}})
    write_round(1, {"c": 1}, {"site-1": {"w": 11}}, commit=False)  # stopped before round 1's manifest
    saved = checkpoint.load(tmp_path)
    assert saved["next_round"] == 1 and saved["algorithm_state"] == {"c": 0}
    assert saved["site_states"] == {"site-1": {"w": 10}, "site-2": {"w": 20}}
    checkpoint.save_state(files, {"round": 1, "num_rounds": 3, "best_val_accuracy": 0.5}, None)
    saved = checkpoint.load(tmp_path)
    assert saved["next_round"] == 2 and saved["algorithm_state"] == {"c": 1}
    assert saved["site_states"] == {"site-1": {"w": 11}, "site-2": {"w": 20}}


def test_a_folder_from_before_the_manifest_reads_the_states_of_its_model_files_round(tmp_path):
    """Older fedray wrote each state file (pickled, keeping its previous version) before the model, with
    no manifest: the model file's round is the truth, and the states of that round are read."""
    import json
    import os

    import torch

    from fedray.records import checkpoint

    (tmp_path / "summary.json").write_text(json.dumps({"config": {"model": {"_target_": "fedray.models.Net"}},
                                                       "rounds": [], "best_round": None}))
    (tmp_path / "checkpoint" / "site_states").mkdir(parents=True)
    (tmp_path / "models").mkdir()

    def old_save(name, current_round, state):  # the old checkpoint.py's _save_versioned
        path = tmp_path / "checkpoint" / name
        if path.is_file():
            os.replace(path, path.with_name(path.name.replace(".pt", ".prev.pt")))
        torch.save({"round": current_round, "state": state}, path)

    old_save("algorithm_state.pt", 0, {"c": np.float32(0.5) * np.ones(3, np.float32)})
    old_save("site_states/site-1.pt", 0, {"w": np.arange(3, dtype=np.float32)})
    torch.save({"model": _net().state_dict(), "round": 0}, tmp_path / "models" / "FL_global_model.pt")
    old_save("algorithm_state.pt", 1, {"c": np.ones(3, np.float32)})  # round 1's model never written
    saved = checkpoint.load(tmp_path)
    assert saved["next_round"] == 1
    assert saved["algorithm_state"]["c"].tobytes() == (np.float32(0.5) * np.ones(3, np.float32)).tobytes()
    assert saved["site_states"]["site-1"]["w"].tobytes() == np.arange(3, dtype=np.float32).tobytes()
    files = checkpoint.restore(saved)  # the folder now has a manifest and states weights_only reads
    assert files.round == 0 and set(files.files) == {"models/FL_global_model.pt", "checkpoint/algorithm_state.pt",
                                                      "checkpoint/site_states/site-1.pt"}
    again = checkpoint.load(tmp_path)
    assert again["algorithm_state"]["c"].tobytes() == saved["algorithm_state"]["c"].tobytes()
    assert torch.load(tmp_path / "checkpoint" / "algorithm_state.pt", weights_only=True)["round"] == 0
